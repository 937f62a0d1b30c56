"""Signed fingerprint claims and tallies: signatures, canonical encoding, bounded decoding."""

from __future__ import annotations

import dataclasses

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pinfer.consensus import (
    FingerprintContext,
    MalformedVoteMessage,
    SignatureInvalid,
    UnknownPeer,
    decode_claim,
    decode_tally,
    fingerprint,
    sign_claim,
    sign_tally,
)
from p2pinfer.errors import UnsupportedVersion, WireError
from tests.consensus.conftest import make_peer
from tests.consensus.replicas import CONTEXT, activation, honest_claim


def test_claim_round_trips_and_verifies(peers, keys):
    claim = honest_claim(peers[0], 3)
    decoded = decode_claim(claim.encode())
    assert decoded == claim
    decoded.verify(keys)


def test_claim_signature_covers_every_field(peers, keys):
    claim = honest_claim(peers[0], 3)
    other_fp = fingerprint(activation(7), CONTEXT)
    for change in [{"network_id": "mainnet"}, {"task_id": b"task-0002"}, {"stage": 2},
                   {"step": 6}, {"replicas": 5}, {"replica": peers[1].peer_id},
                   {"fingerprint": other_fp}]:
        forged = dataclasses.replace(claim, **change)
        with pytest.raises((SignatureInvalid, UnknownPeer)):
            forged.verify(keys | {peers[1].peer_id: peers[0].key.public_key()}
                          if "replica" in change else keys)


def test_claim_by_unknown_peer_is_refused(peers):
    with pytest.raises(UnknownPeer):
        honest_claim(peers[0], 3).verify({})


def test_claim_with_flipped_signature_bit_is_refused(peers, keys):
    claim = honest_claim(peers[0], 3)
    sig = bytearray(claim.signature)
    sig[10] ^= 1
    with pytest.raises(SignatureInvalid):
        dataclasses.replace(claim, signature=bytes(sig)).verify(keys)


def test_non_canonical_claim_encoding_is_refused(peers):
    body = msgpack.unpackb(honest_claim(peers[0], 3).encode(), raw=False)
    reordered = {"t": body["t"], **{k: v for k, v in body.items() if k != "t"}}
    with pytest.raises(MalformedVoteMessage):
        decode_claim(msgpack.packb(reordered, use_bin_type=True))


def test_claim_of_another_version_is_unsupported(peers):
    body = msgpack.unpackb(honest_claim(peers[0], 3).encode(), raw=False)
    body["v"] = 2
    with pytest.raises(UnsupportedVersion):
        decode_claim(msgpack.packb(body, use_bin_type=True))


@pytest.mark.parametrize(("field", "value"), [
    ("t", "tally"), ("net", ""), ("net", "x" * 65), ("task", b""), ("task", "text"),
    ("stage", -1), ("stage", True), ("step", 1.5), ("m", 0), ("m", 17), ("replica", ""),
    ("replica", "peer\n"), ("sig", b"\x00" * 63), ("fp", []),
])
def test_claim_with_bad_field_is_refused(peers, field, value):
    body = msgpack.unpackb(honest_claim(peers[0], 3).encode(), raw=False)
    body[field] = value
    with pytest.raises(MalformedVoteMessage):
        decode_claim(msgpack.packb(body, use_bin_type=True))


@pytest.mark.parametrize(("field", "value"), [
    ("scheme", "rp-v2"), ("dtype", "float16"), ("shape", [4]), ("shape", [4, 0]),
    ("shape", [4, 33]), ("hidden", 0), ("data", b"\x00" * 3),
    ("data", b"\x00\x00\xc0\x7f" * 128),
])
def test_claim_with_bad_fingerprint_is_refused(peers, field, value):
    body = msgpack.unpackb(honest_claim(peers[0], 3).encode(), raw=False)
    body["fp"][field] = value
    with pytest.raises(MalformedVoteMessage):
        decode_claim(msgpack.packb(body, use_bin_type=True))


def test_oversized_claim_is_refused_before_unpacking():
    with pytest.raises(MalformedVoteMessage, match="limit"):
        decode_claim(b"\x80" * (2 << 20))


def test_claim_with_extra_field_is_refused(peers):
    body = msgpack.unpackb(honest_claim(peers[0], 3).encode(), raw=False)
    body["extra"] = 1
    with pytest.raises(MalformedVoteMessage):
        decode_claim(msgpack.packb(body, use_bin_type=True))


def test_signing_refuses_out_of_range_context(peers):
    fp = fingerprint(activation(), CONTEXT)
    with pytest.raises(MalformedVoteMessage):
        sign_claim(peers[0].key, peers[0].peer_id, FingerprintContext("", b"t", 0, 0), 3, fp)
    with pytest.raises(MalformedVoteMessage):
        sign_claim(peers[0].key, peers[0].peer_id, CONTEXT, 0, fp)


def _tally(peers, **overrides):
    args = {"key": peers[0].key, "reporter": peers[0].peer_id, "context": CONTEXT, "replicas": 3,
                "majority_digest": b"\x11" * 32, "agreeing": ("peer-2", "peer-1"),
                "dissenting": ("peer-3",)}
    args.update(overrides)
    return sign_tally(**args)


def test_tally_round_trips_and_verifies(peers, keys):
    tally = _tally(peers)
    assert tally.agreeing == ("peer-1", "peer-2")
    decoded = decode_tally(tally.encode())
    assert decoded == tally
    decoded.verify(keys)


def test_tally_signature_covers_the_outcome(peers, keys):
    forged = dataclasses.replace(_tally(peers), dissenting=(), missing=("peer-3",))
    with pytest.raises(SignatureInvalid):
        forged.verify(keys)


@pytest.mark.parametrize("overrides", [
    {"agreeing": ("peer-1",), "dissenting": ("peer-2", "peer-3")},
    {"agreeing": ("peer-1", "peer-2"), "dissenting": ("peer-2",)},
    {"agreeing": ("peer-1", "peer-2"), "dissenting": ()},
    {"majority_digest": b"\x11" * 31},
])
def test_inconsistent_tally_is_refused(peers, overrides):
    with pytest.raises(MalformedVoteMessage):
        _tally(peers, **overrides)


def test_unsorted_tally_encoding_is_refused(peers):
    body = msgpack.unpackb(_tally(peers).encode(), raw=False)
    body["agree"] = ["peer-2", "peer-1"]
    with pytest.raises(MalformedVoteMessage):
        decode_tally(msgpack.packb(body, use_bin_type=True))


@settings(deadline=None, max_examples=300)
@given(st.binary(max_size=600))
def test_decoders_raise_only_wire_errors_on_random_bytes(data):
    for decode in (decode_claim, decode_tally):
        try:
            decode(data)
        except WireError:
            pass


_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats() | st.text(max_size=8)
    | st.binary(max_size=16),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=12,
)


_CLAIM = honest_claim(make_peer(0), 3).encode()


@settings(deadline=None, max_examples=150)
@given(st.sampled_from(["v", "t", "net", "task", "stage", "step", "m", "replica", "fp", "sig"]),
       _values)
def test_claim_decoder_refuses_any_single_field_substitution_with_a_typed_error(
        field, value):
    body = msgpack.unpackb(_CLAIM, raw=False)
    body[field] = value
    data = msgpack.packb(body, use_bin_type=True)
    try:
        decoded = decode_claim(data)
    except WireError:
        return
    assert decoded.encode() == data


@settings(deadline=None, max_examples=50)
@given(st.integers(1, 16), st.integers(0, 2**16 - 1), st.integers(0, 2**32 - 1),
       st.binary(min_size=1, max_size=64), st.text(min_size=1, max_size=64))
def test_any_valid_claim_round_trips(m, stage, step, task, network):
    peer = make_peer(1)
    context = FingerprintContext(network, task, stage, step)
    claim = sign_claim(peer.key, peer.peer_id, context, m, fingerprint(activation(), context))
    assert decode_claim(claim.encode()) == claim
