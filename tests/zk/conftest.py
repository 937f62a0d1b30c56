"""Small shards shared by the zk tests (weights drawn from a fixed seed)."""

from __future__ import annotations

import shutil
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from p2pinfer.zk import (
    CommittedShard,
    FixedLayer,
    ModelManifest,
    ProofBinding,
    ProofError,
    ProofFormatError,
    ProvableMlp,
    ShardProof,
    commit_shard,
    prove,
    verify,
)
from p2pinfer.zk.checkpoint import commit_layers, fixed_layers, load_manifest_bytes
from p2pinfer.zk.errors import CommitmentMismatch


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


_BLOBS: dict[int, bytes] = {}


def cached_proof(committed: CommittedShard, x: np.ndarray, y: np.ndarray,
                 binding: ProofBinding) -> bytes:
    """One proof's bytes per shard for the whole session (the mutation tests reuse it)."""
    key = id(committed)
    if key not in _BLOBS:
        _BLOBS[key] = prove(committed, x, y, binding).to_bytes()
    return _BLOBS[key]


def assert_mutation_rejected(committed: CommittedShard, x: np.ndarray, y: np.ndarray,
                             binding: ProofBinding, pos: int, flip: int) -> None:
    """Flip bits of one byte of the shard's proof: it must fail to decode with its typed error
    or fail to verify with a ProofError, never verify and never crash otherwise."""
    blob = bytearray(cached_proof(committed, x, y, binding))
    blob[pos % len(blob)] ^= flip
    try:
        proof = ShardProof.from_bytes(bytes(blob))
    except ProofFormatError:
        return
    with pytest.raises(ProofError):
        verify(committed.commitment, x, y, proof, binding)


def assert_values_not_in_proof(blob: bytes, values: np.ndarray, count: int) -> None:
    """The first `count` witness values with |v| > 20 appear in the proof bytes neither as a
    field element nor as an int64."""
    from p2pinfer.zk.field import P
    from p2pinfer.zk.group import encode_scalar

    flat = np.asarray(values).reshape(-1)
    chosen = flat[np.abs(flat) > 20][:count]
    assert len(chosen) == count
    for v in chosen:
        assert encode_scalar(int(v) % P) not in blob  # as a field element
        assert int(v).to_bytes(8, "little", signed=True) not in blob


def assert_a_changed_weight_cannot_prove(path: Path, work: Path, tensor: str,
                                         at: tuple[int, int], width: int) -> None:
    """Copy the imported model at `path` to `work`, change one weight of `tensor` (in layer
    1, the first block's MLP half): an honest peer's commit refuses it (CommitmentMismatch),
    and a cheater who commits its own weights but claims the manifest's entry cannot make a
    proof that verifies (ProofError)."""
    shutil.copytree(path, work)
    tensors = load_file(str(work / "model.safetensors"))
    tensors[tensor][at] += 0.5
    save_file(tensors, str(work / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CommitmentMismatch):  # an honest peer learns it when it loads
        commit_layers(work, 1, 2)
    manifest = ModelManifest.from_bytes(load_manifest_bytes(work))
    entry = manifest.block_shard(1, 2)
    mlp = fixed_layers(work, 1, 2)
    own = commit_shard(mlp, model_id=manifest.model_id, first_layer=entry.first_layer)
    cheat = CommittedShard(mlp, entry, own.weight_blinds, own.bias_blinds)
    x = mlp.quantize(np.random.default_rng(4).normal(size=(2, width)))
    y = cheat.forward_fixed(x)
    assert not np.array_equal(y, fixed_layers(path, 1, 2).forward_fixed(x))
    binding = ProofBinding(b"\x03" * 16, manifest.digest())
    with pytest.raises(ProofError):
        verify(entry, x, y, prove(cheat, x, y, binding), binding)
