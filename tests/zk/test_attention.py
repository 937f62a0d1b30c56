"""Attention layers: fixed-point causal attention (multi-head, grouped-query, rotary) and its
proof (division by bits, softmax by an exp lookup with a proven row maximum, scores and
rotary positions by sum-checks, the q/k/v projections as three weight parts)."""

from __future__ import annotations

import dataclasses

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import p2pinfer.zk.fixed as fixed_mod
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
from p2pinfer.zk.attention import (
    AttentionShape,
    attention_fixed,
    causal_mask,
    exp_table,
    rope_tables,
    score_shift,
)
from p2pinfer.zk.field import P, mle_eval
from p2pinfer.zk.gadgets import attention as attention_gadget
from p2pinfer.zk.gadgets.attention import causal_mask_mle
from p2pinfer.zk.manifest import LayerCommitment

from .conftest import assert_mutation_rejected, assert_values_not_in_proof

BINDING = ProofBinding(b"attention-task", b"\x5a" * 32)


def float_weights(shape: AttentionShape, seed: int):
    rng = np.random.default_rng(seed)
    d, kv = shape.d, shape.kv_width
    return [rng.normal(0, 1 / np.sqrt(d), (d, w)) for w in (d, kv, kv)]


def attention_shard(shape: AttentionShape, *, before: bool = False, seed: int = 0,
                    bias: bool = False, f: int = 8) -> ProvableMlp:
    """[a linear layer,] attention, the output projection: the attention half of a block."""
    rng = np.random.default_rng(seed + 100)
    d = shape.d
    wq, wk, wv = float_weights(shape, seed)
    b = (lambda w: rng.normal(0, 0.1, w)) if bias else (lambda w: None)
    layers = [(wq, b(d), wk, b(shape.kv_width), wv, b(shape.kv_width), shape),
              (rng.normal(0, 1 / np.sqrt(d), (d, d)), b(d))]
    acts = ["attention", "identity"]
    if before:
        layers.insert(0, (rng.normal(0, 1 / np.sqrt(d), (d, d)), b(d)))
        acts.insert(0, "identity")
    return ProvableMlp.from_float(layers, activations=acts, frac_bits=f)


def inputs(shard: ProvableMlp, tokens: int, seed: int = 1, scale: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return shard.quantize(rng.normal(0, scale, (tokens, shard.d_in)))


def float_attention(x, wq, wk, wv, shape: AttentionShape):
    """The float reference: rotate-half rope, causal softmax, grouped-query heads."""
    t, dh, h = x.shape[0], shape.head_dim, shape.heads
    q = (x @ wq).reshape(t, h, dh)
    k = (x @ wk).reshape(t, shape.kv_heads, dh)
    v = (x @ wv).reshape(t, shape.kv_heads, dh)
    if shape.rope:
        ang = np.arange(t)[:, None] * float(shape.rope) ** (-2 * np.arange(dh // 2) / dh)
        c, s = np.cos(ang)[:, None], np.sin(ang)[:, None]

        def rot(z):
            z1, z2 = z[..., : dh // 2], z[..., dh // 2:]
            return np.concatenate([z1 * c - z2 * s, z2 * c + z1 * s], axis=-1)

        q, k = rot(q), rot(k)
    k, v = np.repeat(k, shape.group, axis=1), np.repeat(v, shape.group, axis=1)
    scores = np.einsum("thc,jhc->thj", q, k) / np.sqrt(dh)
    scores = np.where(causal_mask(t)[:, None, :], scores, -np.inf)
    p = np.exp(scores - scores.max(axis=2, keepdims=True))
    p /= p.sum(axis=2, keepdims=True)
    return np.einsum("thj,jhc->thc", p, v).reshape(t, -1)


# -- the tables ----------------------------------------------------------------------------------
@pytest.mark.parametrize("f", range(1, 11))
def test_the_exp_table_is_the_rounded_exponential(f):
    table = exp_table(f)
    u = np.arange(len(table))
    exact = (1 << f) * np.exp(-u / (1 << f))
    assert np.array_equal(table, np.floor(exact + 0.5).astype(np.int64))
    assert table[0] == 1 << f and table[-1] == 0 and not table.flags.writeable


@pytest.mark.parametrize("theta, dh, f", [(10000, 16, 8), (500000, 8, 10), (10000, 64, 6)])
def test_rope_tables_are_the_rounded_rotations(theta, dh, f):
    cos, sin = rope_tables(theta, dh, 300, f)
    ang = np.arange(300)[:, None] * (theta ** (-2 * np.arange(dh // 2) / dh))
    for table, exact in ((cos, np.cos(ang)), (sin, np.sin(ang))):
        scaled = exact * (1 << f)
        near_tie = np.abs(scaled - np.floor(scaled) - 0.5) < 1e-6  # float64 cannot tell
        assert np.array_equal(table[~near_tie], np.floor(scaled + 0.5)[~near_tie])
    small = rope_tables(theta, dh, 5, f)
    assert np.array_equal(small[0], cos[:5]) and np.array_equal(small[1], sin[:5])


def test_the_causal_mask_extension_is_the_mask():
    import random

    rng = random.Random(0)
    for nt in range(4):
        mask = causal_mask(1 << nt).astype(np.int64).reshape(-1).tolist()
        for _ in range(3):
            t = [rng.randrange(P) for _ in range(nt)]
            j = [rng.randrange(P) for _ in range(nt)]
            assert causal_mask_mle(t, j) == mle_eval(mask, t + j)


# -- the fixed-point forward ---------------------------------------------------------------------
@pytest.mark.parametrize("shape", [AttentionShape(32, 4, 4, 0), AttentionShape(32, 4, 2, 10000),
                                   AttentionShape(16, 2, 1, 500000)])
def test_fixed_point_attention_tracks_float(shape):
    rng = np.random.default_rng(3)
    x = rng.normal(0, 1, (9, shape.d))
    wq, wk, wv = float_weights(shape, 4)
    shard = ProvableMlp.from_float([(wq, None, wk, None, wv, None, shape)],
                                   activations=["attention"])
    got = shard.dequantize(shard.forward_fixed(shard.quantize(x)))
    ref = float_attention(x, wq, wk, wv, shape)
    assert np.abs(got - ref).max() < 0.05
    # each query sees only itself and earlier tokens: a later token changes nothing before it
    x2 = x.copy()
    x2[6] += 1.0
    got2 = shard.dequantize(shard.forward_fixed(shard.quantize(x2)))
    assert np.array_equal(got2[:6], got[:6]) and not np.array_equal(got2[6:], got[6:])


def test_the_forward_is_the_formula():
    shape = AttentionShape(8, 2, 1, 10000)
    shard = attention_shard(shape)
    layer = shard.layers[0]
    x = inputs(shard, 5)
    att = attention_fixed(x, layer.weight, layer.bias, shape, 8)
    shift = score_shift(8, shape.rope)
    mask = causal_mask(5)[:, None, :]
    gap = att["mx"][:, :, None] - att["s"]
    assert (gap[np.broadcast_to(mask, gap.shape)] >= 0).all()
    assert np.array_equal(np.where(mask, gap, 0), np.where(mask, (att["delta"] << shift)
                                                            + att["rem"], 0))
    assert (att["e"][~np.broadcast_to(mask, gap.shape)] == 0).all()
    assert (att["argmax"].sum(axis=2) == 1).all()
    z = att["zsum"][:, :, None]
    o = att["o"].reshape(5, 2, 4)
    assert np.array_equal(att["out"].reshape(5, 2, 4), np.floor((2 * o + z) / (2 * z)))
    r = att["r"].reshape(5, 2, 4)
    assert ((r >= 0) & (r < 2 * z)).all()


def test_a_row_whose_logits_span_more_than_the_table_overflows():
    shape = AttentionShape(8, 1, 1, 0)
    w = np.zeros((8, 24))
    w[0, 0] = w[0, 8] = 1.0  # q = k = x_0, so the score is x_0 squared
    shard = ProvableMlp.from_float([(w[:, :8], None, w[:, 8:16], None, w[:, 16:], None, shape)],
                                   activations=["attention"])
    x = np.zeros((2, 8))
    x[1, 0] = 40.0  # token 1: score 40^2 / sqrt(8) with itself, 0 with token 0
    with pytest.raises(FixedPointOverflow, match="span"):
        shard.forward_fixed(shard.quantize(x))
    x[1, 0] = 10.0
    shard.forward_fixed(shard.quantize(x))


def test_the_tables_do_not_depend_on_the_process_decimal_context():
    """A host that lowered decimal's precision or trapped Inexact derives the same tables."""
    import decimal

    import p2pinfer.zk.attention as attention_mod

    honest = (rope_tables(10000, 16, 64, 10), exp_table(7), tables_mod.silu_table(6))
    saved = (dict(attention_mod._ROPE_TABLES), dict(attention_mod._EXP_TABLES),
             dict(tables_mod._SILU_TABLES))
    try:
        with decimal.localcontext() as ctx:
            ctx.prec = 4
            ctx.traps[decimal.Inexact] = True
            attention_mod._ROPE_TABLES.clear()
            attention_mod._EXP_TABLES.clear()
            tables_mod._SILU_TABLES.clear()
            again = (rope_tables(10000, 16, 64, 10), exp_table(7), tables_mod.silu_table(6))
    finally:
        attention_mod._ROPE_TABLES.update(saved[0])
        attention_mod._EXP_TABLES.update(saved[1])
        tables_mod._SILU_TABLES.update(saved[2])
    for a, b in zip(honest[0], again[0]):
        assert np.array_equal(a, b)
    assert np.array_equal(honest[1], again[1]) and np.array_equal(honest[2], again[2])


def test_padding_rows_attend_to_themselves_so_they_never_overflow():
    """A padding row (x = 0, so q = b_q) would see every live key with a wide logit span; it
    attends to itself only, so 3 live tokens prove as well as 4."""
    d, f = 8, 8
    w = np.zeros((d, 3 * d), dtype=np.int64)
    b = np.zeros(3 * d, dtype=np.int64)
    w[0, 0], b[0] = -(1 << 12), 1 << 20  # live tokens (x_0 = 1): q = 0; padding: q = 2**12
    w[0, d] = 1 << 12  # k = 16 x_0
    w[1, 2 * d] = 1 << 8  # v = x_1
    committed = commit_shard(ProvableMlp([FixedLayer(w, b, "attention", heads=1, kv_heads=1)]))
    x = np.zeros((3, d), dtype=np.int64)
    x[:, 0], x[:, 1] = 256, [10, 20, 30]
    with pytest.raises(FixedPointOverflow):  # the old padding: every key for the padding row
        attention_fixed(np.vstack([x, np.zeros((1, d), dtype=np.int64)]), w, b,
                        AttentionShape(d, 1, 1, 0), f)
    y = committed.forward_fixed(x)
    verify(committed.commitment, x, y, prove(committed, x, y, BINDING), BINDING)


def test_attention_layers_check_their_shape():
    d = 8
    w = np.zeros((d, 3 * d), dtype=np.int64)
    FixedLayer(w, None, "attention", heads=2, kv_heads=2)
    for kw, msg in (({"heads": 3, "kv_heads": 1}, "powers of two"),
                    ({"heads": 2, "kv_heads": 4}, "dividing"),
                    ({"heads": 16, "kv_heads": 16}, "heads <= d"),
                    ({"heads": 2, "kv_heads": 2, "rope": 1}, "rope"),
                    ({"heads": 8, "kv_heads": 8, "rope": 10000}, "width 2")):
        with pytest.raises(ValueError, match=msg):
            FixedLayer(w, None, "attention", **kw)
    with pytest.raises(ValueError, match="W_q"):
        FixedLayer(np.zeros((d, 2 * d), dtype=np.int64), None, "attention", heads=2, kv_heads=2)
    with pytest.raises(ValueError, match="residual"):
        FixedLayer(w, None, "attention", True, heads=2, kv_heads=2)
    with pytest.raises(ValueError, match="belong to attention"):
        FixedLayer(np.zeros((d, d), dtype=np.int64), None, "identity", heads=2)
    shape = AttentionShape(8, 2, 1, 0)
    wq, wk, wv = float_weights(shape, 0)
    with pytest.raises(ValueError, match="shapes"):
        ProvableMlp.from_float([(wq, None, wq, None, wv, None, shape)],
                               activations=["attention"])
    with pytest.raises(ValueError, match="AttentionShape"):
        ProvableMlp.from_float([(wq, None, wk, None, wv, None)], activations=["attention"])


# -- proofs --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def att_committed():
    # a layer before the attention, so its input is committed, not the public x
    return commit_shard(attention_shard(AttentionShape(8, 2, 1, 10000), before=True, bias=True))


@pytest.fixture(scope="module")
def att_last():
    """The attention layer last (its output is the shard's: claims on live tokens only)."""
    shard = attention_shard(AttentionShape(8, 2, 2, 10000), before=True, bias=True, seed=5)
    return commit_shard(ProvableMlp(shard.layers[:2]))


@settings(deadline=None, max_examples=10, suppress_health_check=[HealthCheck.too_slow])
@given(
    tokens=st.integers(1, 6),
    dims=st.sampled_from([(4, 1, 1), (8, 2, 2), (8, 4, 2), (16, 2, 1), (16, 4, 4)]),
    rope=st.sampled_from([0, 10000]),
    before=st.booleans(),
    bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_attention_proofs_are_complete_on_random_shapes(tokens, dims, rope, before, bias, seed):
    d, heads, kv = dims
    shard = attention_shard(AttentionShape(d, heads, kv, rope), before=before, seed=seed,
                            bias=bias)
    committed = commit_shard(shard)
    x = inputs(shard, tokens, seed=seed + 1)
    y = committed.forward_fixed(x)
    proof = ShardProof.from_bytes(prove(committed, x, y, BINDING).to_bytes())
    verify(committed.commitment, x, y, proof, BINDING)


def _recompute(att: dict, e: np.ndarray, shape: AttentionShape) -> dict:
    """The values after e (Z, O, out, r) for a cheating e."""
    t = e.shape[0]
    vh = np.repeat(att["v"].reshape(t, shape.kv_heads, -1), shape.group, axis=1)
    z = e.sum(axis=2)
    o = np.einsum("thj,jhc->thc", e, vh)
    out = (2 * o + z[:, :, None]) // (2 * z[:, :, None])
    r = 2 * o + z[:, :, None] - 2 * z[:, :, None] * out
    return {**att, "e": e, "zsum": z, "o": o.reshape(t, -1), "out": out.reshape(t, -1),
            "r": r.reshape(t, -1)}


def _cheat(monkeypatch, committed, x, change, must_differ=True):
    """Prove with `attention_fixed` replaced by `change(honest, shape, f)` in both the trace
    and the prover: its output, trace and proof agree with each other, not with the model."""
    honest = fixed_mod.attention_fixed

    def cheat(a, weight, bias, shape, f, live=None):
        return change(honest(a, weight, bias, shape, f, live), shape, f)

    monkeypatch.setattr(fixed_mod, "attention_fixed", cheat)
    monkeypatch.setattr(attention_gadget, "attention_fixed", cheat)
    y = committed.forward_fixed(x)
    proof = prove(committed, x, y, BINDING)
    monkeypatch.undo()
    if must_differ:
        assert not np.array_equal(y, committed.forward_fixed(x))
    with pytest.raises(ProofError) as exc:
        verify(committed.commitment, x, y, proof, BINDING)
    return exc.value.check


@pytest.mark.parametrize("units", [1, 1200])
def test_a_shift_above_the_row_maximum_is_caught(att_committed, monkeypatch, units):
    """M some logit steps high: every gap larger, all keys still in the table, e consistent
    (a shift of one step may leave the output as it was); the argmax term finds no score at
    the shift."""
    x = inputs(att_committed.shard, 4)

    def change(att, shape, f):
        table = exp_table(f)
        delta = att["delta"].copy()
        mask = np.broadcast_to(causal_mask(4)[:, None, :], delta.shape)
        delta[2, 1][mask[2, 1]] += units
        mx = att["mx"].copy()
        mx[2, 1] += units << score_shift(f, shape.rope)
        return _recompute({**att, "mx": mx, "delta": delta}, table[delta], shape)

    check = _cheat(monkeypatch, att_committed, x, change, must_differ=units > 1)
    assert check.startswith("layer1/softmax")


def test_an_argmax_above_the_diagonal_is_caught(att_committed, monkeypatch):
    """Row 0 claims its maximum at j = 3, a masked score it made equal to its shift."""
    x = inputs(att_committed.shard, 4)

    def change(att, shape, f):
        argmax = att["argmax"].copy()
        argmax[0, 0] = 0
        argmax[0, 0, 3] = 1
        s = att["s"].copy()
        s[0, 0, 3] = att["mx"][0, 0]
        return {**att, "argmax": argmax, "s": s}

    check = _cheat(monkeypatch, att_committed, x, change, must_differ=False)
    assert check.startswith("layer1/")


def test_weight_above_the_diagonal_is_caught(att_last, monkeypatch):
    """Token 0 also attends to token 2 (a valid table pair, e = E(0))."""
    x = inputs(att_last.shard, 4)

    def change(att, shape, f):
        delta, e = att["delta"].copy(), att["e"].copy()
        delta[0, :, 2], e[0, :, 2] = 0, 1 << f
        return _recompute({**att, "delta": delta}, e, shape)

    assert _cheat(monkeypatch, att_last, x, change).startswith("layer1/")


def test_a_value_outside_the_exp_table_is_caught(att_last, monkeypatch):
    x = inputs(att_last.shard, 3)

    def change(att, shape, f):
        e = att["e"].copy()
        e[1, 0, 0] += 3
        return _recompute(att, e, shape)

    assert _cheat(monkeypatch, att_last, x, change).startswith("layer1/")


@pytest.mark.parametrize("offset", [1, -1])
def test_a_wrongly_rounded_division_is_caught(att_last, monkeypatch, offset):
    """out off by one with the remainder that keeps 2 O + Z = 2 out Z + r: r leaves [0, 2Z)."""
    x = inputs(att_last.shard, 3)

    def change(att, shape, f):
        out, r = att["out"].copy(), att["r"].copy()
        z = np.repeat(att["zsum"], shape.head_dim, axis=1)
        out[1, 2] += offset
        r[1, 2] -= 2 * z[1, 2] * offset
        return {**att, "out": out, "r": r}

    assert _cheat(monkeypatch, att_last, x, change).startswith("layer1/division")


def test_other_rotary_positions_are_caught(att_last, monkeypatch):
    """The prover rotates with theta 2 instead of the manifest's 10000."""
    x = inputs(att_last.shard, 4)
    honest = fixed_mod.attention_fixed

    def other_theta(a, weight, bias, shape, f, live=None):
        return honest(a, weight, bias, dataclasses.replace(shape, rope=2), f, live)

    monkeypatch.setattr(fixed_mod, "attention_fixed", other_theta)
    monkeypatch.setattr(attention_gadget, "attention_fixed", other_theta)
    y = att_last.forward_fixed(x)
    proof = prove(att_last, x, y, BINDING)
    monkeypatch.undo()
    assert not np.array_equal(y, att_last.forward_fixed(x))
    with pytest.raises(ProofError) as exc:
        verify(att_last.commitment, x, y, proof, BINDING)
    assert exc.value.check.startswith("layer1/")


def test_another_query_weight_is_caught(att_committed):
    """A prover holding W_q with one weight changed proves under its own commitment: the
    proof does not verify against the model's."""
    layers = list(att_committed.shard.layers)
    w = layers[1].weight.copy()
    w[3, 1] += 5
    layers[1] = dataclasses.replace(layers[1], weight=w)
    other = commit_shard(ProvableMlp(layers))
    x = inputs(att_committed.shard, 3)
    y = other.forward_fixed(x)
    assert not np.array_equal(y, att_committed.forward_fixed(x))
    with pytest.raises(ProofError):
        verify(att_committed.commitment, x, y, prove(other, x, y, BINDING), BINDING)


def test_the_attention_proof_carries_no_activation_in_the_clear(att_committed):
    x = inputs(att_committed.shard, 3)
    trace = att_committed.shard.trace(x)
    blob = prove(att_committed, x, trace[-1].out, BINDING).to_bytes()
    layer = att_committed.shard.layers[1]
    att = attention_fixed(trace[1].a, layer.weight, layer.bias,
                          fixed_mod.attention_shape(layer), 8)
    values = np.concatenate([att[k].reshape(-1) for k in ("q", "k", "v", "s", "mx", "o")])
    assert_values_not_in_proof(blob, values, 24)
    assert_values_not_in_proof(blob, layer.weight, 24)  # W_q, W_k, W_v


@settings(deadline=None, max_examples=30)
@given(st.data())
def test_mutated_attention_proofs_never_verify(att_committed, data):
    x = inputs(att_committed.shard, 2)
    y = att_committed.forward_fixed(x)
    assert_mutation_rejected(att_committed, x, y, BINDING,
                             data.draw(st.integers(0, 1 << 20)), data.draw(st.integers(1, 255)))


# -- the manifest --------------------------------------------------------------------------------
def test_the_manifest_carries_attention_layers_at_version_3(att_committed):
    manifest = ModelManifest.from_shards("m", [att_committed])
    assert [lc.activation for lc in manifest.layers] == ["identity", "attention", "identity"]
    assert (manifest.layers[1].heads, manifest.layers[1].kv_heads,
            manifest.layers[1].rope) == (2, 1, 10000)
    assert ModelManifest.from_bytes(manifest.to_bytes()) == manifest
    body = msgpack.unpackb(manifest.to_bytes())
    assert body["v"] == 3
    assert "heads" not in body["layers"][0]  # only attention layers carry a shape
    for wrong in (1, 2):
        with pytest.raises(ProofFormatError, match="version 3"):
            ModelManifest.from_bytes(msgpack.packb({**body, "v": wrong}))


def test_malformed_attention_commitments_are_refused(att_committed):
    entry = att_committed.commitment.layers[1].to_wire()
    assert LayerCommitment.from_wire(entry) == att_committed.commitment.layers[1]
    plain = att_committed.commitment.layers[0].to_wire()
    for bad in ({**entry, "heads": 3}, {**entry, "kv_heads": 4}, {**entry, "rope": -1},
                {**entry, "rope": True}, {**entry, "res": True}, {**entry, "d_out": 4},
                {k: v for k, v in entry.items() if k != "kv_heads"},
                {**entry, "w": entry["w"][:-1]}, {**entry, "b": entry["b"] + entry["b"]},
                {**plain, "heads": 2}):
        with pytest.raises(ProofFormatError):
            LayerCommitment.from_wire(bad)


def test_a_verifier_refuses_an_attention_commitment_reshaped_in_code(att_committed):
    """Built in code rather than decoded: another head count fails with a typed error."""
    x = inputs(att_committed.shard, 2)
    y = att_committed.forward_fixed(x)
    proof = prove(att_committed, x, y, BINDING)
    c = att_committed.commitment
    for change in ({"heads": 1, "kv_heads": 1}, {"rope": 0}, {"heads": 3}):
        bad = dataclasses.replace(c, layers=(c.layers[0],
                                             dataclasses.replace(c.layers[1], **change),
                                             c.layers[2]))
        _, forged = attention_proof_binding(bad, x, y)
        with pytest.raises(ProofError):
            verify(bad, x, y, dataclasses.replace(proof, binding=forged), BINDING)


@pytest.mark.parametrize("change", [{"heads": 0}, {"heads": "2"}, {"heads": 2.0},
                                    {"heads": np.int64(2)}, {"kv_heads": 3}, {"rope": 2.5},
                                    {"d_in": 8.0}, {"activation": "softmax"}])
def test_malformed_commitments_built_in_code_are_typed_errors(att_committed, change):
    x = inputs(att_committed.shard, 2)
    y = att_committed.forward_fixed(x)
    proof = prove(att_committed, x, y, BINDING)
    c = att_committed.commitment
    bad = dataclasses.replace(c, layers=(c.layers[0], dataclasses.replace(c.layers[1], **change),
                                         c.layers[2]))
    with pytest.raises(ProofError):
        verify(bad, x, y, proof, BINDING)
    with pytest.raises(ProofError):
        verify(dataclasses.replace(c, frac_bits=8.0), x, y, proof, BINDING)


def attention_proof_binding(commitment, x, y):
    from p2pinfer.zk.proof import _binding

    return _binding(commitment, x, y, BINDING)
