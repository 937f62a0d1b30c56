"""Shared test fixtures. `shared_dir` is the ../shared folder beside the repository, if any."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

# Property tests explore new random inputs on every developer run; CI replays a fixed sequence so
# a submission's result does not depend on the draw (a failure found locally becomes a test).
settings.register_profile("ci", derandomize=True, deadline=None)
if os.environ.get("CI"):
    settings.load_profile("ci")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture
def shared_dir() -> Path:
    if not (SHARED / "testvectors").is_dir():
        pytest.skip("../shared/testvectors is not present beside the repository")
    return SHARED


# Tests that start several peer processes (or many nodes) on the 2-core reference machine share
# the CPU with every process they start; a step deadline can pass under that load without any bug.
# They get one rerun (reported as "R" in the summary), never more: a real failure fails twice.
_MULTI_PEER_FILES = {
    "test_faults_testnet.py",
    "test_multiprocess.py",
    "test_secure_inference.py",
    "test_rejected_peer.py",
    "test_cli_testnet.py",
    "test_namespaces.py",
    "test_api_testnet.py",
    "test_concurrency_testnet.py",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        path = item.path
        if path.parent.name == "consensus_net" or path.name in _MULTI_PEER_FILES or (
            path.name == "test_cli.py" and item.get_closest_marker("slow")
        ):
            item.add_marker(pytest.mark.flaky(reruns=1, reruns_delay=2))
