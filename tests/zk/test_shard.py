"""Fixed-point shards, weight commitments, the on-disk cache and the model manifest."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pinfer.zk import (
    CommitmentMismatch,
    FixedLayer,
    FixedPointOverflow,
    ModelManifest,
    ProofFormatError,
    ProvableMlp,
    commit_shard,
)

from .conftest import make_input, make_shard


def test_fixed_point_forward_is_deterministic_and_integer():
    shard = make_shard([8, 16, 8], residual=[False, False])
    x = make_input(4, 8)
    y1, y2 = shard.forward_fixed(x), shard.forward_fixed(x.copy())
    assert y1.dtype == np.int64 and np.array_equal(y1, y2)


def test_fixed_point_layer_matches_the_integer_definition():
    shard = make_shard([4, 4], residual=[True])
    x = make_input(2, 4)
    layer = shard.layers[0]
    z = x @ layer.weight + layer.bias
    assert np.array_equal(shard.forward_fixed(x), np.maximum(z >> 8, 0) + x)


def test_fixed_point_tracks_the_float_model():
    rng = np.random.default_rng(3)
    w1, b1 = rng.normal(0, 0.3, (16, 16)), rng.normal(0, 0.1, 16)
    w2, b2 = rng.normal(0, 0.3, (16, 16)), rng.normal(0, 0.1, 16)
    shard = ProvableMlp.from_float([(w1, b1), (w2, b2)], activations=["relu", "identity"])
    x = rng.normal(0, 1, (4, 16))
    ref = np.maximum(x @ w1 + b1, 0) @ w2 + b2
    got = shard.dequantize(shard.forward_fixed(shard.quantize(x)))
    assert np.abs(got - ref).max() < 0.05


@settings(deadline=None, max_examples=100)
@given(st.integers(0, 2**31), st.sampled_from([1, 2, 4]), st.sampled_from([2, 4, 8]))
def test_forward_never_leaves_the_provable_range_silently(seed, tokens, width):
    rng = np.random.default_rng(seed)
    shard = ProvableMlp([FixedLayer(rng.integers(-2**14, 2**14, (width, width)), None)])
    x = rng.integers(-2**23, 2**23, (tokens, width))
    try:
        y = shard.forward_fixed(x)
    except FixedPointOverflow:
        return
    assert np.abs(y).max(initial=0) < 2**23


def test_overflowing_inputs_and_weights_are_refused():
    with pytest.raises(FixedPointOverflow):
        FixedLayer(np.full((2, 2), 2**15), None)
    shard = make_shard([2, 2])
    with pytest.raises(FixedPointOverflow):
        shard.forward_fixed(np.full((1, 2), 2**24))


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError):
        FixedLayer(np.zeros((3, 4), dtype=np.int64), None)
    with pytest.raises(ValueError):
        ProvableMlp([FixedLayer(np.zeros((2, 4), dtype=np.int64), None),
                     FixedLayer(np.zeros((2, 2), dtype=np.int64), None)])
    with pytest.raises(ValueError):
        make_shard([2, 2]).forward_fixed(np.zeros((3, 4), dtype=np.int64))
    with pytest.raises(ValueError):
        make_shard([2, 2]).forward_fixed(np.zeros((1, 2), dtype=np.float32))


def test_commitment_cache_is_reused_private_and_keyed_by_the_weights(tmp_path):
    shard = make_shard([4, 4])
    first = commit_shard(shard, cache_dir=tmp_path)
    files = list(tmp_path.iterdir())
    assert len(files) == 1
    assert stat.S_IMODE(os.stat(files[0]).st_mode) == 0o600
    assert b"pickle" not in files[0].read_bytes() and files[0].read_bytes()[:1] != b"\x80"
    again = commit_shard(shard, cache_dir=tmp_path)
    assert again.commitment == first.commitment
    assert again.weight_blinds == first.weight_blinds
    other = commit_shard(make_shard([4, 4], seed=9), cache_dir=tmp_path)
    assert other.commitment != first.commitment
    assert len(list(tmp_path.iterdir())) == 2


def test_a_cache_file_for_other_weights_is_refused(tmp_path):
    a, b = make_shard([4, 4]), make_shard([4, 4], seed=5)
    commit_shard(a, cache_dir=tmp_path)
    path_a = next(tmp_path.iterdir())
    commit_shard(b, cache_dir=tmp_path)
    path_b = next(p for p in tmp_path.iterdir() if p != path_a)
    path_b.write_bytes(path_a.read_bytes())
    with pytest.raises(CommitmentMismatch):
        commit_shard(b, cache_dir=tmp_path)


def test_a_corrupt_cache_file_raises_a_typed_error(tmp_path):
    shard = make_shard([4, 4])
    commit_shard(shard, cache_dir=tmp_path)
    path = next(tmp_path.iterdir())
    path.write_bytes(b"\x93garbage")
    with pytest.raises(ProofFormatError):
        commit_shard(shard, cache_dir=tmp_path)


def test_manifest_round_trips_and_its_digest_pins_every_commitment():
    a = commit_shard(make_shard([4, 8]))
    b = commit_shard(make_shard([8, 4], seed=2))
    m = ModelManifest.from_shards("mlp-test", [a, b])
    back = ModelManifest.from_bytes(m.to_bytes())
    assert back == m and back.digest() == m.digest()
    assert m.shard(1, 2).layers == b.commitment.layers
    other = ModelManifest.from_shards("mlp-test", [a, commit_shard(make_shard([8, 4], seed=3))])
    assert other.digest() != m.digest()


@settings(deadline=None, max_examples=150)
@given(st.binary(max_size=200))
def test_manifest_decoder_raises_only_its_typed_error(data):
    try:
        ModelManifest.from_bytes(data)
    except ProofFormatError:
        pass


def test_manifest_decoder_checks_the_size_limit_first():
    m = ModelManifest.from_shards("x", [commit_shard(make_shard([4, 4]))])
    with pytest.raises(ProofFormatError, match="limit"):
        ModelManifest.from_bytes(m.to_bytes(), max_size=100)


def test_binding_a_shard_to_a_foreign_manifest_entry_is_refused():
    a = commit_shard(make_shard([4, 4]))
    b = commit_shard(make_shard([4, 4], seed=4))
    m = ModelManifest.from_shards("x", [b])
    with pytest.raises(CommitmentMismatch):
        a.bind_to(m.shard(0, 1))
    assert a.bind_to(ModelManifest.from_shards("x", [a]).shard(0, 1)).commitment.model_id == "x"


def test_float_widths_that_are_not_powers_of_two_are_padded_exactly():
    rng = np.random.default_rng(5)
    w1, b1 = rng.normal(0, 0.3, (6, 12)), rng.normal(0, 0.1, 12)
    w2, b2 = rng.normal(0, 0.3, (12, 12)), rng.normal(0, 0.1, 12)
    shard = ProvableMlp.from_float([(w1, b1), (w2, b2)], activations=["relu", "identity"],
                                   residual=[False, True], frac_bits=12)
    assert (shard.d_in, shard.layers[0].d_out, shard.d_out) == (8, 16, 16)
    x = rng.normal(0, 1, (3, 6))
    y = shard.forward_fixed(shard.pad_features(shard.quantize(x)))
    assert np.all(y[:, 12:] == 0)
    h = np.maximum(x @ w1 + b1, 0)
    ref = h @ w2 + b2 + h
    assert np.abs(shard.dequantize(shard.live_features(y)) - ref).max() < 0.01
