"""Capability adverts (protocols/adverts.md): `/p2pinfer/advert/1.0.0` and the gossip topic
`p2pinfer/<network-id>/adverts/1`.

`AdvertService` owns this node's signed advert (re-signed on every change and well before it
expires, published on the topic), the fetch protocol's handler and client side, and the peer
table's intake: an advert from gossip or a fetch is validated (`net.adverts.AdvertValidator`)
and then upserted. Its sync loop fetches the advert of every newly connected peer at once and
again when gossip has not refreshed it for 1.5 advert intervals, measures RTTs every 3
intervals, and asks GossipSub to take in a connected peer it lost (repair).
"""

from __future__ import annotations

import functools
import logging
import random
import time
from typing import Any

import trio

from p2pinfer.errors import P2PInferError, WireError
from p2pinfer.net.adverts import Advert, AdvertRejected, AdvertValidator, Hardware, sign_advert
from p2pinfer.net.boundary import PeerNetwork
from p2pinfer.net.discovery import DhtDiscovery
from p2pinfer.net.gossip import Gossip
from p2pinfer.net.peertable import PeerInfo, PeerTable
from p2pinfer.wire import Message, encode_message

log = logging.getLogger(__name__)

SOFTWARE = "p2pinfer/0.1.0"
ADVERT_TOPIC = "adverts"
ADVERT_PROTOCOL = "advert"
#: fields `update` may change
ADVERT_FIELDS = frozenset(
    {"model", "spans", "throughput", "load", "tee_digest", "roles", "precision", "weights",
     "manifest"}
)
#: advert fetches and pings running at once
SYNC_CONCURRENCY = 8
#: a peer whose gossip repair was tried is left alone this long
REPAIR_BACKOFF_S = 30.0
#: a failed sync is retried after 1 s, then 2, 4, ... s (at most one advert interval): on a
#: saturated machine, retrying every failure after 1 s kept it saturated
SYNC_RETRY_FIRST_S = 1.0


class PeerWaitTimeout(P2PInferError):
    """`wait_for_peers` ran out of time."""

    code = "timeout"


class AdvertService:
    """This node's advert, the advert protocol and topic, and the peer table they fill."""

    def __init__(self, network: PeerNetwork, *, table: PeerTable, validator: AdvertValidator,
                 hardware: Hardware, roles: tuple[str, ...]) -> None:
        self.network = network
        self.table = table
        self.validator = validator
        self.counters: dict[str, int] = {"advert_fetches": 0, "advert_fetch_failures": 0}
        self._fields: dict[str, Any] = {
            "roles": tuple(roles), "model": "", "spans": (), "throughput": 0.0, "load": 0.0,
            "tee_digest": None,
        }
        self._hardware = hardware
        self._seq = 0
        self._advert: Advert | None = None
        self._raw: bytes | None = None
        self._dirty = trio.Event()
        self._changed = trio.Event()
        self._synced: dict[str, float] = {}
        self._pinged: dict[str, float] = {}
        self._sync_failures: dict[str, int] = {}
        self._repairs: set[str] = set()
        self._repaired_at: dict[str, float] = {}
        self._repair_slots = trio.Semaphore(4)
        self._sync_slots = trio.Semaphore(SYNC_CONCURRENCY)
        self._gossip: Gossip | None = None
        self._dht: DhtDiscovery | None = None
        self._running = False

    # -- our advert --------------------------------------------------------------------------
    @property
    def roles(self) -> tuple[str, ...]:
        return tuple(self._fields["roles"])

    @property
    def advert(self) -> Advert:
        if self._advert is None:
            self.refresh()
        assert self._advert is not None
        return self._advert

    def update(self, **fields: Any) -> None:
        """Change what we advertise; the new advert is signed and published at once."""
        unknown = set(fields) - ADVERT_FIELDS
        if unknown:
            raise ValueError(
                f"unknown advert fields {sorted(unknown)}; known: {sorted(ADVERT_FIELDS)}"
            )
        if "spans" in fields:
            fields["spans"] = tuple((int(a), int(b)) for a, b in fields["spans"])
        if "roles" in fields:
            fields["roles"] = tuple(fields["roles"])
        if "tee_digest" in fields and fields["tee_digest"] is not None:
            fields["tee_digest"] = bytes(fields["tee_digest"])
        self._fields.update(fields)
        self.refresh()
        self._dirty.set()

    def refresh(self) -> None:
        """Sign a new advert (a larger seq, a fresh expiry, the current addresses)."""
        net = self.network
        now = int(time.time() * 1000)
        self._seq = max(self._seq + 1, now)
        addrs = tuple(net.addrs[:16]) if self._running else ()
        f = self._fields
        advert = Advert(
            peer_id=net.peer_id,
            network_id=net.network_id,
            seq=self._seq,
            issued_ms=now,
            expires_ms=now + int(net.config.gossip.advert_ttl_s * 1000),
            addrs=addrs,
            roles=f["roles"],
            model=f["model"],
            spans=f["spans"],
            hardware=self._hardware,
            throughput=float(f["throughput"]),
            load=float(f["load"]),
            tee_digest=f["tee_digest"],
            software=SOFTWARE,
            precision=f.get("precision", ""),
            weights=tuple(f.get("weights", ())),
            manifest=f.get("manifest", ""),
        )
        self._raw = sign_advert(advert, net.identity)
        self._advert = advert

    # -- the peer table ----------------------------------------------------------------------
    def accept(self, data: bytes, origin: str) -> bool:
        """Take a signed advert `origin` sent into the table; False when it was rejected."""
        try:
            advert = self.validator.accept(data, origin)
        except AdvertRejected as e:
            log.debug("advert from %s rejected: %s", origin, e.reason)
            return False
        if advert is None:
            self.table.touch(origin)
        else:
            self.table.upsert(advert)
            self._changed.set()
            self._changed = trio.Event()
        return True

    def expire(self) -> None:
        """Drop rows whose advert expired (or that were not refreshed within the TTL)."""
        for pid in self.table.expire():
            self.validator.forget(pid)
            self._synced.pop(pid, None)
            self._sync_failures.pop(pid, None)

    def peers(self) -> list[PeerInfo]:
        self.expire()
        return self.table.peers()

    async def wait_for_peers(self, n: int, timeout: float) -> list[PeerInfo]:
        """Wait until the table holds at least `n` peers; `PeerWaitTimeout` otherwise."""
        with trio.move_on_after(timeout):
            while len(self.peers()) < n:
                await self._changed.wait()
            return self.peers()
        raise PeerWaitTimeout(f"{len(self.peers())} of {n} peers known after {timeout} s")

    # -- the protocol ------------------------------------------------------------------------
    async def serve(self, msg: Message, peer_id: str) -> bytes:
        """The handler: our signed advert."""
        if msg.t != "get-advert":
            raise WireError(f"unexpected message type {msg.t!r}")
        if self._raw is None:
            self.refresh()
        return encode_message("advert", {"record": self._raw})

    async def fetch(self, peer_id: str) -> PeerInfo | None:
        """Fetch a peer's advert directly; its table row (None if the advert was rejected)."""
        self.counters["advert_fetches"] += 1
        reply = await self.network.request(peer_id, ADVERT_PROTOCOL, "get-advert",
                                           expect={"advert"})
        self.accept(reply.get("record", bytes), peer_id)
        return self.table.get(peer_id)

    def _on_gossip(self, origin: str, data: bytes) -> bool:
        if origin == self.network.peer_id:
            return True
        return self.accept(data, origin)

    # -- running -----------------------------------------------------------------------------
    async def run(self, gossip: Gossip, dht: DhtDiscovery | None = None, *,
                  task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Serve the protocol, join the topic, then publish and sync until cancelled."""
        self._gossip, self._dht, self._running = gossip, dht, True
        self.network.set_handler(ADVERT_PROTOCOL, self.serve)
        gossip.set_validator(ADVERT_TOPIC, self._on_gossip)
        await gossip.join(ADVERT_TOPIC)
        self.refresh()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._publish_loop, gossip)
            nursery.start_soon(self._sync_loop, nursery, gossip)
            task_status.started()

    async def sync(self, peer_id: str, *, fetch: bool = True, ping: bool = True) -> None:
        """Fetch a peer's advert directly and/or measure its RTT (failures are counted and
        retried soon, never raised)."""
        net = self.network
        interval = net.config.gossip.advert_interval_s
        self._synced[peer_id] = time.monotonic()
        if self._dht is not None and fetch:
            await self._dht.add_peer(peer_id)
        async with self._sync_slots:
            try:
                with trio.fail_after(net.config.net.dial_timeout_s):
                    if fetch:
                        await self.fetch(peer_id)
                    if ping and peer_id in self.table:
                        await net.ping(peer_id)
                        # +-half an interval, so connections made together are not pinged
                        # together every 3 intervals from then on
                        self._pinged[peer_id] = time.monotonic() + interval * (random.random() - 0.5)
            except (P2PInferError, trio.TooSlowError) as e:
                self.counters["advert_fetch_failures"] += 1
                log.debug("sync with %s failed: %s", peer_id, e)
                # retry sooner than after a full interval, backing off while it keeps failing
                failures = self._sync_failures.get(peer_id, 0)
                self._sync_failures[peer_id] = failures + 1
                wait = min(interval, SYNC_RETRY_FIRST_S * 2.0 ** min(failures, 16))
                self._synced[peer_id] = time.monotonic() - interval + wait
            else:
                self._sync_failures.pop(peer_id, None)

    async def _publish_loop(self, gossip: Gossip) -> None:
        interval = self.network.config.gossip.advert_interval_s
        last_refresh = time.monotonic()
        while True:
            with trio.move_on_after(interval):
                await self._dirty.wait()
            self._dirty = trio.Event()
            # keep the record fresh well before it expires
            if time.monotonic() - last_refresh >= interval / 2:
                self.refresh()
                last_refresh = time.monotonic()
            if self._raw is not None and gossip.topic_peers(ADVERT_TOPIC):
                try:
                    await gossip.publish(ADVERT_TOPIC, self._raw)
                except Exception as e:  # noqa: BLE001 - gossip is best effort; logged
                    log.debug("advert publish failed: %s", type(e).__name__)
            await trio.sleep(0.2)  # stays far below the gossip rate limit

    async def _sync_loop(self, nursery: trio.Nursery, gossip: Gossip) -> None:
        """New connections: fetch the advert and ping at once. Afterwards gossip keeps adverts
        fresh; a peer whose advert was not refreshed for 1.5 intervals is fetched directly, and
        RTT is measured again every 2.5-3.5 intervals (jittered per peer)."""
        interval = self.network.config.gossip.advert_interval_s
        while True:
            now = time.monotonic()
            wall = time.time()
            connected = set(self.network.connected_peers())
            for pid in connected:
                last = self._synced.get(pid)
                if last is None:
                    self._synced[pid] = now
                    nursery.start_soon(self.sync, pid)
                    continue
                if now - last < interval:
                    continue
                row = self.table.get(pid)
                stale = row is None or wall - row.last_seen > 1.5 * interval
                due_ping = now - self._pinged.get(pid, 0.0) > 3 * interval
                if stale or due_ping:
                    self._synced[pid] = now
                    nursery.start_soon(functools.partial(self.sync, pid, fetch=stale,
                                                         ping=due_ping))
            for pid in connected:
                if (
                    pid not in self._repairs
                    and now - self._repaired_at.get(pid, -REPAIR_BACKOFF_S) >= REPAIR_BACKOFF_S
                    and not gossip.has_peer(pid)
                ):
                    self._repairs.add(pid)
                    nursery.start_soon(self._repair, gossip, pid)
            for pid in list(self._synced):
                if pid not in connected and pid not in self.table:
                    del self._synced[pid]
                    self._pinged.pop(pid, None)
                    self._sync_failures.pop(pid, None)
                    self._repaired_at.pop(pid, None)
            self.expire()
            await trio.sleep(0.25)

    async def _repair(self, gossip: Gossip, peer_id: str) -> None:
        try:
            # give libp2p's own new-peer handling a moment before stepping in
            await trio.sleep(2.0)
            async with self._repair_slots:
                if peer_id in self.network.connected_peers() and not gossip.has_peer(peer_id):
                    self._repaired_at[peer_id] = time.monotonic()
                    await gossip.ensure_peer(peer_id)
        finally:
            self._repairs.discard(peer_id)
