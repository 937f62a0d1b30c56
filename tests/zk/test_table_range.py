"""Lookup tables of a wider range (a layer's manifest `range`): GELU and SiLU tables covering
real inputs in [-2**(R-1), 2**(R-1)) for R up to 9, so real pre-activations beyond +-32 are
looked up, proven and bound to the manifest (version 4)."""

from __future__ import annotations

import dataclasses

import msgpack
import numpy as np
import pytest

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
from p2pinfer.zk.manifest import MANIFEST_VERSION_RANGE, LayerCommitment
from p2pinfer.zk.tables import LOOKUP_RANGE_BITS, activation_table, gelu_table, silu_table

from .conftest import make_input

BINDING = ProofBinding(b"range-task", b"\x39" * 32)
F = 8


def wide_gated(range_bits, seed=0):
    """A SwiGLU layer 8 -> 8 whose gate inputs reach about +-42 (real) on `big_input`."""
    rng = np.random.default_rng(seed)
    w = rng.integers(-60, 60, size=(8, 16))
    w[:, 8:] *= 40  # the gate half: large pre-activations
    return FixedLayer(w, rng.integers(-5000, 5000, size=16), "swiglu", False,
                      lookup_range=range_bits)


def big_input():
    return make_input(3, 8, seed=3, vmax=600)


@pytest.fixture(scope="module")
def wide_committed():
    return commit_shard(ProvableMlp([wide_gated(8)], F), model_id="wide")


@pytest.mark.parametrize("act,table", [("silu", silu_table), ("gelu", gelu_table)])
@pytest.mark.parametrize("f", [4, 8])
def test_a_wider_table_extends_the_narrow_one_and_is_the_activation_rounded(act, table, f):
    narrow, wide = table(f), table(f, 8)
    assert len(wide) == 1 << (f + 8) and not wide.flags.writeable
    assert activation_table(act, f, 8) is wide
    mid, quarter = len(wide) // 2, len(narrow) // 2
    assert np.array_equal(wide[mid - quarter: mid + quarter], narrow)
    t = np.arange(-mid, mid)
    x = t / (1 << f)
    if act == "silu":
        exact = x / (1 + np.exp(-x))
        assert np.array_equal(wide, np.floor(exact * (1 << f) + 0.5).astype(np.int64))
    outer = np.abs(x) >= 32  # beyond the narrow table: x or 0, exactly
    assert np.array_equal(wide[outer], np.maximum(t[outer], 0))


def test_table_ranges_outside_6_to_9_do_not_exist():
    for bad in (5, 10, 7.0, True):
        with pytest.raises(ValueError, match="range"):
            silu_table(8, bad)
    with pytest.raises(ValueError, match="range"):
        FixedLayer(np.ones((2, 2), dtype=np.int64), None, "silu", lookup_range=10)
    with pytest.raises(ValueError, match="belongs to"):
        FixedLayer(np.ones((2, 2), dtype=np.int64), None, "relu", lookup_range=8)


def test_an_input_beyond_the_narrow_table_overflows_naming_the_layer_and_value():
    narrow = ProvableMlp([wide_gated(LOOKUP_RANGE_BITS)], F)
    with pytest.raises(FixedPointOverflow, match=r"^layer 0 \(swiglu\): a SiLU input is outside "
                                                 r"the table's range .*real \[-32, 32\)\): -?\d"):
        narrow.forward_fixed(big_input())
    wide = ProvableMlp([wide_gated(8)], F)
    assert wide.forward_fixed(big_input()).shape == (3, 8)
    with pytest.raises(FixedPointOverflow, match=r"real \[-128, 128\)"):
        wide.forward_fixed(big_input() * 4)


def test_a_wide_gate_proves_and_verifies(wide_committed):
    x = big_input()
    q = (x @ wide_committed.shard.layers[0].weight + wide_committed.shard.layers[0].bias) >> F
    assert np.abs(q[:, 8:]).max() >= 32 << F  # the narrow table could not have held it
    y = wide_committed.forward_fixed(x)
    proof = ShardProof.from_bytes(prove(wide_committed, x, y, BINDING).to_bytes())
    verify(wide_committed.commitment, x, y, proof, BINDING)


def test_a_wrong_value_beyond_the_narrow_range_is_caught(wide_committed, monkeypatch):
    """The prover says SiLU is 0 at a used key above +32 (a clamp on the wrong side): its trace
    and proof agree with each other but not with the verifier's table."""
    x = big_input()
    layer = wide_committed.shard.layers[0]
    q = ((x @ layer.weight + layer.bias) >> F)[:, 8:].reshape(-1)
    key = int(q.max())
    assert key >= 32 << F
    honest = silu_table(F, 8)
    cheat = honest.copy()
    cheat[key + len(honest) // 2] = 0
    cheat.setflags(write=False)
    monkeypatch.setitem(tables_mod._SILU_TABLES, (F, 8), cheat)
    y = wide_committed.forward_fixed(x)
    proof = prove(wide_committed, x, y, BINDING)
    monkeypatch.setitem(tables_mod._SILU_TABLES, (F, 8), honest)
    assert not np.array_equal(y, wide_committed.forward_fixed(x))
    with pytest.raises(ProofError) as exc:
        verify(wide_committed.commitment, x, y, proof, BINDING)
    assert exc.value.check.startswith("layer0/")


def test_a_proof_against_another_range_does_not_verify(wide_committed):
    """The same weights committed with the narrow table: a proof over the wide table is bound to
    the wide manifest entry, and the narrow entry refuses it."""
    x = make_input(3, 8, seed=5, vmax=60)  # small enough for both tables
    narrow = commit_shard(ProvableMlp([wide_gated(LOOKUP_RANGE_BITS)], F), model_id="wide")
    y = wide_committed.forward_fixed(x)
    assert np.array_equal(y, narrow.forward_fixed(x))
    assert narrow.commitment.digest() != wide_committed.commitment.digest()
    with pytest.raises(ProofError):
        verify(narrow.commitment, x, y, prove(wide_committed, x, y, BINDING), BINDING)
    with pytest.raises(ProofError):
        verify(wide_committed.commitment, x, y, prove(narrow, x, y, BINDING), BINDING)


def test_a_manifest_with_a_wide_table_is_version_4_and_round_trips(wide_committed):
    manifest = ModelManifest.from_shards("wide", [wide_committed])
    raw = msgpack.unpackb(manifest.to_bytes())
    assert raw["v"] == MANIFEST_VERSION_RANGE == 4
    assert raw["layers"][0]["range"] == 8
    again = ModelManifest.from_bytes(manifest.to_bytes())
    assert again == manifest and again.layers[0].lookup_range == 8
    narrow = commit_shard(ProvableMlp([wide_gated(LOOKUP_RANGE_BITS)], F), model_id="wide")
    plain = msgpack.unpackb(ModelManifest.from_shards("wide", [narrow]).to_bytes())
    assert plain["v"] == 1 and "range" not in plain["layers"][0]


@pytest.mark.parametrize("change", ["version3", "default", "too-wide", "not-int", "on-relu"])
def test_a_malformed_range_is_refused(wide_committed, change):
    manifest = ModelManifest.from_shards("wide", [wide_committed])
    raw = msgpack.unpackb(manifest.to_bytes())
    layer = raw["layers"][0]
    if change == "version3":  # a verifier of an earlier version would misread the table
        raw["v"] = 3
    elif change == "default":
        layer["range"] = LOOKUP_RANGE_BITS
    elif change == "too-wide":
        layer["range"] = 10
    elif change == "not-int":
        layer["range"] = 8.0
    else:
        relu = dataclasses.replace(manifest.layers[0], activation="relu", d_out=16)
        wire = relu.to_wire()
        wire["range"] = 8
        wire["w"] = layer["w"]
        raw["layers"][0] = wire
    with pytest.raises(ProofFormatError):
        ModelManifest.from_bytes(msgpack.packb(raw))
    with pytest.raises(ProofFormatError):
        LayerCommitment.from_wire(raw["layers"][0]) if change != "version3" else (
            ModelManifest.from_bytes(msgpack.packb(raw)))


def test_a_gated_product_beyond_32_bits_names_the_layer_and_the_value():
    up = np.zeros((2, 4), dtype=np.int64)
    up[0, :2] = 1024  # f = 10: up = x, gate = x; at x = 60 the product is 3600, above 2048
    up[0, 2:] = 1024
    layer = FixedLayer(up, None, "swiglu", lookup_range=8)
    x = np.array([[60 * 1024, 0]])
    with pytest.raises(FixedPointOverflow, match=r"^layer 0 \(swiglu\): a gated product .*"
                                                 r"\(real 3600, above 2048"):
        ProvableMlp([layer], 10).forward_fixed(x)
