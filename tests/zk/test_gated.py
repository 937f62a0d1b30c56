"""Gated layers (SwiGLU, GeGLU): y = floor(G(q_g) * q_u / 2**f) (+ x) with [W_u | W_g] committed
as one matrix, proven by a rescale, a committed product sum-check, and the two halves (an
identity rescale and a lookup) sharing the matrix-product argument."""

from __future__ import annotations

import dataclasses

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
from p2pinfer.zk.manifest import LayerCommitment
from p2pinfer.zk.tables import silu_table

from .conftest import assert_mutation_rejected, assert_values_not_in_proof, make_input

BINDING = ProofBinding(b"gated-task", b"\x37" * 32)


def gated_layer(d_in, d_out, act="swiglu", residual=False, seed=0, wmax=60):
    rng = np.random.default_rng(seed)
    w = rng.integers(-wmax, wmax, size=(d_in, 2 * d_out))
    return FixedLayer(w, rng.integers(-5000, 5000, size=2 * d_out), act, residual)


def plain_layer(d_in, d_out, act, seed):
    rng = np.random.default_rng(seed)
    return FixedLayer(rng.integers(-60, 60, size=(d_in, d_out)),
                      rng.integers(-5000, 5000, size=d_out), act)


@pytest.fixture(scope="module")
def swiglu_committed():
    return commit_shard(ProvableMlp([gated_layer(8, 8, residual=True),
                                     plain_layer(8, 8, "identity", 3)]))


def _proves(committed, x):
    y = committed.forward_fixed(x)
    proof = ShardProof.from_bytes(prove(committed, x, y, BINDING).to_bytes())
    verify(committed.commitment, x, y, proof, BINDING)


def test_the_fixed_point_forward_is_the_gated_formula():
    layer = gated_layer(4, 8, residual=False)
    x = make_input(3, 4, vmax=300)
    z = x @ layer.weight + layer.bias
    q = z >> 8
    g = silu_table(8)[q[:, 8:] + len(silu_table(8)) // 2]
    assert np.array_equal(ProvableMlp([layer]).forward_fixed(x), (g * q[:, :8]) >> 8)
    assert layer.d_out == 8 and layer.gated


def test_the_fixed_point_forward_tracks_float_swiglu_and_geglu():
    import math

    rng = np.random.default_rng(4)
    wu, bu = rng.normal(0, 0.25, (16, 32)), rng.normal(0, 0.1, 32)
    wg, bg = rng.normal(0, 0.25, (16, 32)), rng.normal(0, 0.1, 32)
    wd, bd = rng.normal(0, 0.18, (32, 16)), rng.normal(0, 0.1, 16)
    x = rng.normal(0, 1, (5, 16))
    zg, zu = x @ wg + bg, x @ wu + bu
    gates = {"swiglu": zg / (1 + np.exp(-zg)),
             "geglu": zg * 0.5 * (1 + np.vectorize(math.erf)(zg / math.sqrt(2)))}
    for act, gate in gates.items():
        shard = ProvableMlp.from_float([(wu, bu, wg, bg), (wd, bd)],
                                       activations=[act, "identity"])
        got = shard.dequantize(shard.forward_fixed(shard.quantize(x)))
        ref = (gate * zu) @ wd + bd
        assert np.abs(got - ref).max() < 0.05, act
    with pytest.raises(ValueError, match="gated"):
        ProvableMlp.from_float([(wu, bu)], activations="swiglu")
    with pytest.raises(ValueError, match="one shape"):
        ProvableMlp.from_float([(wu, bu, wg[:, :30], bg[:30])], activations="swiglu")


def test_a_gated_layer_refuses_odd_widths_and_overflowing_products():
    with pytest.raises(ValueError, match="even width"):
        FixedLayer(np.ones((4, 3), dtype=np.int64), None, "swiglu")
    big = FixedLayer(np.full((2, 4), 2000, dtype=np.int64), None, "swiglu")
    with pytest.raises(FixedPointOverflow):
        ProvableMlp([big]).forward_fixed(np.full((1, 2), 1000))


@settings(deadline=None, max_examples=10, suppress_health_check=[HealthCheck.too_slow])
@given(
    tokens=st.integers(1, 5),
    d_in=st.sampled_from([1, 2, 4, 8]),
    d_out=st.sampled_from([1, 2, 4, 8]),
    act=st.sampled_from(["swiglu", "geglu"]),
    before=st.sampled_from([None, "relu", "silu"]),
    seed=st.integers(0, 2**16),
)
def test_gated_proofs_are_complete_on_random_shapes(tokens, d_in, d_out, act, before, seed):
    layers = [gated_layer(d_in, d_out, act, residual=d_in == d_out and seed & 1 == 1,
                          seed=seed)]
    if before:
        layers.insert(0, plain_layer(4, d_in, before, seed + 7))
    committed = commit_shard(ProvableMlp(layers))
    _proves(committed, make_input(tokens, layers[0].d_in, seed=seed + 1, vmax=300))


def test_a_wrong_gate_product_is_caught(swiglu_committed, monkeypatch):
    """The prover's product is off by 40 output steps in one element; its trace, output and
    proof agree with each other, but p = g * u does not hold."""
    x = make_input(3, 8, vmax=300)
    honest_trace = swiglu_committed.shard.trace

    def trace(a, live=None):
        out = honest_trace(a, live)
        first = out[0]
        z = first.z.copy()
        z[0, 1] += 40 << 8
        y = (z >> 8) + first.a
        second = swiglu_committed.shard.layers[1]
        z2 = y @ second.weight + second.bias
        return [dataclasses.replace(first, z=z, out=y),
                dataclasses.replace(out[1], a=y, z=z2, out=z2 >> 8)]

    monkeypatch.setattr(swiglu_committed.shard, "trace", trace)
    y = swiglu_committed.forward_fixed(x)
    proof = prove(swiglu_committed, x, y, BINDING)
    monkeypatch.undo()
    assert not np.array_equal(y, swiglu_committed.forward_fixed(x))
    with pytest.raises(ProofError) as exc:
        verify(swiglu_committed.commitment, x, y, proof, BINDING)
    assert exc.value.check.startswith("layer0/")


def test_a_wrong_gate_value_is_caught_by_the_lookup(swiglu_committed, monkeypatch):
    x = make_input(2, 8, vmax=300)
    honest = silu_table(8)
    zw = swiglu_committed.shard.trace(x)[0].zw
    cheat = honest.copy()
    cheat[int(zw[0, 8] >> 8) + len(honest) // 2] += 40
    cheat.setflags(write=False)
    monkeypatch.setitem(tables_mod._SILU_TABLES, (8, 6), cheat)
    y = swiglu_committed.forward_fixed(x)
    proof = prove(swiglu_committed, x, y, BINDING)
    monkeypatch.setitem(tables_mod._SILU_TABLES, (8, 6), honest)
    assert not np.array_equal(y, swiglu_committed.forward_fixed(x))
    with pytest.raises(ProofError) as exc:
        verify(swiglu_committed.commitment, x, y, proof, BINDING)
    assert exc.value.check.startswith("layer0/gate/")


def test_swapped_halves_and_the_other_gate_do_not_verify():
    layer = gated_layer(8, 4, seed=9)
    honest = commit_shard(ProvableMlp([layer]))
    swapped_w = np.concatenate([layer.weight[:, 4:], layer.weight[:, :4]], axis=1)
    swapped_b = np.concatenate([layer.bias[4:], layer.bias[:4]])
    x = make_input(2, 8, vmax=300)
    for other in (FixedLayer(swapped_w, swapped_b, "swiglu"),
                  FixedLayer(layer.weight, layer.bias, "geglu")):
        cheat = commit_shard(ProvableMlp([other]))
        y = cheat.forward_fixed(x)
        assert not np.array_equal(y, honest.forward_fixed(x))
        with pytest.raises(ProofError):
            verify(honest.commitment, x, y, prove(cheat, x, y, BINDING), BINDING)


def test_the_manifest_carries_gated_layers_and_refuses_a_wrong_row_count(swiglu_committed):
    manifest = ModelManifest.from_shards("m", [swiglu_committed])
    assert [lc.activation for lc in manifest.layers] == ["swiglu", "identity"]
    assert ModelManifest.from_bytes(manifest.to_bytes()) == manifest
    gated = manifest.layers[0].to_wire()
    assert len(gated["w"]) == 8  # 8 x 16 weights: 2**3 Hyrax rows
    with pytest.raises(ProofFormatError, match="weight commitment"):
        LayerCommitment.from_wire({**gated, "w": gated["w"][:4]})
    with pytest.raises(ProofFormatError, match="commitment has the wrong shape"):
        LayerCommitment.from_wire({**gated, "act": "silu"})  # a plain layer is half as wide


def test_the_commitment_cache_holds_gated_layers(tmp_path):
    shard = ProvableMlp([gated_layer(4, 4, seed=2)])
    first = commit_shard(shard, tmp_path)
    again = commit_shard(shard, tmp_path)
    assert again.commitment == first.commitment
    x = make_input(2, 4, vmax=300)
    y = again.forward_fixed(x)
    verify(first.commitment, x, y, prove(again, x, y, BINDING), BINDING)


def test_the_gated_proof_carries_no_activation_in_the_clear(swiglu_committed):
    x = make_input(2, 8, vmax=300)
    trace = swiglu_committed.shard.trace(x)
    blob = prove(swiglu_committed, x, trace[-1].out, BINDING).to_bytes()
    values = np.concatenate([trace[0].zw.reshape(-1) >> 8, trace[0].out.reshape(-1)])
    assert_values_not_in_proof(blob, values, 12)


@settings(deadline=None, max_examples=30)
@given(st.data())
def test_mutated_gated_proofs_never_verify(swiglu_committed, data):
    x = make_input(1, 8, vmax=300)
    y = swiglu_committed.forward_fixed(x)
    assert_mutation_rejected(swiglu_committed, x, y, BINDING,
                             data.draw(st.integers(0, 1 << 20)), data.draw(st.integers(1, 255)))


def test_a_manifest_residual_across_widths_is_malformed_not_a_crash(swiglu_committed):
    """A residual flag on a layer whose widths differ is refused when the manifest is read, so
    a verifier never reaches the proof with it (the binding is a public hash: anyone can
    re-bind a proof to an edited manifest)."""
    wide = commit_shard(ProvableMlp([gated_layer(4, 8, seed=4)]))
    entry = wide.commitment.layers[0].to_wire()
    with pytest.raises(ProofFormatError, match="residual"):
        LayerCommitment.from_wire({**entry, "res": True})
    plain = commit_shard(ProvableMlp([plain_layer(4, 8, "relu", 5)])).commitment.layers[0]
    with pytest.raises(ProofFormatError, match="residual"):
        LayerCommitment.from_wire({**plain.to_wire(), "res": True})
