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
