"""GELU layers: the fixed-point table, and proofs by a committed logUp lookup."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import p2pinfer.zk.tables as tables_mod
from p2pinfer.zk import (
    FixedLayer,
    FixedPointOverflow,
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
from p2pinfer.zk.proof import _binding
from p2pinfer.zk.tables import gelu_table

from .conftest import (
    assert_mutation_rejected,
    assert_values_not_in_proof,
    make_input,
    make_shard,
)

BINDING = ProofBinding(b"gelu-task", b"\x33" * 32)


def gelu_shard(dims, seed=0, residual=None, acts=None):
    n = len(dims) - 1
    return make_shard(dims, seed=seed, wmax=60, activations=acts or ["gelu"] * n,
                      residual=residual)


@pytest.fixture(scope="module")
def gelu_committed():
    return commit_shard(gelu_shard([8, 16, 8], acts=["gelu", "identity"]))


@pytest.mark.parametrize("f", [4, 8])
def test_the_table_is_gelu_rounded_to_the_fixed_point_grid(f):
    table = gelu_table(f)
    assert len(table) == 1 << (f + 6) and not table.flags.writeable
    keys = np.arange(-len(table) // 2, len(table) // 2)
    x = keys / (1 << f)
    exact = np.array([v * 0.5 * (1 + math.erf(v / math.sqrt(2))) for v in x])
    # within half a step of exact GELU (the float reference agrees to ~1e-16 here)
    assert np.abs(table / (1 << f) - exact).max() <= 0.5 / (1 << f) + 1e-12
    reference = np.floor(exact * (1 << f) + 0.5).astype(np.int64)
    assert np.array_equal(table, reference)


def test_the_fixed_point_forward_tracks_float_gelu():
    rng = np.random.default_rng(4)
    w1, b1 = rng.normal(0, 0.25, (16, 32)), rng.normal(0, 0.1, 32)
    w2, b2 = rng.normal(0, 0.18, (32, 16)), rng.normal(0, 0.1, 16)
    shard = ProvableMlp.from_float([(w1, b1), (w2, b2)], activations=["gelu", "identity"])
    x = rng.normal(0, 1, (5, 16))
    h = x @ w1 + b1
    h = h * 0.5 * (1 + np.vectorize(math.erf)(h / math.sqrt(2)))
    ref = h @ w2 + b2
    got = shard.dequantize(shard.forward_fixed(shard.quantize(x)))
    assert np.abs(got - ref).max() < 0.05  # quantization of weights and inputs to 2**-8


def test_a_gelu_input_outside_the_table_is_an_overflow_not_a_wrong_value():
    layer = FixedLayer(np.full((2, 2), 200, dtype=np.int64), None, "gelu")
    shard = ProvableMlp([layer])
    with pytest.raises(FixedPointOverflow, match="GELU input"):
        shard.forward_fixed(np.full((1, 2), 20_000))  # q = 20000 * 400 / 256 > 8192


def test_gelu_layers_refuse_frac_bits_without_a_table():
    layer = FixedLayer(np.ones((2, 2), dtype=np.int64), None, "gelu")
    with pytest.raises(ValueError, match="frac_bits"):
        ProvableMlp([layer], frac_bits=12)


@settings(deadline=None, max_examples=12, suppress_health_check=[HealthCheck.too_slow])
@given(
    tokens=st.integers(1, 5),
    dims=st.lists(st.sampled_from([1, 2, 4, 8]), min_size=2, max_size=3),
    other=st.sampled_from(["relu", "identity", "gelu"]),
    seed=st.integers(0, 2**16),
)
def test_gelu_proofs_are_complete_on_random_shapes(tokens, dims, other, seed):
    n = len(dims) - 1
    residual = [dims[k] == dims[k + 1] and (seed >> k) & 1 == 1 for k in range(n)]
    acts = ["gelu", other][:n]
    committed = commit_shard(gelu_shard(dims, seed=seed, residual=residual, acts=acts))
    x = make_input(tokens, dims[0], seed=seed + 1, vmax=300)
    y = committed.forward_fixed(x)
    proof = ShardProof.from_bytes(prove(committed, x, y, BINDING).to_bytes())
    verify(committed.commitment, x, y, proof, BINDING)


def test_a_wrong_gelu_value_is_caught_by_the_lookup(gelu_committed, monkeypatch):
    """The prover computes and commits with a table that differs in one used entry (its
    trace, its committed outputs and its proof all agree): the verifier's table does not."""
    x = make_input(3, 8, vmax=300)
    honest = gelu_table(8)
    q = (np.asarray(gelu_committed.shard.trace(x)[0].z) >> 8).reshape(-1)
    cheat = honest.copy()
    cheat[int(q[0]) + len(honest) // 2] += 3
    cheat.setflags(write=False)
    monkeypatch.setitem(tables_mod._GELU_TABLES, (8, 6), cheat)
    y = gelu_committed.forward_fixed(x)
    proof = prove(gelu_committed, x, y, BINDING)
    monkeypatch.setitem(tables_mod._GELU_TABLES, (8, 6), honest)
    assert not np.array_equal(y, gelu_committed.forward_fixed(x))
    with pytest.raises(ProofError) as exc:
        verify(gelu_committed.commitment, x, y, proof, BINDING)
    assert "layer0/" in exc.value.check


def test_an_output_off_the_table_is_caught_by_the_lookup(gelu_committed, monkeypatch):
    """The prover's first layer outputs ReLU where GELU was committed to."""
    x = make_input(2, 8, vmax=300)
    relu = np.maximum(np.arange(-8192, 8192), 0)
    relu.setflags(write=False)
    monkeypatch.setitem(tables_mod._GELU_TABLES, (8, 6), relu)
    y = gelu_committed.forward_fixed(x)
    proof = prove(gelu_committed, x, y, BINDING)
    monkeypatch.undo()
    with pytest.raises(ProofError):
        verify(gelu_committed.commitment, x, y, proof, BINDING)


def test_a_relu_proof_does_not_verify_against_a_gelu_manifest():
    dims = [8, 8, 8]
    gelu = commit_shard(gelu_shard(dims, seed=5, acts=["gelu", "identity"]))
    relu = commit_shard(gelu_shard(dims, seed=5, acts=["relu", "identity"]))
    x = make_input(2, 8, vmax=300)
    y = relu.forward_fixed(x)
    proof = prove(relu, x, y, BINDING)
    with pytest.raises(ProofError):
        verify(gelu.commitment, x, y, proof, BINDING)
    manifest = ModelManifest.from_shards("m", [gelu])
    assert [lc.activation for lc in manifest.layers] == ["gelu", "identity"]
    assert ModelManifest.from_bytes(manifest.to_bytes()) == manifest


@settings(deadline=None, max_examples=60)
@given(st.data())
def test_mutated_gelu_proofs_never_verify(gelu_committed, data):
    x = make_input(1, 8, vmax=300)
    y = gelu_committed.forward_fixed(x)
    assert_mutation_rejected(gelu_committed, x, y, BINDING,
                             data.draw(st.integers(0, 1 << 20)), data.draw(st.integers(1, 255)))


def test_the_gelu_proof_carries_no_activation_in_the_clear(gelu_committed):
    x = make_input(2, 8, vmax=300)
    trace = gelu_committed.shard.trace(x)
    blob = prove(gelu_committed, x, trace[-1].out, BINDING).to_bytes()
    hidden = trace[0].out.reshape(-1)
    assert_values_not_in_proof(blob, hidden, 8)


def test_a_manifest_with_gelu_at_an_untabled_precision_is_malformed(gelu_committed):
    import dataclasses

    manifest = ModelManifest.from_shards("m", [gelu_committed])
    bad = dataclasses.replace(manifest, frac_bits=12)
    with pytest.raises(ProofFormatError, match="GELU"):
        ModelManifest.from_bytes(bad.to_bytes())
    x = make_input(1, 8, vmax=300)
    y = gelu_committed.forward_fixed(x)
    proof = prove(gelu_committed, x, y, BINDING)
    # past the binding check (as if made for that commitment): a typed error, not a ValueError
    _, forged = _binding(bad.shard(0, 2), x, y, BINDING)
    with pytest.raises(ShapeMismatch, match="GELU"):
        verify(bad.shard(0, 2), x, y, dataclasses.replace(proof, binding=forged), BINDING)
