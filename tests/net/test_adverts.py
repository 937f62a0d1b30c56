"""Signed capability adverts: the spec vector, each validation rule, and the decoder on junk."""

from __future__ import annotations

import dataclasses

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pinfer.identity import NodeIdentity
from p2pinfer.net.adverts import (
    REJECT_REASONS,
    SIGNING_TAG,
    Advert,
    AdvertBadSignature,
    AdvertExpired,
    AdvertForeignNetwork,
    AdvertMalformed,
    AdvertRejected,
    AdvertReplayed,
    AdvertTooLarge,
    AdvertUnsigned,
    AdvertValidator,
    AdvertWrongSigner,
    Hardware,
    decode_advert,
    sign_advert,
)
from tests.spec_vectors import vectors

NET = "p2pinfer-devnet"
T0 = 1767225600000  # 2026-01-01T00:00:00Z in ms
ALICE = NodeIdentity.from_seed(bytes(range(32)))
MALLORY = NodeIdentity.from_seed(bytes(32))


def make_advert(ident: NodeIdentity = ALICE, **over) -> Advert:
    fields = {
        "peer_id": ident.peer_id,
        "network_id": NET,
        "seq": T0,
        "issued_ms": T0,
        "expires_ms": T0 + 60_000,
        "addrs": (f"/ip4/127.0.0.1/tcp/4001/p2p/{ident.peer_id}",),
        "roles": ("stage", "client"),
        "model": "gpt2",
        "spans": ((0, 6),),
        "hardware": Hardware(8, "x86_64", "", 16 << 30),
        "throughput": 42.5,
        "load": 0.25,
        "tee_digest": None,
        "software": "p2pinfer/0.1.0",
    }
    fields.update(over)
    return Advert(**fields)


def signed(ident: NodeIdentity = ALICE, **over) -> bytes:
    return sign_advert(make_advert(ident, **over), ident)


def resign_envelope(body: dict, ident: NodeIdentity, **env) -> bytes:
    raw_body = msgpack.packb(body, use_bin_type=True)
    out = {"v": 1, "t": "advert", "body": raw_body, "sig": ident.sign(SIGNING_TAG + raw_body)}
    out.update(env)
    return msgpack.packb(out, use_bin_type=True)


# -- the spec vector ---------------------------------------------------------------------------


def test_spec_vector_verifies_and_decodes_to_the_documented_fields():
    vec = vectors("adverts.md")
    v = AdvertValidator(NET)
    advert = v.accept(vec["advert"], ALICE.peer_id, now_ms=T0 + 1000)
    assert advert == make_advert()
    assert msgpack.unpackb(vec["advert"])["sig"] == vec["advert-signature"]


def test_signing_the_vector_record_reproduces_the_vector_bytes():
    assert signed() == vectors("adverts.md")["advert"]


def test_precision_is_optional_on_the_wire_and_signed_when_present():
    # the spec vector has none (older peers): it decodes as "not stated"
    assert make_advert().precision == ""
    assert "precision" not in make_advert().body()
    raw = signed(precision="bfloat16")
    assert msgpack.unpackb(msgpack.unpackb(raw)["body"])["precision"] == "bfloat16"
    v = AdvertValidator(NET)
    assert v.accept(raw, ALICE.peer_id, now_ms=T0).precision == "bfloat16"
    env = msgpack.unpackb(raw)
    body = msgpack.unpackb(env["body"])
    body["precision"] = "float32"  # a relay cannot upgrade a peer's stated precision
    env["body"] = msgpack.packb(body, use_bin_type=True)
    with pytest.raises(AdvertBadSignature):
        AdvertValidator(NET).accept(msgpack.packb(env, use_bin_type=True), ALICE.peer_id,
                                    now_ms=T0)


# -- validation rules --------------------------------------------------------------------------


def test_a_fresh_advert_is_accepted_once_and_then_counted_as_duplicate():
    v = AdvertValidator(NET)
    raw = signed()
    assert v.accept(raw, ALICE.peer_id, now_ms=T0) == make_advert()
    assert v.accept(raw, ALICE.peer_id, now_ms=T0) is None
    assert v.counters()["accepted"] == 1 and v.counters()["duplicates"] == 1
    assert sum(v.rejected.values()) == 0


def test_a_newer_sequence_number_replaces_the_advert():
    v = AdvertValidator(NET)
    v.accept(signed(), ALICE.peer_id, now_ms=T0)
    newer = v.accept(signed(seq=T0 + 1, load=0.9), ALICE.peer_id, now_ms=T0)
    assert newer is not None and newer.load == 0.9


@pytest.mark.parametrize(
    ("raw", "origin", "error"),
    [
        (b"\x00" * (16 * 1024 + 1), ALICE.peer_id, AdvertTooLarge),
        (b"\xc1garbage", ALICE.peer_id, AdvertMalformed),
        (msgpack.packb([1, 2, 3]), ALICE.peer_id, AdvertMalformed),
        (
            msgpack.packb({"v": 2, "t": "advert", "body": b"", "sig": b"x" * 64}),
            None,
            AdvertMalformed,
        ),
        (msgpack.packb({"v": 1, "t": "advert", "body": b"\x80"}), None, AdvertUnsigned),
        (msgpack.packb({"v": 1, "t": "advert", "body": b"\x80", "sig": b""}), None, AdvertUnsigned),
        (
            msgpack.packb({"v": 1, "t": "advert", "body": b"\x80", "sig": b"x" * 64}),
            None,
            AdvertMalformed,
        ),
        (signed(network_id="p2pinfer-mainnet"), ALICE.peer_id, AdvertForeignNetwork),
        (signed(), MALLORY.peer_id, AdvertWrongSigner),
        (signed(expires_ms=T0 - 1, issued_ms=T0 - 10), ALICE.peer_id, AdvertExpired),
        (
            signed(issued_ms=T0 + 3_600_000, expires_ms=T0 + 3_600_001),
            ALICE.peer_id,
            AdvertMalformed,
        ),
        (signed(expires_ms=T0 + 7_200_000), ALICE.peer_id, AdvertMalformed),
    ],
    ids=[
        "oversized",
        "not-msgpack",
        "not-a-map",
        "wrong-version",
        "no-signature",
        "empty-signature",
        "empty-record",
        "foreign-network",
        "wrong-signer",
        "expired",
        "issued-in-the-future",
        "lifetime-over-one-hour",
    ],
)
def test_bad_adverts_are_rejected_with_a_typed_error_and_counted(raw, origin, error):
    v = AdvertValidator(NET)
    with pytest.raises(error):
        v.accept(raw, origin, now_ms=T0)
    assert v.rejected[error.reason] == 1
    assert sum(v.rejected.values()) == 1
    assert v.accepted == 0


def test_an_advert_signed_by_another_key_fails_the_signature_check():
    body = make_advert().body()
    raw = resign_envelope(body, MALLORY)  # claims Alice, signed by Mallory
    v = AdvertValidator(NET)
    with pytest.raises(AdvertBadSignature):
        v.accept(raw, None, now_ms=T0)
    assert v.rejected["bad-signature"] == 1


def test_a_tampered_body_fails_the_signature_check():
    env = msgpack.unpackb(signed())
    body = msgpack.unpackb(env["body"])
    body["load"] = 0.0
    env["body"] = msgpack.packb(body, use_bin_type=True)
    with pytest.raises(AdvertBadSignature):
        AdvertValidator(NET).accept(msgpack.packb(env, use_bin_type=True), ALICE.peer_id, now_ms=T0)


def test_an_older_or_equal_sequence_number_is_a_replay():
    v = AdvertValidator(NET)
    v.accept(signed(seq=T0 + 5), ALICE.peer_id, now_ms=T0)
    with pytest.raises(AdvertReplayed):
        v.accept(signed(seq=T0 + 4), ALICE.peer_id, now_ms=T0)
    with pytest.raises(AdvertReplayed):  # same seq, different content
        v.accept(signed(seq=T0 + 5, load=1.0), ALICE.peer_id, now_ms=T0)
    assert v.rejected["replayed"] == 2


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("spans", [[3, 3]]),
        ("spans", [[0, 1, 2]]),
        ("spans", [[True, 2]]),
        ("load", 1.5),
        ("load", float("nan")),
        ("throughput", -1.0),
        ("seq", -1),
        ("seq", "1"),
        ("addrs", ["/ip4/1.2.3.4/tcp/1"] * 17),
        ("addrs", [b"bytes"]),
        ("tee_digest", b"x" * 65),
        ("tee_digest", "hex"),
        ("hardware", {"cpu_count": 1}),
        ("model", "m" * 129),
        ("precision", 32),
        ("precision", "f" * 17),
        ("precision", None),
    ],
)
def test_record_fields_out_of_type_or_bounds_are_malformed(field, value):
    body = make_advert().body()
    body[field] = value
    v = AdvertValidator(NET)
    with pytest.raises(AdvertMalformed):
        v.accept(resign_envelope(body, ALICE), ALICE.peer_id, now_ms=T0)
    assert v.rejected["malformed"] == 1


def test_forgetting_a_peer_allows_its_next_advert_after_a_restart():
    v = AdvertValidator(NET)
    v.accept(signed(seq=T0 + 5), ALICE.peer_id, now_ms=T0)
    v.forget(ALICE.peer_id)
    assert v.accept(signed(seq=T0 + 1), ALICE.peer_id, now_ms=T0) is not None


def test_counters_name_every_reason_even_when_zero():
    assert set(AdvertValidator(NET).counters()["rejected"]) == set(REJECT_REASONS)


def test_only_the_described_peer_may_sign_its_advert():
    with pytest.raises(ValueError):
        sign_advert(make_advert(ALICE), MALLORY)


# -- the decoder on junk -----------------------------------------------------------------------

msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=80),
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=12), kids, max_size=5)
    ),
    max_leaves=20,
)


@settings(deadline=None, max_examples=2000)
@given(st.binary(max_size=600))
def test_random_bytes_never_raise_anything_but_a_rejection(data):
    with pytest.raises(AdvertRejected):
        AdvertValidator(NET).accept(data, ALICE.peer_id, now_ms=T0)


@settings(deadline=None, max_examples=800)
@given(msgpack_values, st.binary(min_size=64, max_size=64))
def test_random_records_in_a_valid_envelope_are_rejected(body, sig):
    env = {"v": 1, "t": "advert", "body": msgpack.packb(body, use_bin_type=True), "sig": sig}
    with pytest.raises(AdvertRejected):
        AdvertValidator(NET).accept(msgpack.packb(env, use_bin_type=True), None, now_ms=T0)


@settings(deadline=None, max_examples=1500)
@given(st.data())
def test_any_single_bit_flip_of_a_valid_advert_is_rejected(data):
    raw = bytearray(signed())
    i = data.draw(st.integers(0, len(raw) - 1))
    raw[i] ^= 1 << data.draw(st.integers(0, 7))
    with pytest.raises(AdvertRejected):
        AdvertValidator(NET).accept(bytes(raw), ALICE.peer_id, now_ms=T0)


@settings(deadline=None, max_examples=300)
@given(
    st.integers(0, 2**62),
    st.lists(st.tuples(st.integers(0, 1000), st.integers(1, 100)), max_size=5),
    st.floats(0, 1),
    st.one_of(st.none(), st.binary(max_size=64)),
)
def test_valid_adverts_round_trip_through_sign_and_decode(seq, spans, load, tee):
    advert = make_advert(
        seq=seq, spans=tuple((a, a + n) for a, n in spans), load=load, tee_digest=tee
    )
    decoded, _, _ = decode_advert(sign_advert(advert, ALICE))
    assert decoded == dataclasses.replace(advert)


def test_a_peer_on_another_network_is_remembered_only_from_its_own_signed_advert():
    v = AdvertValidator(NET)
    with pytest.raises(AdvertForeignNetwork):
        v.accept(signed(network_id="p2pinfer-mainnet"), ALICE.peer_id, now_ms=T0)
    assert v.counters()["foreign_networks"] == {ALICE.peer_id: "p2pinfer-mainnet"}
    # relayed by someone else, or with a broken signature: rejected, and not believed
    v = AdvertValidator(NET)
    with pytest.raises(AdvertForeignNetwork):
        v.accept(signed(network_id="p2pinfer-mainnet"), MALLORY.peer_id, now_ms=T0)
    forged = msgpack.unpackb(signed(network_id="p2pinfer-mainnet"))
    forged["sig"] = bytes(64)
    with pytest.raises(AdvertBadSignature):
        v.accept(msgpack.packb(forged), ALICE.peer_id, now_ms=T0)
    assert v.counters()["foreign_networks"] == {}


def test_weights_digests_round_trip_and_must_match_the_spans():
    d = "sha256:" + "ab" * 32
    v = AdvertValidator(NET)
    got = v.accept(sign_advert(make_advert(spans=((0, 6),), weights=(d,)), ALICE), ALICE.peer_id,
                   now_ms=T0)
    assert got is not None and got.weights == (d,)
    with pytest.raises(AdvertMalformed, match="one digest per span"):
        AdvertValidator(NET).accept(
            sign_advert(make_advert(spans=((0, 3), (3, 6)), weights=(d,)), ALICE),
            ALICE.peer_id, now_ms=T0)


def test_a_manifest_digest_round_trips_and_is_bounded():
    tag = "sha256:" + "cd" * 32
    got = AdvertValidator(NET).accept(sign_advert(make_advert(manifest=tag), ALICE),
                                      ALICE.peer_id, now_ms=T0)
    assert got is not None and got.manifest == tag
    plain = AdvertValidator(NET).accept(sign_advert(make_advert(), ALICE), ALICE.peer_id,
                                        now_ms=T0)
    assert plain is not None and plain.manifest == "" and "manifest" not in plain.body()
    with pytest.raises(AdvertMalformed, match="manifest"):
        AdvertValidator(NET).accept(sign_advert(make_advert(manifest="x" * 81), ALICE),
                                    ALICE.peer_id, now_ms=T0)
