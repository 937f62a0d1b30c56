"""Shared test fixtures. `shared_dir` is the ../shared folder beside the repository, if any."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture
def shared_dir() -> Path:
    if not (SHARED / "testvectors").is_dir():
        pytest.skip("../shared/testvectors is not present beside the repository")
    return SHARED
