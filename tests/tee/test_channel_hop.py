"""ChannelHop between two real nodes: sealing, and dropping replayed, reordered, tampered,
misbound and plaintext activations (each counted); the attest protocol between them."""

from __future__ import annotations

from contextlib import AsyncExitStack, asynccontextmanager

import pytest
import torch
import trio

from p2pinfer.errors import RemoteError
from p2pinfer.inference.hop import HopContext
from p2pinfer.inference.secure_hop import ChannelHop, PlaintextRefused, SealedRecordRejected
from p2pinfer.node import Node
from p2pinfer.services import attest as attestation
from p2pinfer.services.attest import PeerNotAttested
from p2pinfer.wire import tensor_to_wire
from tests.inference.conftest import node_config

from .conftest import TRUST

TASK = b"task-0123456789a"
H = 8
LIMITS = {"hidden_size": H, "dtype": "float32", "max_bytes": 1 << 20}


@asynccontextmanager
async def pair(tmp_path):
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(Node(node_config(tmp_path, "a", trust=TRUST)))
        b = await stack.enter_async_context(
            Node(node_config(tmp_path, "b", boot=[a.addrs[0]], trust=TRUST)))
        await b.connect(a.addrs[0])
        yield a, b


def ctx(peer: str, seq: int = 0, stage: int = 1, task: bytes = TASK) -> HopContext:
    return HopContext(task, stage, seq, peer)


async def test_an_activation_crosses_sealed_and_opens_equal(tmp_path):
    async with pair(tmp_path) as (a, b):
        send, recv = ChannelHop(a.attestation), ChannelHop(b.attestation)
        x = torch.randn(1, 3, H)
        fields = await send.pack(x, ctx(b.peer_id))
        assert set(fields) == {"channel", "hop_salt", "meta", "sealed"}
        assert x.numpy().tobytes() not in bytes(fields["sealed"])
        y = await recv.unpack(fields, ctx(a.peer_id), **LIMITS)
        assert torch.equal(x, y)
        assert b.attestation.tee_level(a.peer_id) == "simulated"


async def test_replayed_reordered_tampered_and_misbound_records_are_dropped_and_counted(
        tmp_path):
    async with pair(tmp_path) as (a, b):
        send, recv = ChannelHop(a.attestation), ChannelHop(b.attestation)
        f0, f1, f2 = [await send.pack(torch.randn(1, 1, H), ctx(b.peer_id, s)) for s in range(3)]
        await recv.unpack(f0, ctx(a.peer_id, 0), **LIMITS)
        with pytest.raises(SealedRecordRejected, match="replayed"):
            await recv.unpack(f0, ctx(a.peer_id, 0), **LIMITS)
        await recv.unpack(f2, ctx(a.peer_id, 2), **LIMITS)
        with pytest.raises(SealedRecordRejected, match="replayed"):  # reordered
            await recv.unpack(f1, ctx(a.peer_id, 1), **LIMITS)
        f3 = await send.pack(torch.randn(1, 1, H), ctx(b.peer_id, 3))
        bad = dict(f3, sealed=bytes(f3["sealed"][:-1]) + bytes([f3["sealed"][-1] ^ 1]))
        with pytest.raises(SealedRecordRejected, match="tampered"):
            await recv.unpack(bad, ctx(a.peer_id, 3), **LIMITS)
        f4 = await send.pack(torch.randn(1, 1, H), ctx(b.peer_id, 4))
        with pytest.raises(SealedRecordRejected, match="step"):  # bound to another step
            await recv.unpack(f4, ctx(a.peer_id, 5), **LIMITS)
        assert recv.counters["replayed"] == 2 and recv.counters["tampered"] == 1
        assert recv.counters["opened"] == 2
        f5 = await send.pack(torch.randn(1, 1, H), ctx(b.peer_id, 5))
        assert (await recv.unpack(f5, ctx(a.peer_id, 5), **LIMITS)).shape == (1, 1, H)


async def test_a_record_for_another_stage_or_task_does_not_open(tmp_path):
    async with pair(tmp_path) as (a, b):
        send, recv = ChannelHop(a.attestation), ChannelHop(b.attestation)
        f = await send.pack(torch.randn(1, 1, H), ctx(b.peer_id, stage=1))
        with pytest.raises(SealedRecordRejected):
            await recv.unpack(f, ctx(a.peer_id, stage=2), **LIMITS)
        with pytest.raises(SealedRecordRejected):
            await recv.unpack(f, ctx(a.peer_id, task=b"other-task-00000"), **LIMITS)


async def test_a_replayed_hop_is_refused_after_its_session_ended(tmp_path):
    async with pair(tmp_path) as (a, b):
        send, recv = ChannelHop(a.attestation), ChannelHop(b.attestation)
        f = await send.pack(torch.randn(1, 1, H), ctx(b.peer_id))
        await recv.unpack(f, ctx(a.peer_id), **LIMITS)
        assert recv.end_hops(TASK) == 1 and recv.live_hops == 0
        with pytest.raises(SealedRecordRejected, match="replayed hop"):
            await recv.unpack(f, ctx(a.peer_id), **LIMITS)


async def test_plaintext_activations_and_unknown_channels_are_refused(tmp_path):
    async with pair(tmp_path) as (a, b):
        recv = ChannelHop(b.attestation)
        with pytest.raises(PlaintextRefused):
            await recv.unpack({"hidden": tensor_to_wire(torch.zeros(1, 1, H))},
                              ctx(a.peer_id), **LIMITS)
        assert recv.counters["plaintext_refused"] == 1
        with pytest.raises(PeerNotAttested):
            await recv.unpack({"channel": bytes(16), "hop_salt": bytes(16), "meta": b"m",
                               "sealed": b"x" * 40},
                              ctx(a.peer_id), **LIMITS)
        with pytest.raises(Exception, match="16 bytes"):
            await recv.unpack({"channel": b"short", "hop_salt": bytes(16), "meta": b"m",
                               "sealed": b"x"},
                              ctx(a.peer_id), **LIMITS)


async def test_a_closed_channel_is_opened_again_on_next_use(tmp_path):
    async with pair(tmp_path) as (a, b):
        send, recv = ChannelHop(a.attestation), ChannelHop(b.attestation)
        first = await a.attestation.channel_to(b.peer_id)
        await a.attestation.close_channel(b.peer_id)
        assert first.closed
        f = await send.pack(torch.randn(1, 1, H), ctx(b.peer_id))
        assert f["channel"] != first.channel_id
        await recv.unpack(f, ctx(a.peer_id), **LIMITS)


async def test_mutual_attestation_records_claims_on_both_sides_with_fresh_nonces(tmp_path):
    async with pair(tmp_path) as (a, b):
        c1 = await a.attestation.attest_peer(b.peer_id)
        c2 = await a.attestation.attest_peer(b.peer_id)
        assert c1.simulated and c1.evidence_digest != c2.evidence_digest
        assert b.attestation.claims_of(a.peer_id) is not None
        assert a.peer(b.peer_id).extra["tee_level"] == "simulated"


async def test_garbage_on_the_attest_protocol_gets_an_error_reply(tmp_path):
    async with pair(tmp_path) as (a, b):
        async with await a.open_stream(b.peer_id, "attest") as s:
            await s.send("attest-challenge", {"net": "other-net", "peer": b"x", "key": b"k",
                                              "nonce": b"n"})
            with pytest.raises(RemoteError) as e:
                await s.recv()
        assert e.value.code == "wrong-network"
        async with await a.open_stream(b.peer_id, "attest") as s:
            await s.send_bytes(b"\xff\x00garbage")
            with pytest.raises(RemoteError):
                await s.recv()
        assert (await a.attestation.attest_peer(b.peer_id)).simulated  # b still serves


async def test_a_peer_asking_for_evidence_too_often_is_refused_busy(tmp_path, monkeypatch):
    monkeypatch.setattr(attestation, "INBOUND_PER_WINDOW", 3)
    async with pair(tmp_path) as (a, b):
        with trio.fail_after(10):  # the background attestation of b is done first
            while a.attestation.claims_of(b.peer_id) is None:
                await trio.sleep(0.05)
        b.attestation._inbound.clear()
        for _ in range(3):
            await a.attestation.attest_peer(b.peer_id)
        with pytest.raises(RemoteError) as e:
            await a.attestation.attest_peer(b.peer_id)
        assert e.value.code == "busy" and b.attestation.counters["rate_limited"] == 1
