"""RMSNorm layers: y = floor(floor(x R / 2**f) g / 2**f) with R = floor(sqrt(C / S)),
S = sum x^2 + E; proven by two rescales, two broadcast-product sum-checks, a degree-4 sum-check
tying R to S by 80-bit range checks, and a sum of squares tying S to x."""

from __future__ import annotations

import dataclasses
from math import isqrt

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import p2pinfer.zk.fixed as fixed_mod
import p2pinfer.zk.gadgets.rmsnorm as rmsnorm_gadget
import p2pinfer.zk.proof as proof_mod
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
from p2pinfer.zk.fixed import rms_constants, rmsnorm_fixed
from p2pinfer.zk.manifest import LayerCommitment

from .conftest import assert_mutation_rejected, assert_values_not_in_proof, make_input

BINDING = ProofBinding(b"norm-task", b"\x3b" * 32)


def norm_layer(d, seed=0):
    return FixedLayer(np.random.default_rng(seed).integers(100, 400, size=(1, d)), None,
                      "rmsnorm")


def plain(d_in, d_out, act="identity", seed=1, residual=False, skip=0):
    rng = np.random.default_rng(seed)
    return FixedLayer(rng.integers(-60, 60, size=(d_in, d_out)),
                      rng.integers(-5000, 5000, size=d_out), act, residual, skip)


@pytest.fixture(scope="module")
def norm_committed():
    # a layer before the norm, so its input is committed (not the public x)
    return commit_shard(ProvableMlp([plain(8, 8, "relu", 20), norm_layer(8, 3)]))


def test_the_fixed_point_norm_is_the_formula_and_tracks_float():
    rng = np.random.default_rng(4)
    d, f = 16, 8
    x = rng.normal(0, 1.5, (5, d))
    gain = rng.normal(1, 0.2, d)
    shard = ProvableMlp([FixedLayer(np.rint(gain * 256).astype(np.int64)[None], None,
                                    "rmsnorm")])
    xq = shard.quantize(x)
    e, c = rms_constants(d, f)
    assert c == d << (2 * f + 2 * fixed_mod.RMS_R_FRAC)
    s = (xq.astype(object) ** 2).sum(axis=1) + e
    r = np.array([isqrt(c // int(v)) for v in s])
    assert all(int(ri) ** 2 * int(si) <= c < (int(ri) + 1) ** 2 * int(si) for ri, si in zip(r, s))
    expect = ((xq * r[:, None]) >> fixed_mod.RMS_R_FRAC) * shard.layers[0].weight >> f
    assert np.array_equal(shard.forward_fixed(xq), expect)
    ref = x / np.sqrt((x ** 2).mean(axis=1, keepdims=True) + 2.0 ** -16) * gain
    assert np.abs(shard.dequantize(shard.forward_fixed(xq)) - ref).max() < 0.03
    # 1/rms keeps 16 fractional bits whatever f is, so a wide residual stream stays accurate
    wide = rng.normal(0, 100.0, (3, d))
    got = shard.dequantize(shard.forward_fixed(shard.quantize(wide)))
    ref = wide / np.sqrt((wide ** 2).mean(axis=1, keepdims=True)) * gain
    assert np.abs(got - ref).max() < 0.03


def test_norm_layers_refuse_precisions_whose_products_cannot_fit():
    layer = norm_layer(8)
    with pytest.raises(ValueError, match="frac_bits"):
        ProvableMlp([layer], frac_bits=13)
    manifest = ModelManifest.from_shards("m", [commit_shard(ProvableMlp([layer]))])
    with pytest.raises(ProofFormatError, match="RMSNorm"):
        ModelManifest.from_bytes(dataclasses.replace(manifest, frac_bits=13).to_bytes())


def test_a_norm_commitment_built_with_a_residual_is_refused_by_the_verifier(norm_committed):
    """Built in code (not read from bytes, which refuses it): verify raises a typed error."""
    x = make_input(2, 8, vmax=300)
    y = norm_committed.forward_fixed(x)
    proof = prove(norm_committed, x, y, BINDING)
    c = norm_committed.commitment
    bad = dataclasses.replace(c, layers=(c.layers[0], dataclasses.replace(c.layers[1],
                                                                          residual=True)))
    _, forged = proof_mod._binding(bad, x, y, BINDING)
    with pytest.raises(ProofError):
        verify(bad, x, y, dataclasses.replace(proof, binding=forged), BINDING)


def test_the_verifier_refuses_an_input_beyond_the_limits(norm_committed):
    x = make_input(1, 8, vmax=300)
    y = norm_committed.forward_fixed(x)
    proof = prove(norm_committed, x, y, BINDING)
    with pytest.raises(ProofError, match="outside"):
        verify(norm_committed.commitment, np.full((1, 8), 1 << 24), y, proof, BINDING)


def test_a_norm_layer_has_a_gain_only():
    with pytest.raises(ValueError, match="gain"):
        FixedLayer(np.ones((1, 8), dtype=np.int64), np.ones(8, dtype=np.int64), "rmsnorm")
    with pytest.raises(ValueError, match="gain"):
        FixedLayer(np.ones((2, 8), dtype=np.int64), None, "rmsnorm")
    layer = norm_layer(8)
    assert (layer.d_in, layer.d_out) == (8, 8)
    with pytest.raises(FixedPointOverflow):
        rmsnorm_fixed(np.full((1, 8), 1 << 24), layer.weight, 8)


@settings(deadline=None, max_examples=12, suppress_health_check=[HealthCheck.too_slow])
@given(
    tokens=st.integers(1, 5),
    d=st.sampled_from([1, 2, 4, 8, 16]),
    before=st.sampled_from([None, "relu", "gelu"]),
    after=st.booleans(),
    scale=st.sampled_from([3, 300, 3000]),
    seed=st.integers(0, 2**16),
)
def test_norm_proofs_are_complete_on_random_shapes(tokens, d, before, after, scale, seed):
    layers = [plain(d, d, before, seed + 9)] if before else []
    layers.append(norm_layer(d, seed))
    if after:
        layers.append(plain(d, d, "identity", seed + 3, residual=True, skip=1))
    committed = commit_shard(ProvableMlp(layers))
    x = make_input(tokens, d, seed=seed + 1, vmax=scale)
    y = committed.forward_fixed(x)
    proof = ShardProof.from_bytes(prove(committed, x, y, BINDING).to_bytes())
    verify(committed.commitment, x, y, proof, BINDING)


def _cheat(monkeypatch, committed, x, change, must_differ=True):
    """Prove with `rmsnorm_fixed` replaced by `change(honest)` in both the trace and the
    prover (and the prover's own range check off): its output, trace and proof agree."""
    honest = fixed_mod.rmsnorm_fixed

    def cheat(a, gain, f, eps=fixed_mod.RMS_EPS_DEFAULT):
        return change(honest(a, gain, f, eps), a, gain, f)

    monkeypatch.setattr(fixed_mod, "rmsnorm_fixed", cheat)
    monkeypatch.setattr(rmsnorm_gadget, "rmsnorm_fixed", cheat)
    monkeypatch.setattr(rmsnorm_gadget, "_check_rms_ranges", lambda *a: None)
    y = committed.forward_fixed(x)
    proof = prove(committed, x, y, BINDING)
    monkeypatch.undo()
    if must_differ:
        assert not np.array_equal(y, committed.forward_fixed(x))
    with pytest.raises(ProofError) as exc:
        verify(committed.commitment, x, y, proof, BINDING)
    return exc.value.check


def _with_r(norm, r, a, gain, f):
    w = a * r[:, None]
    u = w >> f
    v = u * gain.reshape(1, -1)
    return {**norm, "r": r, "w": w, "u": u, "v": v, "y": v >> f}


@pytest.mark.parametrize("delta", [1, -1, 400, -900])
def test_a_wrong_inverse_root_is_caught_by_the_range_checks(norm_committed, monkeypatch, delta):
    """R off by one may leave y unchanged, but the proof still fails: R must be the floor."""
    x = make_input(3, 8, vmax=300)
    def change(n, a, g, f):
        r = n["r"].copy()
        r[0] += delta
        return _with_r(n, r, a, g, f)

    check = _cheat(monkeypatch, norm_committed, x, change, must_differ=abs(delta) > 1)
    assert check.startswith("layer1/")


def test_a_wrong_sum_of_squares_is_caught(norm_committed, monkeypatch):
    """S + 5000 with R consistent with it: the range checks hold, the sum of squares not."""
    x = make_input(3, 8, vmax=300)

    def change(n, a, g, f):
        _e, c = rms_constants(a.shape[1], f)
        s = n["s"] + 5000
        r = np.array([isqrt(c // int(v)) for v in s])
        return {**_with_r(n, r, a, g, f), "s": s}

    check = _cheat(monkeypatch, norm_committed, x, change)
    assert check.startswith("layer1/")


def test_a_wrong_gain_or_output_is_caught(norm_committed, monkeypatch):
    x = make_input(2, 8, vmax=300)
    _cheat(monkeypatch, norm_committed, x,
           lambda n, a, g, f: rmsnorm_fixed(a, g + 3, f))
    check = _cheat(monkeypatch, norm_committed, x,
                   lambda n, a, g, f: {**n, "y": n["y"] + (np.arange(n["y"].size) == 5).reshape(
                       n["y"].shape)})
    assert check.startswith("layer1/")


def test_the_manifest_carries_norm_layers_and_refuses_malformed_ones(norm_committed):
    manifest = ModelManifest.from_shards("m", [norm_committed])
    assert [lc.activation for lc in manifest.layers] == ["relu", "rmsnorm"]
    assert ModelManifest.from_bytes(manifest.to_bytes()) == manifest
    entry = manifest.layers[1].to_wire()
    for bad in ({**entry, "b": entry["w"]}, {**entry, "res": True}, {**entry, "d_in": 4},
                {**entry, "w": entry["w"] + entry["w"]}):
        with pytest.raises(ProofFormatError):
            LayerCommitment.from_wire(bad)


def test_the_norm_proof_carries_no_activation_in_the_clear(norm_committed):
    x = make_input(2, 8, vmax=300)
    trace = norm_committed.shard.trace(x)
    blob = prove(norm_committed, x, trace[-1].out, BINDING).to_bytes()
    norm = rmsnorm_fixed(trace[1].a, norm_committed.shard.layers[1].weight, 8)
    values = np.concatenate([trace[1].a.reshape(-1), norm["r"], norm["s"], norm["u"].reshape(-1)])
    assert_values_not_in_proof(blob, values, 16)


@settings(deadline=None, max_examples=30)
@given(st.data())
def test_mutated_norm_proofs_never_verify(norm_committed, data):
    x = make_input(1, 8, vmax=300)
    y = norm_committed.forward_fixed(x)
    assert_mutation_rejected(norm_committed, x, y, BINDING,
                             data.draw(st.integers(0, 1 << 20)), data.draw(st.integers(1, 255)))


@pytest.mark.parametrize("eps", [1e-5, 1e-6, 2.0 ** -30, 1.0])
def test_a_norm_takes_the_checkpoint_eps_and_proves_with_it(eps):
    """E = floor(eps d 2**(2f)): at eps 1e-5 the fixed-point norm tracks float RMSNorm with
    that eps, the manifest carries it, and a proof made with another eps fails."""
    rng = np.random.default_rng(8)
    d = 16
    gain = rng.normal(1, 0.2, (1, d))
    shard = ProvableMlp.from_float([(gain, None, eps)], activations=["rmsnorm"])
    assert shard.layers[0].eps == round(eps * 2 ** 32)
    x = rng.normal(0, 0.02, (3, d))  # small inputs, where eps matters
    got = shard.dequantize(shard.forward_fixed(shard.quantize(x)))
    xq = shard.dequantize(shard.quantize(x))
    ref = xq / np.sqrt((xq ** 2).mean(axis=1, keepdims=True) + eps) * gain
    assert np.abs(got - ref).max() < 0.05 * max(1.0, np.abs(ref).max())
    committed = commit_shard(shard)
    manifest = ModelManifest.from_shards("m", [committed])
    assert ModelManifest.from_bytes(manifest.to_bytes()) == manifest
    assert manifest.layers[0].eps == shard.layers[0].eps
    xi = shard.quantize(x)
    y = committed.forward_fixed(xi)
    proof = prove(committed, xi, y, BINDING)
    verify(committed.commitment, xi, y, proof, BINDING)
    other = dataclasses.replace(committed.commitment, layers=(dataclasses.replace(
        committed.commitment.layers[0], eps=shard.layers[0].eps * 2),))
    _, forged = proof_mod._binding(other, xi, y, BINDING)
    with pytest.raises(ProofError):
        verify(other, xi, y, dataclasses.replace(proof, binding=forged), BINDING)


def test_the_default_eps_keeps_earlier_manifest_bytes_and_others_are_checked(norm_committed):
    entry = norm_committed.commitment.layers[1].to_wire()
    assert "eps" not in entry  # 2**-16, as before eps could be set
    for bad in ({**entry, "eps": 1 << 16}, {**entry, "eps": 3}, {**entry, "eps": 1.5},
                {**entry, "eps": (1 << 32) + 1}, {**norm_committed.commitment.layers[0]
                                                  .to_wire(), "eps": 5000}):
        with pytest.raises(ProofFormatError):
            LayerCommitment.from_wire(bad)
    assert LayerCommitment.from_wire({**entry, "eps": 42950}).eps == 42950
    with pytest.raises(ValueError, match="eps"):
        ProvableMlp.from_float([(np.ones((1, 4)), None, 1e-12)], activations=["rmsnorm"])
    with pytest.raises(ValueError, match="eps belongs"):
        FixedLayer(np.ones((4, 4), dtype=np.int64), None, "identity", eps=5)


def test_dataclass_replace_keeps_the_norm_valid():
    layer = norm_layer(4)
    assert dataclasses.replace(layer, weight=layer.weight + 1).d_in == 4
