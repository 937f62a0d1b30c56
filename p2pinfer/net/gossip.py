"""GossipSub topics for one network: `p2pinfer/<network-id>/<name>/<major>`.

Default settings chosen for 5-20 peers (measured on loopback, see tests/net/test_gossip.py):
the mesh degree bounds are wide (`gossip.mesh_degree*`: D=8, D_lo=6, D_hi=24) so a network of up
to ~24 peers is never pruned, which avoids the GRAFT-after-PRUNE penalties that emptied meshes
with libp2p's defaults (each message reaches a peer about D times, so many peer processes on
few cores want a smaller mesh and rarer adverts: tools/scale_testnet.py); the
heartbeat is `gossip.heartbeat_s`; IP-diversity (eclipse) protection is off when every listen
address is loopback, where all peers share one IP. Messages are signed by libp2p (strict
signing), so the origin peer id is authenticated.

Rate limiting is per origin: each topic accepts `gossip.max_msgs_per_s` messages per second
from one publisher (a token bucket holding two seconds' worth), counted where the message is
validated, so a flooding publisher is cut off at its first hop. libp2p's own limit is off: it
counts every message a neighbour relays (all origins together, and our own publishes), so on a
busy or briefly stalled machine it stopped an honest hub from relaying anything.

Every gossip RPC a neighbour sends (a relayed message or a control message: IHAVE, GRAFT, ...)
is reported to `on_rpc(peer_id)`: the node counts it as hearing from that peer, so a loaded
neighbour whose pong is late but whose gossip keeps arriving is not taken for a dead connection.

Each topic has one dedicated drain task that moves messages from libp2p's subscription queue
into every local subscriber's queue (32 deep, newest dropped when full, counted), so a slow
consumer never blocks the router.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio
from libp2p.peer.id import ID
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11, GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.tools.anyio_service import background_trio_service

from p2pinfer.config import GossipSection

from .host import Host

log = logging.getLogger(__name__)

SUBSCRIBER_QUEUE = 32
#: (topic, origin) rate buckets kept at most; the table is pruned of idle origins beyond this
MAX_RATE_BUCKETS = 4096
MAX_GOSSIP_BYTES = 1 << 20

#: validator(origin_peer_id, payload) -> True to accept and relay
Validator = Callable[[str, bytes], bool]


def topic_name(network_id: str, name: str, major: int = 1) -> str:
    return f"p2pinfer/{network_id}/{name}/{major}"


def _all_loopback(addrs: list[str]) -> bool:
    for a in addrs:
        parts = a.split("/")
        if len(parts) < 3 or parts[1] not in ("ip4", "ip6"):
            return False
        try:
            if not ipaddress.ip_address(parts[2]).is_loopback:
                return False
        except ValueError:
            return False
    return bool(addrs)


class _Router(GossipSub):
    """libp2p's GossipSub, telling its owner which neighbour each control RPC came from."""

    def __init__(self, on_rpc: Callable[[str], None], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._on_rpc = on_rpc

    async def handle_rpc(self, rpc: Any, sender_peer_id: ID) -> None:
        self._on_rpc(sender_peer_id.to_base58())
        await super().handle_rpc(rpc, sender_peer_id)


class Gossip:
    """Publish/subscribe on this network's topics. Run `run()` in the node's nursery."""

    def __init__(self, host: Host, network_id: str, cfg: GossipSection, *,
                 on_rpc: Callable[[str], None] | None = None) -> None:
        self.host = host
        self.network_id = network_id
        self.cfg = cfg
        self._on_rpc: Callable[[str], None] = on_rpc or (lambda _peer: None)
        self.router = _Router(
            self._on_rpc,
            protocols=[PROTOCOL_ID_V11],
            degree=cfg.mesh_degree,
            degree_low=cfg.mesh_degree_low,
            degree_high=cfg.mesh_degree_high,
            heartbeat_initial_delay=0.1,
            heartbeat_interval=max(1, round(cfg.heartbeat_s)),
            prune_back_off=10,
            spam_protection_enabled=False,
            # adaptive gossip (on by default in libp2p 0.8.1) scores mesh degree against D = 8
            # every 30 s and rewrites the heartbeat to 30-60 s in any network of fewer than
            # ~9 peers, silently ignoring gossip.heartbeat_s
            adaptive_gossip_enabled=False,
            eclipse_protection_enabled=not _all_loopback(host.net.listen),
        )
        self.pubsub = Pubsub(
            host.lp2p, self.router, strict_signing=True, max_inbound_rpc_size=2 * MAX_GOSSIP_BYTES
        )
        self._subscribers: dict[str, list[trio.MemorySendChannel[tuple[str, bytes]]]] = {}
        self._nursery: trio.Nursery | None = None
        self.counters: dict[str, int] = {"published": 0, "received": 0, "dropped": 0,
                                         "rate_limited": 0}
        self._buckets: dict[tuple[str, str], tuple[float, float]] = {}
        self._validators: dict[str, Validator] = {}

    def topic(self, name: str, major: int = 1) -> str:
        return topic_name(self.network_id, name, major)

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with background_trio_service(self.pubsub), background_trio_service(self.router):
            await self.pubsub.wait_until_ready()
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()

    def set_validator(self, name: str, validator: Validator, major: int = 1) -> None:
        """Register a synchronous validator; it sees the authenticated origin and the payload.
        Messages over the origin's rate are refused before the validator runs."""
        topic = self.topic(name, major)
        self._validators[topic] = validator
        self._install_check(topic)

    def _install_check(self, topic: str) -> None:
        """Every joined topic gets one check: size, origin, rate, then its validator if any."""

        def check(forwarder: ID, msg: Any) -> bool:
            self._on_rpc(forwarder.to_base58())
            if len(msg.data) > MAX_GOSSIP_BYTES:
                return False
            try:
                origin = ID(msg.from_id).to_base58()
            except Exception:  # noqa: BLE001 - any malformed origin id is a rejection
                return False
            if origin != self.host.peer_id and not self._within_rate(topic, origin):
                return False
            validator = self._validators.get(topic)
            return validator is None or validator(origin, bytes(msg.data))

        self.pubsub.set_topic_validator(topic, check, False)

    def _within_rate(self, topic: str, origin: str) -> bool:
        """Take one token from the (topic, origin) bucket; False when it is empty."""
        rate = self.cfg.max_msgs_per_s
        capacity = 2.0 * rate
        now = time.monotonic()
        key = (topic, origin)
        tokens, last = self._buckets.get(key, (capacity, now))
        tokens = min(capacity, tokens + (now - last) * rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            self.counters["rate_limited"] += 1
            return False
        if key not in self._buckets and len(self._buckets) >= MAX_RATE_BUCKETS:
            # forget full buckets first: they carry no state worth keeping
            for k, (t, when) in list(self._buckets.items()):
                if min(capacity, t + (now - when) * rate) >= capacity:
                    del self._buckets[k]
            if len(self._buckets) >= MAX_RATE_BUCKETS:
                self._buckets.clear()
        self._buckets[key] = (tokens - 1.0, now)
        return True

    async def join(self, name: str, major: int = 1) -> None:
        """Subscribe at the router level (joins the mesh) and start the topic's drain task."""
        topic = self.topic(name, major)
        if topic in self._subscribers:
            return
        assert self._nursery is not None, "Gossip.run() is not running"
        self._subscribers[topic] = []
        self._install_check(topic)
        sub = await self.pubsub.subscribe(topic)
        self._nursery.start_soon(self._drain, topic, sub)

    async def _drain(self, topic: str, sub: Any) -> None:
        async for msg in sub:
            self.counters["received"] += 1
            try:
                origin = ID(msg.from_id).to_base58()
            except Exception:  # noqa: BLE001, S112 - validated already; never stop the drain
                continue
            item = (origin, bytes(msg.data))
            for ch in list(self._subscribers.get(topic, ())):
                try:
                    ch.send_nowait(item)
                except trio.WouldBlock:
                    self.counters["dropped"] += 1
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass

    @asynccontextmanager
    async def subscribe(
        self, name: str, major: int = 1
    ) -> AsyncIterator[trio.MemoryReceiveChannel[tuple[str, bytes]]]:
        """Yield an async iterator of (origin peer id, payload) for this topic."""
        await self.join(name, major)
        topic = self.topic(name, major)
        send, recv = trio.open_memory_channel[tuple[str, bytes]](SUBSCRIBER_QUEUE)
        self._subscribers[topic].append(send)
        try:
            async with recv:
                yield recv
        finally:
            self._subscribers[topic].remove(send)
            send.close()

    async def publish(self, name: str, payload: bytes, major: int = 1) -> None:
        if len(payload) > MAX_GOSSIP_BYTES:
            raise ValueError(f"gossip payloads are limited to {MAX_GOSSIP_BYTES} bytes")
        await self.pubsub.publish(self.topic(name, major), payload)
        self.counters["published"] += 1

    def has_peer(self, peer_id: str) -> bool:
        """Whether pubsub holds a stream to `peer_id`."""
        try:
            return ID.from_base58(peer_id) in self.pubsub.peers
        except Exception:  # noqa: BLE001 - not a peer id: not a pubsub peer
            return False

    async def ensure_peer(self, peer_id: str, timeout_s: float = 10.0) -> bool:
        """(Re)open the pubsub stream to a connected peer. libp2p drops a peer from pubsub when
        one of two parallel connections to it closes, though the other stays up; under load
        that left most peers outside every mesh. Returns whether the peer is registered."""
        self.counters["repairs"] = self.counters.get("repairs", 0) + 1
        try:
            return bool(await self.pubsub.ensure_peer_stream(ID.from_base58(peer_id), timeout_s))
        except Exception as e:  # noqa: BLE001 - the peer went away meanwhile
            log.debug("pubsub stream to %s: %s", peer_id, type(e).__name__)
            return False

    def mesh_size(self, name: str, major: int = 1) -> int:
        return len(self.router.mesh.get(self.topic(name, major), ()))

    def topic_peers(self, name: str, major: int = 1) -> int:
        return len(self.pubsub.peer_topics.get(self.topic(name, major), ()))
