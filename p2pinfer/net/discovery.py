"""Finding peers with no central server: bootstrap re-dial, Kademlia DHT, opt-in mDNS.

- `BootstrapDialer` dials every configured bootstrap address that is not connected, every
  `net.redial_interval_s`, concurrently; so peers find each other again after a bootstrap
  peer restarts.
- `DhtDiscovery` runs libp2p's Kademlia DHT in server mode. Dialed peers are added to its
  routing table by the node (libp2p does not do it). Every node provides the key
  `/p2pinfer/<network-id>/peers` and looks up its providers, which yields peers the bootstrap
  list never named; results are de-duplicated. The DHT's protocol id is fixed by libp2p
  (`/ipfs/kad/1.0.0`), so our keys carry the network id, and a validator for our `p2pinfer`
  record namespace refuses every value (we only use provider records): other networks' or
  strangers' values cannot be stored through us. libp2p's own maintenance (every 10 minutes:
  a lookup per routing-table bucket, then re-providing every key) runs only once, at start:
  every node started together would otherwise walk the DHT at the same moment every 10
  minutes (fifty peer processes on two cores saturated the machine at minute 10 and meshes
  emptied); the node's own lookups (`p2pinfer.net.dialer`, jittered) re-provide the key and keep
  the routing table fresh.
- `MdnsDiscovery` (off unless `net.mdns`) receives libp2p's mDNS events, which fire on
  zeroconf's thread for every host in the process, filters them, and hands them to trio
  through `trio.from_thread`; nothing is dialed automatically: the node decides.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
from libp2p.peer.id import ID
from libp2p.records.validator import Validator
from libp2p.tools.anyio_service import background_trio_service

from p2pinfer.errors import P2PInferError

from .host import DialError, Host, parse_peer_addr

log = logging.getLogger(__name__)

RECORD_NAMESPACE = "p2pinfer"


class BootstrapDialer:
    """Keeps the configured bootstrap peers connected."""

    def __init__(
        self,
        host: Host,
        addrs: list[str],
        interval_s: float,
        on_connected: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self.host = host
        self.interval_s = interval_s
        self.on_connected = on_connected
        self.targets: list[tuple[str, str]] = []  # (addr, peer id)
        for addr in addrs:
            try:
                pid = str(parse_peer_addr(addr).peer_id)
            except DialError as e:
                log.warning("ignoring bootstrap address %s: %s", addr, e)
                continue
            if pid != host.peer_id:
                self.targets.append((addr, pid))
        self.dials = 0
        self.failures = 0
        #: why the last dial of each unreachable target failed: address -> the error
        self.errors: dict[str, DialError] = {}

    async def dial_missing(self) -> int:
        """Dial the targets that are not connected; returns how many connected now."""
        missing = [a for a, pid in self.targets if not self.host.is_connected(pid)]
        if not missing:
            return 0
        results = await self.host.connect_many(missing)
        ok = 0
        for addr, res in results.items():
            self.dials += 1
            if isinstance(res, DialError):
                self.failures += 1
                self.errors[addr] = res
                log.debug("bootstrap %s: %s", addr, res)
                continue
            self.errors.pop(addr, None)
            ok += 1
            if self.on_connected is not None:
                await self.on_connected(res)
        return ok

    async def run(self) -> None:
        while True:
            await self.dial_missing()
            await trio.sleep(self.interval_s)


class _RefuseValues(Validator):
    """We publish no DHT values under our namespace; refuse any that others try to store."""

    def validate(self, key: str, value: bytes) -> None:
        raise P2PInferError("p2pinfer stores no DHT values")

    def select(self, key: str, values: list[bytes]) -> int:
        return 0


class _Kademlia(KadDHT):
    """libp2p's KadDHT whose periodic maintenance walks the network only at its first run
    (populating the routing table from the first connections); later runs do nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.maintenance_walks = 0
        # the maintenance loop re-provides every key it has never re-provided itself, i.e. ours,
        # at its second run; our lookups provide the key every few minutes already
        self.provider_store._republish_provider_records = self._no_republish  # type: ignore[method-assign]

    async def refresh_routing_table(self) -> None:
        if self.maintenance_walks:
            return
        self.maintenance_walks += 1
        await super().refresh_routing_table()

    async def _no_republish(self) -> None:
        return None


class DhtDiscovery:
    """Kademlia DHT (server mode) used to find more peers of our network."""

    def __init__(self, host: Host, network_id: str) -> None:
        self.host = host
        self.network_id = network_id
        self.dht = _Kademlia(host.lp2p, DHTMode.SERVER, enable_random_walk=False)
        self.dht.register_validator(RECORD_NAMESPACE, _RefuseValues())
        self.key = f"/{RECORD_NAMESPACE}/{network_id}/peers"
        self.lookups = 0

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with background_trio_service(self.dht):
            task_status.started()
            await trio.sleep_forever()

    async def add_peer(self, peer_id: str) -> None:
        try:
            await self.dht.add_peer(ID.from_base58(peer_id), skip_server_mode_check=True)
        except Exception as e:  # noqa: BLE001 - a dead peer or a table full of fresher ones
            log.debug("DHT add_peer %s: %s", peer_id, type(e).__name__)

    def routing_table_peers(self) -> list[str]:
        return [str(p) for p in self.dht.routing_table.get_peer_ids()]

    @property
    def routing_table_size(self) -> int:
        return int(self.dht.get_routing_table_size())

    async def find_network_peers(self, timeout_s: float = 10.0) -> dict[str, list[str]]:
        """Provide our network key and return the other providers: peer id -> multiaddrs."""
        found: dict[str, list[str]] = {}
        with trio.move_on_after(timeout_s):
            try:
                await self.dht.provide(self.key)
                providers = await self.dht.find_providers(self.key, count=64)
            except Exception as e:  # noqa: BLE001 - the DHT raises assorted types
                log.debug("DHT lookup failed: %s", type(e).__name__)
                return found
            self.lookups += 1
            for info in providers:
                pid = str(info.peer_id)
                if pid == self.host.peer_id:
                    continue
                addrs = found.setdefault(pid, [])
                for a in info.addrs:
                    full = f"{a}/p2p/{pid}" if "/p2p/" not in str(a) else str(a)
                    if full not in addrs:
                        addrs.append(full)
        return found


class MdnsDiscovery:
    """Hands libp2p's mDNS discoveries (zeroconf's thread) to trio as peer ids + addrs."""

    QUEUE = 64

    def __init__(self, host: Host) -> None:
        self.host = host
        self._send, self.events = trio.open_memory_channel[tuple[str, list[str]]](self.QUEUE)
        self._token: trio.lowlevel.TrioToken | None = None
        self.dropped = 0

    def _on_discovered(self, info: Any) -> None:  # runs on zeroconf's thread
        pid = str(info.peer_id)
        if pid == self.host.peer_id or self._token is None:
            return
        addrs = [f"{a}/p2p/{pid}" if "/p2p/" not in str(a) else str(a) for a in info.addrs]
        try:
            trio.from_thread.run_sync(self._offer, (pid, addrs), trio_token=self._token)
        except (trio.RunFinishedError, trio.Cancelled):
            pass

    def _offer(self, item: tuple[str, list[str]]) -> None:
        try:
            self._send.send_nowait(item)
        except trio.WouldBlock:
            self.dropped += 1
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def run(
        self,
        on_peer: Callable[[str, list[str]], Awaitable[None]],
        *,
        task_status: Any = trio.TASK_STATUS_IGNORED,
    ) -> None:
        from libp2p.discovery.events.peerDiscovery import peerDiscovery

        self._token = trio.lowlevel.current_trio_token()
        peerDiscovery.register_peer_discovered_handler(self._on_discovered)
        try:
            task_status.started()
            async with self.events:
                async for pid, addrs in self.events:
                    await on_peer(pid, addrs)
        finally:
            peerDiscovery.unregister_peer_discovered_handler(self._on_discovered)
            self._token = None
            self._send.close()
