"""Keeping enough connections: the discovery loops that dial the peers we learn of.

`PeerDialer` dials the unconnected peers the DHT's routing table and provider lookups name, the
peers whose adverts the table holds, and peers found by mDNS, until the node has about
`target_peers` connections (a star around one bootstrap peer is fragile for gossip). One side
of each pair dials (the smaller peer id), at most `MAX_DIALS_PER_ROUND` at once, and a peer
that could not be dialled is left alone for `REDIAL_BACKOFF_S`. No wire protocol of its own.
"""

from __future__ import annotations

import random
import time

import trio

from p2pinfer.net.discovery import DhtDiscovery
from p2pinfer.net.host import DialError, Host
from p2pinfer.net.peertable import PeerTable

#: provider lookups back off along this schedule (seconds) while connected ...
DHT_SCHEDULE_S = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0)
#: ... and, once the node holds `target_peers` (> 0) connections, stretch to about this (+-25%,
#: so peers started together do not walk at once): a lookup walks the DHT and re-announces our
#: provider record (tens of streams); with fifty peers on one machine, a lookup every 30 s by
#: every peer was a steady share of the CPU. What a lookup finds is dialled only while the node
#: is below its target (or has none: target 0 leaves dialling to the DHT alone).
DHT_WELL_CONNECTED_S = 300.0
#: the node dials peers it learns of (DHT, adverts) until it has this many connections
TARGET_PEERS = 16
MAX_DIALS_PER_ROUND = 8
REDIAL_BACKOFF_S = 30.0


class PeerDialer:
    """The discovery loops of one node; `counters` counts successful dials by source."""

    def __init__(self, host: Host, table: PeerTable, *, dht: DhtDiscovery | None = None,
                 target_peers: int = TARGET_PEERS) -> None:
        self.host = host
        self.table = table
        self.dht = dht
        #: connections the discovery loop aims for
        self.target_peers = target_peers
        self.counters: dict[str, int] = {"dht_dials": 0, "advert_dials": 0, "mdns_dials": 0}
        self._failed: dict[str, float] = {}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """The discovery loop, and the DHT lookup loop when there is a DHT, until cancelled."""
        async with trio.open_nursery() as nursery:
            if self.dht is not None:
                nursery.start_soon(self._lookup_loop, self.dht)
            nursery.start_soon(self._discovery_loop)
            task_status.started()

    async def on_mdns_peer(self, peer_id: str, addrs: list[str]) -> None:
        if not self.host.is_connected(peer_id):
            await self.dial_found({peer_id: addrs}, "mdns_dials")

    async def dial_found(self, found: dict[str, list[str]], counter: str) -> None:
        """Dial the unconnected peers in `found` (peer id -> addrs), at most
        `MAX_DIALS_PER_ROUND` at once; a peer that failed is left alone for
        `REDIAL_BACKOFF_S`."""
        me = self.host.peer_id
        now = time.monotonic()
        todo = [
            (pid, addrs)
            for pid, addrs in found.items()
            if pid != me
            and addrs
            and (counter == "mdns_dials" or me < pid)  # one dialer per pair
            and not self.host.is_connected(pid)
            and now - self._failed.get(pid, -REDIAL_BACKOFF_S) >= REDIAL_BACKOFF_S
        ][:MAX_DIALS_PER_ROUND]

        async def dial(pid: str, addrs: list[str]) -> None:
            for addr in addrs[:4]:
                try:
                    await self.host.connect(addr)
                except DialError:
                    continue
                self.counters[counter] += 1
                self._failed.pop(pid, None)
                return
            self._failed[pid] = time.monotonic()

        async with trio.open_nursery() as nursery:
            for pid, addrs in todo:
                nursery.start_soon(dial, pid, addrs)

    def _dht_candidates(self, dht: DhtDiscovery) -> dict[str, list[str]]:
        """Peers in the DHT routing table, with the addresses libp2p learned for them."""
        return {pid: [a if "/p2p/" in a else f"{a}/p2p/{pid}" for a in self.host.known_addrs(pid)]
                for pid in dht.routing_table_peers()}

    def _advert_candidates(self) -> dict[str, list[str]]:
        """Peers whose signed adverts we hold, at the addresses they announce."""
        return {row.peer_id: list(row.addrs) for row in self.table.peers()}

    def _well_connected(self) -> bool:
        """The node holds its target of connections (a target of 0 is never met)."""
        return 0 < self.target_peers <= len(self.host.connected_peers())

    async def _lookup_loop(self, dht: DhtDiscovery) -> None:
        """Kademlia provider lookups for our network key; results join the dial candidates."""
        step = 0
        last = float("-inf")
        wait_well = DHT_WELL_CONNECTED_S
        while True:
            await trio.sleep(DHT_SCHEDULE_S[min(step, len(DHT_SCHEDULE_S) - 1)])
            if not self.host.connected_peers():
                step = 0
                continue
            step += 1
            if self._well_connected() and trio.current_time() - last < wait_well:
                continue
            last = trio.current_time()
            # jittered, so peers started together do not all walk the DHT at once
            wait_well = DHT_WELL_CONNECTED_S * random.uniform(0.75, 1.25)
            for pid in self.host.connected_peers():
                await dht.add_peer(pid)
            found = await dht.find_network_peers()
            if not self._well_connected():
                await self.dial_found(found, "dht_dials")

    async def _discovery_loop(self) -> None:
        """Keep about `target_peers` connections, dialing peers the DHT's routing table and
        the adverts name."""
        while True:
            await trio.sleep(1.0)
            if self.target_peers - len(self.host.connected_peers()) <= 0:
                continue
            if self.dht is not None:
                await self.dial_found(self._dht_candidates(self.dht), "dht_dials")
            await self.dial_found(self._advert_candidates(), "advert_dials")
