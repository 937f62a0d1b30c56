"""Pedersen commitments over BLS12-381 G1: hash-derived generators, encodings, homomorphism."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pinfer.zk.errors import ProofFormatError
from p2pinfer.zk.field import P
from p2pinfer.zk.group import (
    decode_point,
    decode_scalar,
    encode_point,
    encode_scalar,
    pedersen_params,
    scalar,
)

felt = st.integers(min_value=0, max_value=P - 1)


@pytest.fixture(scope="module")
def pp():
    return pedersen_params(8)


def test_generators_are_deterministic_distinct_and_seed_dependent(pp):
    again = pedersen_params(8)
    other = pedersen_params(8, b"another-seed")
    pts = [pp.g, pp.h, *pp.g_vec]
    assert len({encode_point(p) for p in pts}) == len(pts)
    assert [encode_point(p) for p in again.g_vec] == [encode_point(p) for p in pp.g_vec]
    assert encode_point(other.g) != encode_point(pp.g)
    assert all(p.is_in_subgroup() for p in pts)


@settings(deadline=None, max_examples=60)
@given(felt, felt, felt, felt)
def test_commitments_add_homomorphically(pp, a, r, b, s):
    assert pp.commit(a, r) + pp.commit(b, s) == pp.commit((a + b) % P, (r + s) % P)


@settings(deadline=None, max_examples=60)
@given(felt)
def test_fixed_base_product_equals_scalar_multiplication(pp, v):
    assert pp.value_only(v) == pp.g * scalar(v)


@settings(deadline=None, max_examples=60)
@given(st.lists(st.one_of(st.integers(-(2**15), 2**15), st.integers(-(2**40), 2**40)),
                min_size=1, max_size=8), felt)
def test_small_integer_vector_commitment_matches_the_field_one(pp, vals, blind):
    assert pp.commit_small_ints(vals, blind) == pp.commit_vec([v % P for v in vals], blind)


@settings(deadline=None, max_examples=60)
@given(st.lists(st.integers(-(2**20) + 1, 2**20 - 1), min_size=1, max_size=8), felt)
def test_a_bounded_small_integer_commitment_is_the_same_commitment(pp, vals, blind):
    """With a public bound the work follows the bound, not the values; the result is equal."""
    assert pp.commit_small_ints(vals, blind, 20) == pp.commit_vec([v % P for v in vals], blind)
    assert pp.commit_small_ints([0] * len(vals), blind, 20) == pp.commit_vec(
        [0] * len(vals), blind)
    with pytest.raises(ValueError, match="bound"):
        pp.commit_small_ints([*vals[1:], 2**20], blind, 20)


def test_a_bounded_commitment_takes_the_same_additions_for_any_values(pp, monkeypatch):
    """Counted, not timed: the point additions done for all-zero and for large values under
    one bound are the same number (the time then depends on the shape, not the values)."""
    from p2pinfer.zk import group

    counts = []
    real = group.G1Point

    class Counting:
        def __init__(self, point):
            self.point = point

        def __add__(self, other):
            counts[-1] += 1
            return Counting(self.point + (other.point if isinstance(other, Counting) else other))

        def __radd__(self, other):
            return other + self.point

        @staticmethod
        def identity():
            return Counting(real.identity())

    monkeypatch.setattr(group, "G1Point", Counting)
    for vals in ([0] * 8, [2**19 - 1] * 8, list(range(-4, 4))):
        counts.append(0)
        pp.commit_small_ints(vals, 1, 20)
    assert counts[0] == counts[1] == counts[2]


def test_bit_vector_commitment_matches_the_field_one(pp):
    bits = [1, 0, 1, 1, 0, 0, 0, 1]
    assert pp.commit_bits(bits, 5) == pp.commit_vec(bits, 5)


@settings(deadline=None, max_examples=100)
@given(st.binary(min_size=0, max_size=60))
def test_garbage_points_are_rejected_with_a_typed_error(data):
    try:
        p = decode_point(data)
    except ProofFormatError:
        return
    assert encode_point(p) == data and p.is_in_subgroup()


def test_scalar_codec_round_trips_and_rejects_unreduced():
    assert decode_scalar(encode_scalar(P - 1)) == P - 1
    with pytest.raises(ProofFormatError):
        decode_scalar(P.to_bytes(32, "little"))
    with pytest.raises(ProofFormatError):
        decode_scalar(b"\x00" * 31)
