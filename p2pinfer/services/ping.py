"""`/p2pinfer/ping/1.0.0`: round-trip time to a peer (protocols/wire.md).

A `ping` carries a nonce of at most 32 bytes; the answer is a `pong` with the same nonce.
"""

from __future__ import annotations

import secrets
import time

from p2pinfer.errors import WireError
from p2pinfer.net.boundary import PeerNetwork
from p2pinfer.wire import Message, encode_message

PING_PROTOCOL = "ping"
MAX_NONCE = 32


async def serve_ping(msg: Message, peer_id: str) -> bytes:
    """The handler: a `pong` echoing the nonce."""
    if msg.t != "ping":
        raise WireError(f"unexpected message type {msg.t!r}")
    nonce = msg.get("nonce", bytes)
    if len(nonce) > MAX_NONCE:
        raise WireError(f"ping nonce is longer than {MAX_NONCE} bytes")
    return encode_message("pong", {"nonce": nonce})


async def ping(network: PeerNetwork, peer_id: str, *, count: int = 2) -> float:
    """Round-trip time in ms of the last of `count` exchanges on one stream (the first warms
    it up)."""
    best = float("inf")
    async with await network.open_stream(peer_id, PING_PROTOCOL) as s:
        for _ in range(count):
            nonce = secrets.token_bytes(8)
            t0 = time.perf_counter()
            await s.send("ping", {"nonce": nonce})
            reply = await s.recv(expect={"pong"})
            rtt = (time.perf_counter() - t0) * 1000
            if reply.get("nonce", bytes) != nonce:
                raise WireError("pong carries another nonce")
            best = rtt
    return best
