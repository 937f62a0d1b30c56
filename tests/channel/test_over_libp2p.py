"""The channel over a real libp2p 0.8.1 stream (two hosts on loopback, TCP + Noise + yamux),
framed with p2pinfer.wire.framing."""

from __future__ import annotations

import os

import multiaddr
import pytest
import trio
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_ID
from libp2p.security.noise.transport import Transport as NoiseTransport

from p2pinfer.channel import ChannelClosed, RecordKind, accept_channel, open_channel
from p2pinfer.wire.framing import read_frame, write_frame

from .conftest import FakePeer

PROTOCOL = "/p2pinfer/channel-test/1.0.0"
pytestmark = pytest.mark.slow


class Framed:
    def __init__(self, stream) -> None:
        self.stream = stream

    async def send(self, data) -> None:
        await write_frame(self.stream, data)

    async def recv(self) -> bytearray:
        return await read_frame(self.stream, 80 << 20)


def _host():
    kp = create_new_key_pair()
    noise = NoiseTransport(kp, noise_privkey=create_x25519_key_pair().private_key)
    return new_host(key_pair=kp, sec_opt={NOISE_ID: noise}, muxer_preference="YAMUX")


async def test_tensor_record_crosses_a_libp2p_stream_encrypted():
    a, b = FakePeer(), FakePeer()
    host_a, host_b = _host(), _host()
    payload = os.urandom(1 << 16) * 128  # 8 MiB: above the offload size and yamux window
    received: dict[str, object] = {}
    done = trio.Event()

    async def handler(stream) -> None:
        try:
            async with await accept_channel(Framed(stream), b.identity, b.hooks) as ch:
                rec = await ch.recv()
                received["rec"] = rec
                await ch.send(b"thanks", task_id=rec.task_id, stage=rec.stage + 1)
                try:
                    await ch.recv()
                except ChannelClosed:
                    received["closed"] = True
        finally:
            done.set()

    listen = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]
    async with host_a.run(listen_addrs=listen), host_b.run(listen_addrs=listen):
        host_b.set_stream_handler(PROTOCOL, handler)
        addr = f"{host_b.get_addrs()[0]}"
        if "/p2p/" not in addr:
            addr += f"/p2p/{host_b.get_id()}"
        with trio.fail_after(30):
            await host_a.connect(info_from_p2p_addr(multiaddr.Multiaddr(addr)))
            stream = await host_a.new_stream(host_b.get_id(), [PROTOCOL])
            async with await open_channel(Framed(stream), a.identity, a.hooks) as ch:
                await ch.send_tensor(payload, b"task-42", 1)
                reply = await ch.recv()
            await done.wait()
            await stream.close()
    assert received.get("closed"), "the initiator's close record did not arrive"
    rec = received["rec"]
    assert rec.kind == RecordKind.TENSOR and rec.payload == payload
    assert (rec.task_id, rec.stage) == (b"task-42", 1)
    assert (reply.payload, reply.stage) == (b"thanks", 2)
