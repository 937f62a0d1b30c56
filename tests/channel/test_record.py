"""The record layer: sealing, ordering, tampering, rekeying and erasure."""

from __future__ import annotations

import os

import pytest

from p2pinfer.channel import (
    ChannelClosed,
    ChannelConfig,
    ChannelError,
    ChannelFailed,
    DecryptError,
    MalformedRecord,
    RecordKind,
    RecordLayer,
    ReplayError,
)
from p2pinfer.channel.record import HEADER_BYTES, MAX_TASK_ID


def pair(config: ChannelConfig | None = None) -> tuple[RecordLayer, RecordLayer]:
    """Two ends sharing fresh random keys, as a handshake would leave them."""
    cid = os.urandom(16)
    k1, k2 = os.urandom(32), os.urandom(32)
    a = RecordLayer(cid, bytearray(k1), bytearray(k2), send_direction=0, config=config)
    b = RecordLayer(cid, bytearray(k2), bytearray(k1), send_direction=1, config=config)
    return a, b


def flip(frame: bytearray, at: int) -> bytearray:
    out = bytearray(frame)
    out[at] ^= 0x80
    return out


def test_record_roundtrip_carries_task_stage_and_kind():
    a, b = pair()
    rec = b.open(a.seal(b"activation", task_id=b"t" * 16, stage=4, kind=RecordKind.TENSOR))
    assert rec.payload == b"activation"
    assert (rec.task_id, rec.stage, rec.kind, rec.seq) == (b"t" * 16, 4, RecordKind.TENSOR, 0)


def test_empty_payload_roundtrips():
    a, b = pair()
    assert b.open(a.seal(b"")).payload == b""


def test_tampered_ciphertext_is_dropped_counted_and_valid_traffic_continues():
    a, b = pair()
    bad = flip(a.seal(b"first"), HEADER_BYTES + 2)
    with pytest.raises(DecryptError):
        b.open(bad)
    assert b.stats.tampered == 1
    assert b.open(a.seal(b"second")).payload == b"second"
    assert b.stats.received == 1 and b.stats.skipped == 1


def test_tampered_tag_is_rejected():
    a, b = pair()
    frame = a.seal(b"payload")
    with pytest.raises(DecryptError):
        b.open(flip(frame, len(frame) - 1))


@pytest.mark.parametrize("offset", [4, 7])  # stage index bytes are associated data
def test_tampered_stage_in_header_is_rejected(offset):
    a, b = pair()
    with pytest.raises(DecryptError):
        b.open(flip(a.seal(b"x", stage=1), offset))


def test_tampered_task_id_is_rejected():
    a, b = pair()
    with pytest.raises(DecryptError):
        b.open(flip(a.seal(b"x", task_id=b"task-a"), HEADER_BYTES))


def test_changed_kind_is_rejected():
    a, b = pair()
    frame = a.seal(b"x", kind=RecordKind.DATA)
    frame[1] = RecordKind.TENSOR
    with pytest.raises(DecryptError):
        b.open(frame)


def test_frame_of_another_channel_is_rejected():
    a, _ = pair()
    _, other = pair()
    with pytest.raises(DecryptError):
        other.open(a.seal(b"x"))


def test_frame_reflected_to_its_sender_is_rejected():
    a, _ = pair()
    with pytest.raises(DecryptError):
        a.open(a.seal(b"x"))


def test_replayed_frame_is_dropped_and_counted():
    a, b = pair()
    frame = a.seal(b"once")
    b.open(frame)
    with pytest.raises(ReplayError):
        b.open(frame)
    assert b.stats.replayed == 1
    assert b.open(a.seal(b"next")).payload == b"next"


def test_reordered_frame_is_dropped_and_counted():
    a, b = pair()
    f0, f1, f2 = a.seal(b"0"), a.seal(b"1"), a.seal(b"2")
    assert b.open(f1).payload == b"1"
    with pytest.raises(ReplayError):
        b.open(f0)
    assert b.open(f2).payload == b"2"
    assert b.stats.replayed == 1 and b.stats.skipped == 1


def test_truncated_and_garbage_frames_are_malformed():
    a, b = pair()
    frame = a.seal(b"abc", task_id=b"task")
    for bad in (b"", frame[:10], frame[: HEADER_BYTES + 3], b"\x02" + frame[1:]):
        with pytest.raises(MalformedRecord):
            b.open(bad)
    assert b.stats.malformed == 4
    assert b.open(frame).payload == b"abc"


def test_oversized_payload_is_rejected_before_decrypting():
    a, _ = pair(ChannelConfig(max_payload=1 << 20))
    _, b = pair(ChannelConfig(max_payload=1024))
    b.channel_id = a.channel_id
    with pytest.raises(MalformedRecord):
        b.open(a.seal(bytes(2048)))


def test_too_many_rejected_frames_close_the_channel_and_erase_keys():
    a, b = pair(ChannelConfig(max_failures=3))
    frame = a.seal(b"x")
    b.open(frame)
    keys = (b._send.key, b._recv.key)
    for _ in range(2):
        with pytest.raises(ReplayError):
            b.open(frame)
    with pytest.raises(ChannelFailed):
        b.open(frame)
    assert b.closed and all(k == bytes(32) for k in keys)
    with pytest.raises(ChannelClosed):
        b.open(a.seal(b"y"))


def test_rekey_after_message_bound_both_sides_agree_and_old_key_is_zeroed():
    a, b = pair(ChannelConfig(rekey_after_messages=3))
    old_send, old_recv = a._send.key, b._recv.key
    for n in range(3):
        assert b.open(a.seal(b"m%d" % n)).payload == b"m%d" % n
    assert a.send_epoch == 0
    assert b.open(a.seal(b"m3")).payload == b"m3"
    assert a.send_epoch == b.recv_epoch == 1
    assert a._send.key == b._recv.key
    assert old_send == bytes(32) and old_recv == bytes(32)
    assert a.stats.rekeys_sent == 1 and b.stats.rekeys_received == 1
    for n in range(10):
        b.open(a.seal(b"more"))
    assert a.send_epoch == b.recv_epoch == 4


def test_rekey_after_byte_bound():
    a, b = pair(ChannelConfig(rekey_after_bytes=1000))
    b.open(a.seal(bytes(600)))
    b.open(a.seal(bytes(600)))  # would exceed 1000 under the first key
    assert a.send_epoch == b.recv_epoch == 1
    assert b.open(a.seal(bytes(10))).payload == bytes(10)


def test_rekey_is_followed_after_a_dropped_frame():
    a, b = pair(ChannelConfig(rekey_after_messages=2))
    b.open(a.seal(b"0"))
    b.open(a.seal(b"1"))
    with pytest.raises(DecryptError):
        b.open(flip(a.seal(b"2 under epoch 1"), HEADER_BYTES))
    assert b.recv_epoch == 0
    assert b.open(a.seal(b"3")).payload == b"3"
    assert b.recv_epoch == 1


def test_receiver_catches_up_over_several_epochs():
    a, b = pair(ChannelConfig(rekey_after_messages=1))
    b.open(a.seal(b"0"))
    for _ in range(3):
        a.seal(b"lost")
    assert b.open(a.seal(b"4")).payload == b"4"
    assert b.recv_epoch == a.send_epoch == 4


def test_forged_epoch_bump_does_not_move_the_receiver():
    a, b = pair()
    frame = a.seal(b"x")
    frame[11] = 1  # epoch 1 in the header
    with pytest.raises(DecryptError):
        b.open(frame)
    assert b.recv_epoch == 0
    assert b.open(a.seal(b"y")).payload == b"y"


def test_epoch_too_far_ahead_is_malformed():
    a, b = pair(ChannelConfig(max_epoch_skip=2))
    frame = a.seal(b"x")
    frame[11] = 3
    with pytest.raises(MalformedRecord):
        b.open(frame)


def test_close_erases_both_keys():
    a, _ = pair()
    keys = (a._send.key, a._recv.key)
    a.close()
    assert all(k == bytes(32) for k in keys)
    assert a._send.aead is None and a._recv.aead is None
    with pytest.raises(ChannelClosed):
        a.seal(b"x")


def test_close_record_closes_the_receiver():
    a, b = pair()
    rec = b.open(a.seal_close())
    assert rec.kind == RecordKind.CLOSE
    assert a.closed and b.closed
    assert b._recv.key == bytes(32)


def test_close_record_with_payload_is_malformed():
    a, b = pair()
    frame = a.seal(b"x")
    frame[1] = RecordKind.CLOSE
    with pytest.raises(MalformedRecord):
        b.open(frame)


def test_open_tensor_refuses_other_kinds():
    a, b = pair()
    with pytest.raises(ChannelError):
        b.open_tensor(a.seal(b"x"))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"task_id": b"x" * (MAX_TASK_ID + 1)},
        {"task_id": "not-bytes"},
        {"stage": -1},
        {"stage": 2**32},
    ],
)
def test_bad_seal_arguments_raise_channel_error(kwargs):
    a, _ = pair()
    with pytest.raises(ChannelError):
        a.seal(b"x", **kwargs)


def test_payload_over_limit_is_refused_by_sender():
    a, _ = pair(ChannelConfig(max_payload=16))
    with pytest.raises(ChannelError):
        a.seal(bytes(17))


def test_sealed_frame_never_contains_plaintext():
    a, _ = pair()
    plaintext = bytes(range(256)) * 64
    frame = bytes(a.seal(plaintext))
    for start in range(0, len(plaintext), 16):
        assert plaintext[start : start + 16] not in frame


def test_64_mib_activation_roundtrips():
    a, b = pair()
    payload = bytearray(os.urandom(1 << 16)) * 1024
    rec = b.open(a.seal(memoryview(payload), task_id=b"big", stage=1))
    assert len(rec.payload) == 64 << 20 and rec.payload == payload


def test_seal_into_a_caller_buffer():
    a, b = pair()
    size = RecordLayer.frame_size(5, b"tid")
    buf = bytearray(size + 10)
    with memoryview(buf)[:size] as out:
        frame = a.seal(b"hello", task_id=b"tid", out=out)
        assert b.open(frame).payload == b"hello"


def test_seal_into_a_wrong_size_buffer_is_refused_without_using_a_sequence_number():
    a, b = pair()
    with pytest.raises(ChannelError):
        a.seal(b"hello", out=bytearray(10))
    assert a.stats.sent == 0
    assert b.open(a.seal(b"next")).seq == 0


def test_open_into_a_spare_buffer_shrinks_it_to_the_payload():
    a, b = pair()
    spare = bytearray(b"\xff" * 100)
    rec = b.open(a.seal(b"abc"), out=spare)
    assert rec.payload is spare and spare == b"abc"


def test_open_ignores_a_spare_buffer_that_is_too_small():
    a, b = pair()
    spare = bytearray(2)
    rec = b.open(a.seal(b"abcdef"), out=spare)
    assert rec.payload == b"abcdef" and spare == bytearray(2)


def test_failed_open_wipes_the_spare_buffer():
    a, b = pair()
    spare = bytearray(b"\xff" * 64)
    with pytest.raises(DecryptError):
        b.open(flip(a.seal(b"x" * 32), HEADER_BYTES), out=spare)
    assert spare == bytes(32)
