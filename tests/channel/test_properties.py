"""Property tests: every byte flip is caught; decoders raise only their typed errors."""

from __future__ import annotations

import os

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pinfer.channel import ChannelConfig, HandshakeError, RecordLayer, RecordRejected

from .conftest import FakePeer, handshakes

LENIENT = ChannelConfig(max_failures=1 << 30)


def pair() -> tuple[RecordLayer, RecordLayer]:
    cid, k1, k2 = os.urandom(16), os.urandom(32), os.urandom(32)
    a = RecordLayer(cid, bytearray(k1), bytearray(k2), send_direction=0, config=LENIENT)
    b = RecordLayer(cid, bytearray(k2), bytearray(k1), send_direction=1, config=LENIENT)
    return a, b


@settings(deadline=None, max_examples=400)
@given(
    payload=st.binary(max_size=256),
    task_id=st.binary(max_size=64),
    stage=st.integers(0, 2**32 - 1),
    where=st.integers(min_value=0),
    mask=st.integers(1, 255),
)
def test_any_byte_flip_in_a_sealed_frame_is_rejected(payload, task_id, stage, where, mask):
    a, b = pair()
    frame = a.seal(payload, task_id=task_id, stage=stage)
    frame[where % len(frame)] ^= mask
    with pytest.raises(RecordRejected):
        b.open(frame)
    assert b.stats.received == 0 and b.stats.failures == 1


@settings(deadline=None, max_examples=1000)
@given(st.binary(max_size=512))
def test_record_decoder_raises_only_typed_errors_on_random_input(data):
    _, b = pair()
    with pytest.raises(RecordRejected):
        b.open(data)


_FIELD_VALUES = st.one_of(
    st.binary(max_size=40),
    st.binary(min_size=32, max_size=32),
    st.text(max_size=40),
    st.integers(-(2**63), 2**64 - 1),
    st.none(),
    st.booleans(),
    st.lists(st.integers(-10, 10), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(-10, 10), max_size=2),
)
_NAMES = st.sampled_from(["v", "t", "proto", "net", "peer", "s", "e", "n", "ev", "conf", "x"])
_TYPES = st.sampled_from(["ch-hello", "ch-reply", "ch-finish", "ch-confirm", "error", "zz"])


@st.composite
def envelopes(draw) -> bytes:
    body = draw(st.dictionaries(_NAMES, _FIELD_VALUES, max_size=8))
    if draw(st.booleans()):
        body["v"] = 1
        body["t"] = draw(_TYPES)
    return msgpack.packb(body, use_bin_type=True)


_INPUTS = st.one_of(st.binary(max_size=300), envelopes())


@settings(deadline=None, max_examples=600)
@given(data=_INPUTS, which=st.integers(0, 3))
def test_handshake_decoders_raise_only_handshake_errors(data, which):
    i, r = handshakes(FakePeer(), FakePeer())
    m2 = r.receive(i.start())
    if which == 0:  # responder waiting for the hello
        target = handshakes(FakePeer(), FakePeer())[1]
    elif which == 1:  # initiator waiting for the reply
        target = i
    elif which == 2:  # responder waiting for the finish
        target = r
    else:  # initiator waiting for the confirmation
        i.receive(m2)
        target = i
    with pytest.raises(HandshakeError):
        target.receive(data)


@settings(deadline=None, max_examples=300)
@given(which=st.integers(1, 4), where=st.integers(min_value=0), mask=st.integers(1, 255))
def test_any_byte_flip_in_a_handshake_message_fails_the_handshake(which, where, mask):
    from .conftest import run_handshake

    def tap(index: int, msg: bytes) -> bytes:
        if index != which:
            return msg
        out = bytearray(msg)
        out[where % len(out)] ^= mask
        return bytes(out)

    i, r = handshakes(FakePeer(), FakePeer())
    with pytest.raises(HandshakeError):
        run_handshake(i, r, tap)
    assert not i.complete
