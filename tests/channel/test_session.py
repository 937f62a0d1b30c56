"""The async driver over an in-memory framed stream (trio)."""

from __future__ import annotations

import pytest
import torch
import trio

from p2pinfer.channel import (
    ChannelClosed,
    ChannelConfig,
    HandshakeError,
    RecordKind,
    accept_channel,
    open_channel,
)
from p2pinfer.wire.messages import encode_message
from p2pinfer.wire.tensors import tensor_to_wire

from .conftest import FakePeer, stream_pair


async def connect(a: FakePeer, b: FakePeer, tap_ab=None, tap_ba=None, config=None, **kwargs):
    sa, sb = stream_pair(tap_ab, tap_ba)
    out = {}

    async def responder():
        out["b"] = await accept_channel(sb, b.identity, b.hooks, config=config)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(responder)
        out["a"] = await open_channel(sa, a.identity, a.hooks, config=config, **kwargs)
    return out["a"], out["b"], sa, sb


async def test_channel_carries_records_both_ways():
    a, b = FakePeer(), FakePeer()
    ca, cb, _, _ = await connect(a, b, remote_peer_id=b.peer_id)
    assert ca.channel_id == cb.channel_id
    assert ca.peer.peer_id == b.peer_id and cb.peer.peer_id == a.peer_id
    await ca.send(b"hello", task_id=b"task", stage=2)
    rec = await cb.recv()
    assert (rec.payload, rec.task_id, rec.stage) == (b"hello", b"task", 2)
    await cb.send_tensor(b"tensor-bytes", b"task", 3)
    rec = await ca.recv()
    assert rec.kind == RecordKind.TENSOR and rec.payload == b"tensor-bytes"


async def test_rejected_evidence_fails_both_sides_with_typed_errors():
    a, b = FakePeer(), FakePeer(tamper=lambda ev: ev[:-1] + bytes([ev[-1] ^ 1]))
    sa, sb = stream_pair()
    errors = {}

    async def responder():
        with pytest.raises(HandshakeError) as e:
            await accept_channel(sb, b.identity, b.hooks)
        errors["b"] = e.value

    async with trio.open_nursery() as nursery:
        nursery.start_soon(responder)
        with pytest.raises(HandshakeError) as e:
            await open_channel(sa, a.identity, a.hooks)
        errors["a"] = e.value
    assert errors["a"].check == "evidence"
    assert errors["b"].check == "rejected" and "handshake:evidence" in str(errors["b"])


async def test_stream_error_during_handshake_is_a_handshake_error():
    from p2pinfer.errors import WireError

    class BrokenStream:
        async def send(self, data):
            pass

        async def recv(self):
            raise WireError("stream ended inside a frame")

    a = FakePeer()
    with pytest.raises(HandshakeError) as e:
        await open_channel(BrokenStream(), a.identity, a.hooks)
    assert e.value.check == "stream"


async def test_silent_peer_times_out(autojump_clock):
    a = FakePeer()
    sa, _sb = stream_pair()
    with pytest.raises(HandshakeError) as e:
        await open_channel(sa, a.identity, a.hooks, config=ChannelConfig(handshake_timeout=5))
    assert e.value.check == "timeout"


async def test_recv_skips_tampered_and_replayed_frames():
    a, b = FakePeer(), FakePeer()
    seen = []

    def middlebox(frame):
        seen.append(frame)
        if len(seen) == 4:  # after the 2 handshake messages: the second data frame
            bad = bytearray(frame)
            bad[-3] ^= 0xFF
            return bytes(bad)
        return frame

    ca, cb, sa, _ = await connect(a, b, tap_ab=middlebox)
    await ca.send(b"one")
    await ca.send(b"two")  # tampered in flight
    await sa._send.send(seen[2])  # replay of "one"
    await ca.send(b"three")
    assert (await cb.recv()).payload == b"one"
    assert (await cb.recv()).payload == b"three"
    assert cb.stats.tampered == 1 and cb.stats.replayed == 1 and cb.stats.received == 2


async def test_aclose_tells_the_peer_and_erases_keys():
    a, b = FakePeer(), FakePeer()
    ca, cb, _, _ = await connect(a, b)
    ka = (ca._record._send.key, ca._record._recv.key)
    kb = (cb._record._send.key, cb._record._recv.key)
    async with ca:
        await ca.send(b"last")
    assert all(k == bytes(32) for k in ka)
    assert (await cb.recv()).payload == b"last"
    with pytest.raises(ChannelClosed):
        await cb.recv()
    assert all(k == bytes(32) for k in kb)
    with pytest.raises(ChannelClosed):
        await ca.send(b"after close")


async def test_cancelled_context_still_erases_keys():
    a, b = FakePeer(), FakePeer()
    ca, _, _, _ = await connect(a, b)
    key = ca._record._send.key
    with trio.CancelScope() as scope:
        async with ca:
            scope.cancel()
            await trio.sleep(1)
    assert key == bytes(32) and ca.closed


async def test_wire_never_carries_the_plaintext_tensor():
    a, b = FakePeer(), FakePeer()
    ca, cb, sa, _ = await connect(a, b)
    torch.manual_seed(0)
    tensor = torch.randn(64, 384)
    raw = tensor.numpy().tobytes()
    message = encode_message("activation", {"x": tensor_to_wire(tensor)})
    await ca.send_tensor(message, b"task-1", 1)
    rec = await cb.recv()
    assert raw in rec.payload
    wire = b"".join(sa.wire)
    assert raw not in wire
    for start in range(0, len(raw), 64):
        assert raw[start : start + 16] not in wire


async def test_large_records_are_sealed_and_opened_off_the_event_loop():
    a, b = FakePeer(), FakePeer()
    config = ChannelConfig(offload_bytes=1024)
    flips = iter([True, False])

    def middlebox(frame):  # tamper with the first large data frame only
        if len(frame) > 4096 and next(flips):
            return frame[:-1] + bytes([frame[-1] ^ 1])
        return frame

    ca, cb, _, _ = await connect(a, b, tap_ab=middlebox, config=config)
    big = bytes(range(256)) * 8192  # 2 MiB
    await ca.send(big, task_id=b"t", stage=1)
    await ca.send(big[::-1], task_id=b"t", stage=2)
    rec = await cb.recv()
    assert rec.payload == big[::-1] and rec.stage == 2
    assert cb.stats.tampered == 1


def test_config_rejects_bad_values():
    from p2pinfer.errors import ConfigError

    for bad in (
        {"rekey_after_messages": 0},
        {"max_payload": -1},
        {"max_epoch_skip": 100},
        {"offload_bytes": -1},
        {"handshake_timeout": 0},
    ):
        with pytest.raises(ConfigError):
            ChannelConfig(**bad)


async def test_stream_that_ends_without_close_record_closes_the_channel():
    from p2pinfer.wire import EndOfStream

    a, b = FakePeer(), FakePeer()
    _, cb, _, sb = await connect(a, b)
    key = cb._record._recv.key

    async def ended():
        raise EndOfStream("stream ended")

    sb.recv = ended
    with pytest.raises(ChannelClosed):
        await cb.recv()
    assert cb.closed and key == bytes(32)


async def test_recv_after_local_close_fails_at_once():
    ca, _, _, _ = await connect(FakePeer(), FakePeer())
    ca.close()
    with pytest.raises(ChannelClosed):
        await ca.recv()


def test_record_repr_never_shows_the_payload():
    from p2pinfer.channel import Record

    rec = Record(RecordKind.DATA, b"t", 0, 0, bytearray(b"secret activation"))
    assert "secret" not in repr(rec)


async def test_reused_send_buffer_never_mixes_records():
    config = ChannelConfig(offload_bytes=1024)
    ca, cb, _, _ = await connect(FakePeer(), FakePeer(), config=config)
    payloads = [bytes([n]) * (4096 + 1000 * n) for n in (3, 1, 2)]
    for p in payloads:
        await ca.send(p)
    for p in payloads:
        assert (await cb.recv()).payload == p
    await ca.aclose()
    assert len(ca._send_buffer) == 0


async def test_received_frame_buffers_are_reused_for_later_plaintexts():
    config = ChannelConfig(offload_bytes=1024)
    ca, cb, _, sb = await connect(FakePeer(), FakePeer(), config=config)
    inner = sb.recv

    async def owned_bytearray():
        return bytearray(await inner())

    sb.recv = owned_bytearray
    payloads = [bytes([n]) * size for n, size in ((1, 5000), (2, 3000), (3, 9000), (4, 2000))]
    for p in payloads:
        await ca.send(p)
    received = [(await cb.recv()).payload for _ in payloads]
    assert received == payloads
    assert len({id(r) for r in received}) == len(received)


async def test_rekey_over_the_stream_keeps_both_sides_in_step():
    config = ChannelConfig(rekey_after_messages=2, rekey_after_bytes=10_000)
    ca, cb, _, _ = await connect(FakePeer(), FakePeer(), config=config)
    for n in range(7):
        await ca.send(bytes([n]) * 3000)
        assert (await cb.recv()).payload == bytes([n]) * 3000
        await cb.send(b"ack")
        await ca.recv()
    assert ca.send_epoch == cb.recv_epoch == 3
    assert cb.send_epoch == ca.recv_epoch == 3
