"""Fixtures: tiny random checkpoints of every supported family, built once for this package."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.models.tiny_checkpoints import FAMILIES, build


@pytest.fixture(scope="package", autouse=True)
def single_torch_thread():
    """One intra-op thread: these models are tiny, and on a busy 2-core machine a second
    spinning thread makes each small matmul many times slower. Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="package")
def checkpoints(
    single_torch_thread, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[Path, torch.nn.Module]]:
    root = tmp_path_factory.mktemp("ckpt")
    return {name: build(name, root) for name in FAMILIES}


@pytest.fixture(scope="package")
def sharded_llama(tmp_path_factory: pytest.TempPathFactory, checkpoints) -> Path:
    _, model = checkpoints["llama"]
    path = tmp_path_factory.mktemp("sharded") / "llama"
    model.save_pretrained(path, max_shard_size="40KB")
    return path
