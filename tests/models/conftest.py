"""Session fixtures: tiny random checkpoints of every supported family."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.models.tiny_checkpoints import FAMILIES, build


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, torch.nn.Module]]:
    root = tmp_path_factory.mktemp("ckpt")
    return {name: build(name, root) for name in FAMILIES}


@pytest.fixture(scope="session")
def sharded_llama(tmp_path_factory: pytest.TempPathFactory, checkpoints) -> Path:
    _, model = checkpoints["llama"]
    path = tmp_path_factory.mktemp("sharded") / "llama"
    model.save_pretrained(path, max_shard_size="40KB")
    return path
