"""Small shards shared by the zk tests (weights drawn from a fixed seed)."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest

from p2pinfer.zk import CommittedShard, FixedLayer, ProofBinding, ProvableMlp, commit_shard


def make_shard(
    dims: list[int],
    *,
    seed: int = 0,
    bias: bool = True,
    activations: list[str] | None = None,
    residual: list[bool] | None = None,
    wmax: int = 300,
) -> ProvableMlp:
    rng = np.random.default_rng(seed)
    layers = []
    for k, (a, b) in enumerate(pairwise(dims)):
        w = rng.integers(-wmax, wmax, size=(a, b))
        bv = rng.integers(-5000, 5000, size=b) if bias else None
        act = activations[k] if activations else "relu"
        res = residual[k] if residual else False
        layers.append(FixedLayer(w, bv, act, res))
    return ProvableMlp(layers)


def make_input(tokens: int, width: int, seed: int = 1, vmax: int = 1000) -> np.ndarray:
    return np.random.default_rng(seed).integers(-vmax, vmax, size=(tokens, width))


@pytest.fixture(scope="session")
def small_committed() -> CommittedShard:
    """Two layers 8 -> 8 -> 8 with ReLU, the second with a residual; bias on both."""
    return commit_shard(make_shard([8, 8, 8], residual=[False, True]))


@pytest.fixture(scope="session")
def binding() -> ProofBinding:
    return ProofBinding(task_id=b"task-1", manifest_digest=b"\x11" * 32, context=b"net/stage0")
