"""A hostile peer for tests/net/test_hostile.py, run as its own process so its work does not
slow the honest requester it is measured against:

    python -m tests.net.hostile_peer ATTACK VICTIM_MULTIADDR SECONDS

A raw py-libp2p host (not our Node) with a fresh identity connects to the victim, runs the
attack for SECONDS, then checks whether the victim still refuses it, and prints one JSON line:
{"opened": streams opened, "refused": streams refused, "still_refused": bool}.
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import msgpack
import trio
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from multiaddr import Multiaddr

MIB = 1 << 20
MAX_FRAME = 80 * MIB  # the default limits.max_frame_bytes
PROTOCOLS = ["stage", "ping", "advert", "tensor"]


class Attacker:
    """A raw libp2p host (its own identity) connected to the victim."""

    def __init__(self, host: Any, victim: str) -> None:
        self.host = host
        self.victim = victim
        self.victim_id = info_from_p2p_addr(Multiaddr(victim)).peer_id
        self.opened = 0
        self.refused = 0

    async def connect(self) -> None:
        await self.host.connect(info_from_p2p_addr(Multiaddr(self.victim)))

    async def stream(self, name: str) -> Any | None:
        """A raw stream on `/p2pinfer/<name>/1.0.0`, or None when the victim refuses."""
        try:
            with trio.fail_after(5):
                s = await self.host.new_stream(self.victim_id, [TProtocol(f"/p2pinfer/{name}/1.0.0")])
        except Exception:  # noqa: BLE001 - any refusal (reset, closed connection, timeout)
            self.refused += 1
            return None
        self.opened += 1
        return s

    async def reconnect_and_probe(self) -> bool:
        """After a ban: True when the victim still refuses a new stream from us."""
        try:
            with trio.fail_after(5):
                await self.connect()
                s = await self.host.new_stream(self.victim_id, [TProtocol("/p2pinfer/ping/1.0.0")])
                await s.write(_frame(msgpack.packb({"v": 1, "t": "ping"})))
                reply = await s.read(4)
        except Exception:  # noqa: BLE001 - reset, refused or closed: all mean "refused"
            return True
        return not reply


@asynccontextmanager
async def attacker(victim: str) -> AsyncIterator[Attacker]:
    key = create_new_key_pair()
    sec = {NOISE_PROTOCOL_ID: NoiseTransport(key, noise_privkey=create_x25519_key_pair().private_key)}
    host = new_host(key_pair=key, sec_opt=sec, muxer_preference="YAMUX")
    async with host.run(listen_addrs=[Multiaddr("/ip4/127.0.0.1/tcp/0")]):
        atk = Attacker(host, victim)
        await atk.connect()
        try:
            yield atk
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(3):
                try:
                    await host.disconnect(atk.victim_id)
                except Exception:  # noqa: BLE001, S110 - already disconnected by the victim
                    pass


def _frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "big") + payload


async def _hold(atk: Attacker, name: str, first: bytes, then: Callable[[Any], Awaitable[None]]
                | None = None) -> None:
    """Open one stream, write `first`, run `then` (or just keep the stream open)."""
    s = await atk.stream(name)
    if s is None:
        return
    try:
        if first:
            await s.write(first)
        if then is not None:
            await then(s)
        await trio.sleep_forever()
    except Exception:  # noqa: BLE001, S110 - the victim reset or closed it: what we expect
        pass


# -- attacks: each runs until cancelled ------------------------------------------------------
async def idle_streams(atk: Attacker) -> None:
    """64 streams that never send a byte, on each protocol."""
    async with trio.open_nursery() as n:
        for name in PROTOCOLS:
            for _ in range(64):
                n.start_soon(_hold, atk, name, b"")


async def max_frames(atk: Attacker) -> None:
    """200 streams announcing the maximum frame; each sends 64 KiB of it, then stalls."""
    async def some_data(s: Any) -> None:
        await s.write(bytes(64 * 1024))

    async with trio.open_nursery() as n:
        for i in range(200):
            n.start_soon(_hold, atk, PROTOCOLS[i % 2 * 3], MAX_FRAME.to_bytes(4, "big"),
                         some_data)


async def decoder_bombs(atk: Attacker) -> None:
    """A msgpack nesting bomb, an array bomb (8 MiB of empty arrays in one array) and an item
    bomb (1,000 arrays of 1,000 empty arrays), each on 4 streams of every protocol."""
    nesting = b"\x91" * 200_000 + b"\x90"
    array = b"\xdd" + (8 * MIB).to_bytes(4, "big") + b"\x90" * (8 * MIB)
    items = b"\x81\xa1x" + b"\xdc\x03\xe8" + (b"\xdc\x03\xe8" + b"\x90" * 1000) * 1000
    async with trio.open_nursery() as n:
        for bomb in (nesting, array, items):
            for name in PROTOCOLS:
                for _ in range(4):
                    n.start_soon(_hold, atk, name, _frame(bomb))


async def huge_prefix(atk: Attacker) -> None:
    """A 4 GiB length prefix on 8 streams of every protocol."""
    async with trio.open_nursery() as n:
        for name in PROTOCOLS:
            for _ in range(8):
                n.start_soon(_hold, atk, name, b"\xff\xff\xff\xff")


async def slowloris(atk: Attacker) -> None:
    """Frames sent 1 byte per second on 16 streams."""
    frame = _frame(msgpack.packb({"v": 1, "t": "ping", "pad": "x" * 64}))

    async def drip(s: Any) -> None:
        for i in range(4, len(frame)):
            await trio.sleep(1.0)
            await s.write(frame[i : i + 1])

    async with trio.open_nursery() as n:
        for i in range(16):
            # half drip the header too, half send the header at once and drip the body
            head = frame[:1] if i % 2 else frame[:4]
            n.start_soon(_hold, atk, PROTOCOLS[i % 2], head, drip)


ATTACKS: dict[str, Callable[[Attacker], Awaitable[None]]] = {
    "idle_streams": idle_streams,
    "max_frames": max_frames,
    "decoder_bombs": decoder_bombs,
    "huge_prefix": huge_prefix,
    "slowloris": slowloris,
}


async def run(attack: str, victim: str, seconds: float) -> dict[str, Any]:
    async with attacker(victim) as atk:
        with trio.move_on_after(seconds):
            await ATTACKS[attack](atk)
        still_refused = await atk.reconnect_and_probe()
        return {"opened": atk.opened, "refused": atk.refused, "still_refused": still_refused}


def main() -> None:
    attack, victim, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    result = trio.run(run, attack, victim, seconds)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
