"""Residuals that reach back over several layers (`skip`), as a transformer block adds its input
after its MLP: here a Llama-style MLP block, a gated SwiGLU layer d -> ff then a down projection
ff -> d whose residual adds the block's input. The residual's claims wait until the proof
reaches that input, then join the claims on it."""

from __future__ import annotations

import dataclasses
from itertools import pairwise

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2pinfer.zk import (
    FixedLayer,
    ModelManifest,
    ProofBinding,
    ProofError,
    ProofFormatError,
    ProvableMlp,
    ShapeMismatch,
    ShardProof,
    commit_shard,
    prove,
    verify,
)
from p2pinfer.zk.manifest import LayerCommitment

from .conftest import assert_mutation_rejected, make_input

BINDING = ProofBinding(b"block-task", b"\x39" * 32)


def _layer(d_in, d_out, act, seed, residual=False, skip=0):
    rng = np.random.default_rng(seed)
    width = 2 * d_out if act == "swiglu" else d_out
    return FixedLayer(rng.integers(-60, 60, size=(d_in, width)),
                      rng.integers(-5000, 5000, size=width), act, residual, skip)


def mlp_block(d, ff, seed=0):
    """[gated d -> ff, identity ff -> d + the block's input]."""
    return [_layer(d, ff, "swiglu", seed), _layer(ff, d, "identity", seed + 1, True, 1)]


@pytest.fixture(scope="module")
def block_committed():
    # a ReLU layer first, so the block's input is a committed activation, not the public x
    return commit_shard(ProvableMlp([_layer(8, 8, "relu", 20), *mlp_block(8, 16, seed=3)]))


def test_the_block_adds_its_input_after_two_layers():
    gated, down = mlp_block(4, 8)
    x = make_input(3, 4, vmax=300)
    inner = ProvableMlp([gated]).forward_fixed(x)
    expect = ((inner @ down.weight + down.bias) >> 8) + x
    assert np.array_equal(ProvableMlp([gated, down]).forward_fixed(x), expect)


def test_the_fixed_point_block_tracks_a_float_llama_mlp():
    rng = np.random.default_rng(4)
    d, ff = 16, 32
    wu, wg = rng.normal(0, 0.25, (d, ff)), rng.normal(0, 0.25, (d, ff))
    bu, bg = rng.normal(0, 0.1, ff), rng.normal(0, 0.1, ff)
    wd, bd = rng.normal(0, 0.18, (ff, d)), rng.normal(0, 0.1, d)
    shard = ProvableMlp.from_float([(wu, bu, wg, bg), (wd, bd)],
                                   activations=["swiglu", "identity"], residual=[False, True],
                                   skip=[0, 1])
    x = rng.normal(0, 1, (5, d))
    zg = x @ wg + bg
    ref = ((zg / (1 + np.exp(-zg))) * (x @ wu + bu)) @ wd + bd + x
    got = shard.dequantize(shard.forward_fixed(shard.quantize(x)))
    assert np.abs(got - ref).max() < 0.05


def test_a_skip_must_stay_inside_the_shard_and_match_widths():
    with pytest.raises(ValueError, match="before the shard"):
        ProvableMlp([_layer(8, 8, "identity", 1, True, 1)])
    with pytest.raises(ValueError, match="another width"):
        ProvableMlp([_layer(4, 8, "relu", 1), _layer(8, 8, "identity", 2, True, 1)])
    with pytest.raises(ValueError, match="skip"):
        _layer(8, 8, "identity", 1, False, 1)
    with pytest.raises(ValueError, match="skip"):
        _layer(8, 8, "identity", 1, True, True)


@settings(deadline=None, max_examples=10, suppress_health_check=[HealthCheck.too_slow])
@given(
    tokens=st.integers(1, 5),
    d=st.sampled_from([1, 2, 4, 8]),
    ff=st.sampled_from([1, 2, 4, 8, 16]),
    blocks=st.integers(1, 2),
    pre=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_block_proofs_are_complete_on_random_shapes(tokens, d, ff, blocks, pre, seed):
    layers = [_layer(d, d, "relu", seed + 50)] if pre else []
    for b in range(blocks):
        layers += mlp_block(d, ff, seed=seed + 2 * b)
    committed = commit_shard(ProvableMlp(layers))
    x = make_input(tokens, d, seed=seed + 1, vmax=300)
    y = committed.forward_fixed(x)
    proof = ShardProof.from_bytes(prove(committed, x, y, BINDING).to_bytes())
    verify(committed.commitment, x, y, proof, BINDING)


def test_a_prover_adding_the_wrong_residual_is_caught():
    """The down layer adds its own input (the gated output) instead of the block's input: the
    prover's trace, output and proof agree, the committed skip does not."""
    d = 8
    honest = commit_shard(ProvableMlp([_layer(d, d, "relu", 20), *mlp_block(d, d, seed=3)]))
    layers = list(honest.shard.layers)
    cheat = ProvableMlp([*layers[:2], dataclasses.replace(layers[2], skip=0)])
    x = make_input(3, d, vmax=300)
    y = cheat.forward_fixed(x)
    assert not np.array_equal(y, honest.forward_fixed(x))
    trace = honest.shard.trace
    honest.shard.trace = cheat.trace
    try:
        proof = prove(honest, x, y, BINDING)
    finally:
        honest.shard.trace = trace
    with pytest.raises(ProofError):
        verify(honest.commitment, x, y, proof, BINDING)


def test_the_manifest_carries_skip_and_refuses_a_shard_cut_inside_a_block(block_committed):
    manifest = ModelManifest.from_shards("m", [block_committed])
    assert [lc.skip for lc in manifest.layers] == [0, 0, 1]
    assert ModelManifest.from_bytes(manifest.to_bytes()) == manifest
    assert "skip" not in manifest.layers[0].to_wire()  # earlier manifests keep their bytes
    # version 2, so a verifier that predates skip refuses it instead of reading a plain residual
    assert msgpack.unpackb(manifest.to_bytes())["v"] == 2
    plain = ModelManifest.from_shards("m", [commit_shard(ProvableMlp(mlp_block(8, 8)[:1]))])
    assert msgpack.unpackb(plain.to_bytes())["v"] == 1
    for wrong, m in ((1, manifest), (2, plain)):
        body = msgpack.unpackb(m.to_bytes())
        with pytest.raises(ProofFormatError, match="version 2"):
            ModelManifest.from_bytes(msgpack.packb({**body, "v": wrong}))
    x = make_input(2, 8, vmax=300)
    y = block_committed.forward_fixed(x)
    proof = prove(block_committed, x, y, BINDING)
    with pytest.raises(ShapeMismatch, match="before the shard"):
        verify(manifest.shard(2, 3), np.zeros((2, 16), dtype=np.int64), y, proof, BINDING)
    down = manifest.layers[2].to_wire()
    for bad in ({**down, "res": False}, {**down, "skip": 0}, {**down, "skip": True},
                {**down, "skip": 1000}, {**down, "extra": 1}):
        with pytest.raises(ProofFormatError):
            LayerCommitment.from_wire(bad)


@settings(deadline=None, max_examples=30)
@given(st.data())
def test_mutated_block_proofs_never_verify(block_committed, data):
    x = make_input(1, 8, vmax=300)
    y = block_committed.forward_fixed(x)
    assert_mutation_rejected(block_committed, x, y, BINDING,
                             data.draw(st.integers(0, 1 << 20)), data.draw(st.integers(1, 255)))


@settings(deadline=None, max_examples=300)
@given(st.lists(st.integers(0, 4), min_size=1, max_size=12))
def test_manifest_blocks_are_the_finest_grouping_no_skip_crosses(skips):
    """blocks() cuts between layers exactly where no residual reaches across the cut."""
    skips = [min(s, k) for k, s in enumerate(skips)]
    layers = tuple(LayerCommitment(4, 4, "identity", s > 0, (b"\0" * 48,), None, s)
                   for s in skips)
    blocks = ModelManifest("m", 8, b"seed", layers).blocks()
    assert blocks[0][0] == 0 and blocks[-1][1] == len(skips)
    assert all(a[1] == b[0] and a[0] < a[1] for a, b in pairwise(blocks))
    cuts = {start for start, _ in blocks[1:]}
    for j in range(1, len(skips)):
        crossed = any(k - skips[k] < j <= k for k in range(len(skips)))
        assert (j in cuts) == (not crossed), (skips, j)
