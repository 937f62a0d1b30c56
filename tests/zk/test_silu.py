"""SiLU layers: the fixed-point table, and proofs by the same committed logUp lookup as GELU
(tests/zk/test_gelu.py covers the lookup argument itself in more depth)."""

from __future__ import annotations

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
    ShardProof,
    commit_shard,
    prove,
    verify,
)
from p2pinfer.zk.tables import activation_table, gelu_table, silu_table

from .conftest import assert_mutation_rejected, make_input, make_shard

BINDING = ProofBinding(b"silu-task", b"\x35" * 32)


def silu_shard(dims, seed=0, residual=None, acts=None):
    n = len(dims) - 1
    return make_shard(dims, seed=seed, wmax=60, activations=acts or ["silu"] * n,
                      residual=residual)


@pytest.fixture(scope="module")
def silu_committed():
    return commit_shard(silu_shard([8, 16, 8], acts=["silu", "identity"]))


@pytest.mark.parametrize("f", range(1, 11))
def test_the_table_is_silu_rounded_to_the_fixed_point_grid(f):
    table = silu_table(f)
    assert len(table) == 1 << (f + 6) and not table.flags.writeable
    assert activation_table("silu", f) is table
    t = np.arange(-len(table) // 2, len(table) // 2)
    x = t / (1 << f)
    exact = x / (1 + np.exp(-x))
    assert np.abs(table / (1 << f) - exact).max() <= 0.5 / (1 << f) + 1e-12
    assert np.array_equal(table, np.floor(exact * (1 << f) + 0.5).astype(np.int64))
    # SiLU(x) - SiLU(-x) = x holds exactly on the grid too
    inner = np.arange(1, len(table) // 2)
    assert np.array_equal(table[len(table) // 2 + inner] - table[len(table) // 2 - inner], inner)
    assert not np.array_equal(table, gelu_table(f))


def test_there_is_no_table_for_other_activations_or_precisions():
    with pytest.raises(ValueError, match="lookup activation"):
        activation_table("relu", 8)
    with pytest.raises(ValueError, match="frac_bits"):
        silu_table(11)


def test_the_fixed_point_forward_tracks_float_silu():
    rng = np.random.default_rng(4)
    w1, b1 = rng.normal(0, 0.25, (16, 32)), rng.normal(0, 0.1, 32)
    w2, b2 = rng.normal(0, 0.18, (32, 16)), rng.normal(0, 0.1, 16)
    shard = ProvableMlp.from_float([(w1, b1), (w2, b2)], activations=["silu", "identity"])
    x = rng.normal(0, 1, (5, 16))
    h = x @ w1 + b1
    ref = (h / (1 + np.exp(-h))) @ w2 + b2
    got = shard.dequantize(shard.forward_fixed(shard.quantize(x)))
    assert np.abs(got - ref).max() < 0.05  # quantization of weights and inputs to 2**-8


def test_a_silu_input_outside_the_table_is_an_overflow_not_a_wrong_value():
    shard = ProvableMlp([FixedLayer(np.full((2, 2), 200, dtype=np.int64), None, "silu")])
    with pytest.raises(FixedPointOverflow, match="SiLU input"):
        shard.forward_fixed(np.full((1, 2), 20_000))


@settings(deadline=None, max_examples=10, suppress_health_check=[HealthCheck.too_slow])
@given(
    tokens=st.integers(1, 5),
    dims=st.lists(st.sampled_from([1, 2, 4, 8]), min_size=2, max_size=3),
    other=st.sampled_from(["relu", "identity", "gelu", "silu"]),
    seed=st.integers(0, 2**16),
)
def test_silu_proofs_are_complete_on_random_shapes(tokens, dims, other, seed):
    n = len(dims) - 1
    residual = [dims[k] == dims[k + 1] and (seed >> k) & 1 == 1 for k in range(n)]
    committed = commit_shard(silu_shard(dims, seed=seed, residual=residual,
                                        acts=["silu", other][:n]))
    x = make_input(tokens, dims[0], seed=seed + 1, vmax=300)
    y = committed.forward_fixed(x)
    proof = ShardProof.from_bytes(prove(committed, x, y, BINDING).to_bytes())
    verify(committed.commitment, x, y, proof, BINDING)


def test_a_wrong_silu_value_is_caught_by_the_lookup(silu_committed, monkeypatch):
    """The prover's table differs in one used entry; its trace, committed outputs and proof
    agree with each other but not with the verifier's table."""
    x = make_input(3, 8, vmax=300)
    honest = silu_table(8)
    q = (np.asarray(silu_committed.shard.trace(x)[0].z) >> 8).reshape(-1)
    cheat = honest.copy()
    cheat[int(q[0]) + len(honest) // 2] -= 2
    cheat.setflags(write=False)
    monkeypatch.setitem(tables_mod._SILU_TABLES, (8, 6), cheat)
    y = silu_committed.forward_fixed(x)
    proof = prove(silu_committed, x, y, BINDING)
    monkeypatch.setitem(tables_mod._SILU_TABLES, (8, 6), honest)
    assert not np.array_equal(y, silu_committed.forward_fixed(x))
    with pytest.raises(ProofError) as exc:
        verify(silu_committed.commitment, x, y, proof, BINDING)
    assert "layer0/" in exc.value.check


def test_a_gelu_proof_does_not_verify_against_a_silu_manifest():
    dims = [8, 8, 8]
    silu = commit_shard(silu_shard(dims, seed=5, acts=["silu", "identity"]))
    gelu = commit_shard(silu_shard(dims, seed=5, acts=["gelu", "identity"]))
    x = make_input(2, 8, vmax=300)
    y = gelu.forward_fixed(x)
    assert not np.array_equal(y, silu.forward_fixed(x))
    with pytest.raises(ProofError):
        verify(silu.commitment, x, y, prove(gelu, x, y, BINDING), BINDING)
    manifest = ModelManifest.from_shards("m", [silu])
    assert [lc.activation for lc in manifest.layers] == ["silu", "identity"]
    assert ModelManifest.from_bytes(manifest.to_bytes()) == manifest


def test_a_manifest_with_silu_at_an_untabled_precision_is_malformed(silu_committed):
    import dataclasses

    bad = dataclasses.replace(ModelManifest.from_shards("m", [silu_committed]), frac_bits=12)
    with pytest.raises(ProofFormatError, match="SiLU"):
        ModelManifest.from_bytes(bad.to_bytes())


@settings(deadline=None, max_examples=30)
@given(st.data())
def test_mutated_silu_proofs_never_verify(silu_committed, data):
    x = make_input(1, 8, vmax=300)
    y = silu_committed.forward_fixed(x)
    assert_mutation_rejected(silu_committed, x, y, BINDING,
                             data.draw(st.integers(0, 1 << 20)), data.draw(st.integers(1, 255)))
