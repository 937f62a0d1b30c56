"""Small provable MLPs written and committed once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from p2pinfer.models.mlp import zk_mlp_config
from p2pinfer.zk.checkpoint import write_committed_mlp


def small_mlp(directory: Path, name: str = "zk-mlp-test", layers: int = 6,
              hidden: int = 32) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    write_committed_mlp(directory, zk_mlp_config(name, layers=layers, hidden=hidden))
    return directory


@pytest.fixture(scope="session")
def mlp_dir(tmp_path_factory) -> Path:
    return small_mlp(tmp_path_factory.mktemp("mlp") / "model")


@pytest.fixture(scope="session")
def other_mlp_dir(tmp_path_factory) -> Path:
    """The same architecture and weights, committed by another owner (another manifest)."""
    return small_mlp(tmp_path_factory.mktemp("mlp-other") / "model")
