"""The node: configuration -> identity -> libp2p host -> discovery, gossip, services.

`async with Node(cfg) as node:` (under trio) starts everything in one nursery and tears it all
down on exit or cancellation: background tasks first, then every connection, then the host.
The node composes; each protocol lives in its own module (specs in protocols/):

- `/p2pinfer/advert/1.0.0` and the gossip topic `p2pinfer/<network-id>/adverts/1`: signed
  capability adverts and the peer table they fill (adverts.md; services/adverts.py)
- `/p2pinfer/ping/1.0.0`     round-trip time, kept per peer in the peer table (services/ping.py)
- `/p2pinfer/tensor/1.0.0`   send a tensor; the receiver echoes or stores it (tensor-transfer.md,
  services/tensor.py)
- attestation and attested channels (attest.md, channel.md; services/attest.py), the stage
  and votes protocols (stage.md, votes.md; p2pinfer.inference)
- the local control socket (control.md; services/control.py)

The discovery loops that dial peers found by the DHT, adverts and mDNS are `net/dialer.py`.
The node keeps which peers did not answer its last dial, stream or ping (`net/reachability.py`;
requesters leave them out of new routes) and probes them until they answer, and closes every
connection with a peer it banned (`net/host.py`'s connection gate).
Services above the node (the HTTP API) are passed in as `Node(cfg, services=[...])` and run
in the same nursery. The rest of this module is the embedding API (`PeerNetwork` for the
services, `generate`/`embed`/`infer_critical` for applications).
"""

from __future__ import annotations

import logging
import os
import platform
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, Protocol, Self

import trio

from p2pinfer.config import NodeConfig
from p2pinfer.errors import P2PInferError, RemoteError
from p2pinfer.identity import NodeIdentity, devnet_identity
from p2pinfer.inference.critical import infer_critical
from p2pinfer.inference.secure_hop import ChannelHop
from p2pinfer.inference.service import (
    InferenceService,
    chat,
    chat_stream,
    conversation,
    embed,
    generate,
    generate_stream,
)
from p2pinfer.net.adverts import Advert, AdvertValidator, Hardware
from p2pinfer.net.boundary import StreamingHandler
from p2pinfer.net.dialer import TARGET_PEERS, PeerDialer
from p2pinfer.net.discovery import BootstrapDialer, DhtDiscovery, MdnsDiscovery
from p2pinfer.net.gossip import Gossip
from p2pinfer.net.host import DialError, DialTimeout, Host, open_host
from p2pinfer.net.peertable import PeerInfo, PeerTable
from p2pinfer.net.reachability import Reachability
from p2pinfer.net.streams import (
    FramedStream,
    InboundGuard,
    RequestHandler,
    StreamClosedError,
    StreamPool,
    StreamTimeout,
    protocol_id,
)
from p2pinfer.services.adverts import ADVERT_TOPIC, SOFTWARE, AdvertService, PeerWaitTimeout
from p2pinfer.services.attest import NodeAttestation
from p2pinfer.services.control import serve_control
from p2pinfer.services.ping import PING_PROTOCOL, serve_ping
from p2pinfer.services.ping import ping as ping_peer
from p2pinfer.services.tensor import TENSOR_PROTOCOL, TensorService
from p2pinfer.wire import EndOfStream, Message

__all__ = ["Node", "NodeService", "PeerWaitTimeout", "without_teardown_race"]

log = logging.getLogger(__name__)

#: a peer that does not answer a ping within this many seconds is unreachable
PING_TIMEOUT_S = 5.0
#: reachability probes (a dial and a ping each) one node runs at once; more wait their turn
MAX_PROBES_IN_FLIGHT = 8


class NodeService(Protocol):
    """A service started in the node's nursery once everything else runs (e.g. the HTTP API,
    which sits above the node): called as `service(node, task_status=...)`, it reports with
    `task_status.started(info)` and runs until cancelled when the node stops."""

    async def __call__(self, node: Node, *,
                       task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None: ...


def _is_teardown_race(error: BaseException) -> bool:
    return isinstance(error, RuntimeError) and "closed to new arrivals" in str(error)


def without_teardown_race(error: BaseException) -> BaseException | None:
    """`error` without py-libp2p 0.8.1's teardown race (a pubsub stream that arrives while the
    host's nursery closes raises "Nursery is closed to new arrivals"; notes/py-libp2p.md):
    None when nothing else is left, else the rest (a group keeps its other members)."""
    if isinstance(error, BaseExceptionGroup):
        _, rest = error.split(_is_teardown_race)
        return rest
    return None if _is_teardown_race(error) else error


def _hardware() -> Hardware:
    mem = 0
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        pass
    gpu = ""
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)[:128]
    except Exception:  # noqa: BLE001 - a broken driver must not stop the node
        gpu = ""
    return Hardware(
        cpu_count=os.cpu_count() or 0,
        cpu_kind=(platform.processor() or platform.machine())[:128],
        gpu_kind=gpu,
        memory_bytes=mem,
    )


class Node:
    """One peer of a p2pinfer network. See the module docstring for what runs inside."""

    def __init__(self, config: NodeConfig, *, identity: NodeIdentity | None = None,
                 services: Sequence[NodeService] = ()) -> None:
        config.validate()
        self.config = config
        if identity is None and config.node.devnet_key:
            identity = devnet_identity()
        if identity is None:
            identity, _ = NodeIdentity.load_or_create(config.key_path)
        self.identity = identity
        self.peer_id = identity.peer_id
        self.network_id = config.node.network_id
        lim = config.limits
        self.table = PeerTable(ttl_s=config.gossip.advert_ttl_s)
        self.validator = AdvertValidator(self.network_id, max_bytes=lim.max_advert_bytes)
        #: peers that did not answer a dial, a stream or a ping (left out of new routes)
        self.reach = Reachability()
        self.guard = InboundGuard.from_limits(lim, on_frame=self.reach.heard)
        self.started_at = 0.0
        self._extra_services = tuple(services)
        #: what each of `services` reported when it started (e.g. the HTTP API's base URL), in
        #: the order given
        self.service_info: list[Any] = []
        #: the tensor protocol (echo and store; demo and benchmarks)
        self.tensors = TensorService(self)
        #: this node's advert, the advert protocol and topic, and the peer table's intake
        self.adverts = AdvertService(self, table=self.table, validator=self.validator,
                                     hardware=_hardware(), roles=tuple(config.node.roles))
        self._target_peers = TARGET_PEERS
        #: the discovery loops (`p2pinfer.net.dialer`), while running
        self.dialer: PeerDialer | None = None
        self._pool = StreamPool(idle_s=min(10.0, config.limits.stream_timeout_s / 3))
        self._stack: AsyncExitStack | None = None
        self._nursery: trio.Nursery | None = None
        self._host: Host | None = None
        self.gossip: Gossip | None = None
        self.dht: DhtDiscovery | None = None
        self.bootstrap: BootstrapDialer | None = None
        self.mdns: MdnsDiscovery | None = None
        #: the inference service (stage server when `serve.model` is set, requester clients)
        self.inference: InferenceService | None = None
        #: attestation and attested channels (`p2pinfer.services.attest`), when `trust.attester`
        #: is set
        self.attestation: NodeAttestation | None = None
        self._counters: dict[str, int] = {"pings": 0}

    def __repr__(self) -> str:
        return f"Node(peer_id={self.peer_id}, network={self.network_id})"

    # -- lifecycle ---------------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        stack = AsyncExitStack()
        await stack.__aenter__()
        try:
            self._host = await stack.enter_async_context(open_host(self.identity, self.config.net))
            self._nursery = await stack.enter_async_context(trio.open_nursery())
            await self._start(self._nursery)
        except BaseException:
            if self._nursery is not None:
                self._nursery.cancel_scope.cancel()
            await stack.aclose()
            raise
        self._stack = stack
        self.started_at = time.time()
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Stop background work, close connections and the host. A body exception propagates
        unchanged (never wrapped in an ExceptionGroup)."""
        stack, self._stack = self._stack, None
        if stack is None:
            return
        assert self._nursery is not None
        self._nursery.cancel_scope.cancel()
        with trio.CancelScope(shield=True):
            await self._pool.aclose()
        try:
            await stack.aclose()
        except BaseException as e:  # noqa: BLE001 - filtered and re-raised below
            rest = without_teardown_race(e)
            if rest is not None:
                raise rest from None
            log.debug("libp2p scheduled work on its closing nursery during teardown (ignored)")

    @property
    def host(self) -> Host:
        if self._host is None:
            raise P2PInferError("the node is not running (use `async with Node(cfg) as node`)")
        return self._host

    async def _start(self, nursery: trio.Nursery) -> None:
        host = self.host
        # a banned peer's connections are closed as soon as they are made
        host.gate_connections(self.guard.is_banned, self._refused_connection)
        self.set_handler(PING_PROTOCOL, serve_ping)
        self.set_handler(TENSOR_PROTOCOL, self.tensors.serve)

        self.gossip = Gossip(host, self.network_id, self.config.gossip, on_rpc=self.reach.heard)
        await nursery.start(self.gossip.run)
        if self.config.net.dht:
            self.dht = DhtDiscovery(host, self.network_id)
            await nursery.start(self.dht.run)
        await nursery.start(self.adverts.run, self.gossip, self.dht)
        nursery.start_soon(self._watch_reachability)
        self.dialer = PeerDialer(host, self.table, dht=self.dht, target_peers=self._target_peers)
        await nursery.start(self.dialer.run)
        if self.config.net.mdns:
            self.mdns = MdnsDiscovery(host)
            await nursery.start(self.mdns.run, self.dialer.on_mdns_peer)
        if self.config.net.bootstrap:
            self.bootstrap = BootstrapDialer(
                host, self.config.net.bootstrap, self.config.net.redial_interval_s
            )
            await self.bootstrap.dial_missing()
            nursery.start_soon(self.bootstrap.run)
        hop = None
        if self.config.trust.attester != "none":
            self.attestation = NodeAttestation(self)
            await nursery.start(self.attestation.run)
            if self.config.trust.channels_required:
                hop = ChannelHop(self.attestation)
        self.inference = InferenceService(self, hop=hop, trust=self.attestation)
        await nursery.start(self.inference.run)
        if self.config.control.enabled:
            await nursery.start(serve_control, self, self.config.control_path)
        for service in self._extra_services:
            self.service_info.append(await nursery.start(service, self))

    @property
    def target_peers(self) -> int:
        """Connections the discovery loops aim for."""
        return self._target_peers

    @target_peers.setter
    def target_peers(self, n: int) -> None:
        self._target_peers = n
        if self.dialer is not None:
            self.dialer.target_peers = n

    @property
    def counters(self) -> dict[str, int]:
        """Pings, advert fetches and their failures, and dials by source (DHT, adverts,
        mDNS)."""
        dials = self.dialer.counters if self.dialer is not None else \
            {"dht_dials": 0, "advert_dials": 0, "mdns_dials": 0}
        return {**self.adverts.counters, **self._counters, **dials}

    # -- identity and peers ------------------------------------------------------------------
    @property
    def addrs(self) -> list[str]:
        return self.host.addrs

    def peers(self) -> list[PeerInfo]:
        """Peers with a valid, unexpired advert, sorted by peer id."""
        return self.adverts.peers()

    def peer(self, peer_id: str) -> PeerInfo | None:
        return self.table.get(peer_id)

    def serving(self, model: str, layer: int | None = None) -> list[PeerInfo]:
        """Peers serving `model` (optionally a span covering `layer`), lowest RTT first."""
        self.adverts.expire()
        return self.table.serving(model, layer)

    def connected_peers(self) -> list[str]:
        return self.host.connected_peers()

    async def wait_for_peers(self, n: int, timeout: float) -> list[PeerInfo]:
        """Wait until the peer table holds at least `n` peers; `PeerWaitTimeout` otherwise."""
        return await self.adverts.wait_for_peers(n, timeout)

    async def dial(self, maddr: str) -> str:
        """Connect to a multiaddr with /p2p/<id> (no advert fetch); returns the peer id.
        A failed dial marks the peer unreachable; a successful one reachable again. A peer
        banned here is not dialled (`DialError`)."""
        if "/p2p/" in maddr and self.guard.is_banned(maddr.rsplit("/p2p/", 1)[1]):
            raise DialError(f"{maddr.rsplit('/p2p/', 1)[1]} is banned by this node")
        try:
            pid = await self.host.connect(maddr)
        except DialError as e:
            if "/p2p/" in maddr:
                self.reach.failed(maddr.rsplit("/p2p/", 1)[1], str(e))
            raise
        self.reach.answered(pid)
        return pid

    async def connect(self, maddr: str) -> str:
        """Dial a peer by multiaddr (with /p2p/<id>) and fetch its advert; returns its id."""
        pid = await self.dial(maddr)
        await self.adverts.sync(pid)
        return pid

    async def ban(self, peer_id: str, seconds: float) -> None:
        """Refuse a peer for `seconds`: its connections are closed now and as soon as it makes
        new ones, its streams are refused, and it is not dialled."""
        self.guard.ban(peer_id, seconds)
        await self.host.disconnect(peer_id)

    def unban(self, peer_id: str) -> None:
        self.guard.unban(peer_id)

    def _refused_connection(self, peer_id: str) -> None:
        self.guard.counters["refused_connections"] += 1
        log.info("closed a connection from banned peer %s (%.0f s of its ban left)", peer_id,
                 self.guard.ban_left(peer_id))

    def unreachable(self) -> set[str]:
        """Peers that did not answer this node's last dial, stream or ping and have not
        answered since (`p2pinfer.net.reachability`)."""
        return self.reach.unreachable()

    async def probe(self, peer_id: str, *, addrs: Sequence[str] = ()) -> bool:
        """Whether a peer answers now: dial it unless connected (from `addrs` and its
        advert's addresses), ping it. A connection that carries no pong in time, and no frame
        from the peer on any other stream meanwhile (left stale by an outage), is closed and the
        peer dialled afresh once; one that kept delivering frames is alive, only slow (a loaded
        machine), and is kept: closing it would kill every stream it carries. The outcome marks
        the peer reachable or not."""
        if peer_id == self.peer_id:
            return True
        try:
            if self.host.is_connected(peer_id):
                asked = self.reach.clock()
                try:
                    await self.ping(peer_id, count=1)
                    return True
                except (P2PInferError, OSError) as e:
                    if isinstance(e, DialTimeout) and self.reach.heard_since(peer_id, asked):
                        self.reach.answered(peer_id)
                        return True
                    await self.host.disconnect(peer_id)
            if not await self._dial_known(peer_id, addrs):
                return False
            await self.ping(peer_id, count=1)
            return True
        except (P2PInferError, OSError) as e:
            log.debug("probe of %s failed: %s", peer_id, e)
            return False

    async def _dial_known(self, peer_id: str, addrs: Sequence[str]) -> bool:
        row = self.table.get(peer_id)
        known = list(dict.fromkeys([*addrs, *(row.addrs if row is not None else ())]))
        for addr in known[:8]:
            full = addr if "/p2p/" in addr else f"{addr}/p2p/{peer_id}"
            try:
                await self.dial(full)
                return True
            except DialError:
                continue  # each failed dial marked it already
        if not known:
            self.reach.failed(peer_id, "no known address")
        return False

    async def _watch_reachability(self) -> None:
        """A routable peer whose connection dropped is probed at once (a killed process
        refuses the dial, so it leaves new routes within a second); unreachable peers are
        probed again on their back-off schedule until they answer or leave the table."""
        was_connected: set[str] = set()
        probing: set[str] = set()
        # a burst of dropped connections (a loaded machine, a partition) is probed a few at a
        # time: probing them all at once adds dials and pings to the load that caused it
        slots = trio.CapacityLimiter(MAX_PROBES_IN_FLIGHT)

        async def probe(pid: str) -> None:
            try:
                async with slots:
                    if pid in self.table:
                        await self.probe(pid)
                    else:
                        self.reach.forget(pid)
            finally:
                probing.discard(pid)

        async with trio.open_nursery() as nursery:
            while True:
                connected = set(self.host.connected_peers())
                routable = {r.peer_id for r in self.table.peers() if r.spans}
                todo = {p for p in was_connected - connected if p in routable}
                todo |= {p for p in self.reach.due() if p in self.table}
                # an unreachable peer that connected to us again is probed at once
                todo |= {p for p in connected - was_connected if self.reach.is_down(p)}
                for pid in self.reach.unreachable():
                    row = self.table.get(pid)
                    failed_at = self.reach.failed_at(pid)
                    if row is None:
                        self.reach.forget(pid)
                    elif failed_at is not None and row.advert.issued_ms / 1000 > failed_at:
                        todo.add(pid)  # it announced itself since: a restart, say
                for pid in todo - probing:
                    probing.add(pid)
                    nursery.start_soon(probe, pid)
                was_connected = connected
                await trio.sleep(0.25)

    # -- adverts (p2pinfer.services.adverts) ----------------------------------------------
    @property
    def advert(self) -> Advert:
        """This node's current signed advert."""
        return self.adverts.advert

    def update_advert(self, **fields: Any) -> None:
        """Change what we advertise (model, spans, throughput, load, tee_digest, roles,
        precision).
        The new advert is signed and published at once and then periodically."""
        self.adverts.update(**fields)

    async def fetch_advert(self, peer_id: str) -> PeerInfo | None:
        """Fetch a peer's advert directly; returns its table row (None if it was rejected)."""
        return await self.adverts.fetch(peer_id)

    # -- ping (p2pinfer.services.ping) -----------------------------------------------------
    async def ping(self, peer_id: str, *, count: int = 2, timeout: float | None = None) -> float:
        """Round-trip time in ms over one ping stream (the first exchange warms it up). No
        pong within `timeout` (default: `PING_TIMEOUT_S`, at most `net.dial_timeout_s`) raises
        `DialError`; a failed ping marks the peer unreachable (unless other frames from it arrived
        meanwhile), a pong reachable again."""
        limit = timeout if timeout is not None else min(PING_TIMEOUT_S,
                                                        self.config.net.dial_timeout_s)
        asked = self.reach.clock()
        try:
            with trio.fail_after(limit):
                best = await ping_peer(self, peer_id, count=count)
        except trio.TooSlowError:
            # a peer whose frames kept arriving meanwhile is slow (a loaded machine), not gone
            if not self.reach.heard_since(peer_id, asked):
                self.reach.failed(peer_id, f"no pong within {limit} s")
            raise DialTimeout(f"{peer_id} did not answer a ping within {limit} s") from None
        except (P2PInferError, OSError) as e:
            self.reach.failed(peer_id, f"ping failed: {e}")
            raise
        self._counters["pings"] += 1
        self.reach.answered(peer_id)
        self.table.record_rtt(peer_id, best)
        return best

    # -- gossip ------------------------------------------------------------------------------
    async def publish(self, topic_name: str, payload: bytes) -> None:
        assert self.gossip is not None
        await self.gossip.publish(topic_name, payload)

    @asynccontextmanager
    async def subscribe(
        self, topic_name: str
    ) -> AsyncIterator[trio.MemoryReceiveChannel[tuple[str, bytes]]]:
        """`async with node.subscribe("votes") as msgs: async for peer, payload in msgs: ...`"""
        assert self.gossip is not None
        async with self.gossip.subscribe(topic_name) as recv:
            yield recv

    # -- streams -----------------------------------------------------------------------------
    def set_handler(
        self,
        name: str,
        handler: RequestHandler | StreamingHandler,
        *,
        streaming: bool = False,
        version: str = "1.0.0",
    ) -> None:
        """Serve `/p2pinfer/<name>/<version>`. A request handler is
        `async (msg, peer_id) -> reply bytes`; a streaming one (`streaming=True`) is
        `async (stream: FramedStream, peer_id) -> None` and owns the stream until it returns."""
        pid = protocol_id(name, version)
        if streaming:
            wrapped = self.guard.stream_handler(handler)  # type: ignore[arg-type]
        else:
            wrapped = self.guard.request_handler(handler)  # type: ignore[arg-type]
        self.host.set_stream_handler(pid, wrapped)

    async def open_stream(self, peer_id: str, name: str, *, version: str = "1.0.0") -> FramedStream:
        """A framed message stream to `peer_id`: `async with await node.open_stream(...) as s`."""
        lim = self.config.limits
        proto = protocol_id(name, version)
        timeout = self.config.net.dial_timeout_s
        was_connected = self.host.is_connected(peer_id)
        asked = self.reach.clock()
        try:
            raw = await self.host.new_stream(peer_id, proto, timeout_s=timeout)
        except DialError as e:
            if not (was_connected and isinstance(e, DialTimeout)) \
                    or self.reach.heard_since(peer_id, asked):
                # (a connection that delivered frames meanwhile is alive: slow, not stale)
                self.reach.failed(peer_id, str(e))
                raise
            # the connection may be stale (an outage outlived TCP's patience): close it and
            # open the stream on a fresh one
            await self.host.disconnect(peer_id)
            try:
                raw = await self.host.new_stream(peer_id, proto, timeout_s=timeout)
            except DialError as e2:
                self.reach.failed(peer_id, str(e2))
                raise e2 from e
        self.reach.answered(peer_id)
        return FramedStream(
            raw, peer_id, max_frame=lim.max_frame_bytes, timeout_s=lim.stream_timeout_s,
            on_frame=self.reach.heard,
        )

    async def request(
        self,
        peer_id: str,
        name: str,
        t: str,
        fields: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
        expect: set[str] | None = None,
        version: str = "1.0.0",
    ) -> Message:
        """One request, one reply. An error reply raises `RemoteError`."""
        limit = timeout if timeout is not None else self.config.limits.stream_timeout_s
        proto = protocol_id(name, version)
        try:
            with trio.fail_after(limit):
                stream = await self._pool.take(peer_id, proto)
                if stream is not None:
                    try:
                        return await self._exchange(stream, proto, t, fields, expect)
                    except (StreamClosedError, EndOfStream):
                        pass  # the peer closed the idle stream before reading: not processed
                stream = await self.open_stream(peer_id, name, version=version)
                self._pool.opened += 1
                return await self._exchange(stream, proto, t, fields, expect)
        except trio.TooSlowError:
            raise StreamTimeout(f"{name} request to {peer_id} took longer than {limit} s") from None

    async def _exchange(
        self,
        stream: FramedStream,
        proto: str,
        t: str,
        fields: dict[str, Any] | None,
        expect: set[str] | None,
    ) -> Message:
        """One request and its reply on `stream`; the stream is pooled again only if the
        exchange completed (a typed error reply counts as complete)."""
        reusable = False
        try:
            await stream.send(t, fields)
            reply = await stream.recv(expect=expect)
            reusable = True
            return reply
        except RemoteError:
            reusable = True
            raise
        finally:
            if not (reusable and self._pool.give(stream, proto)):
                await stream.aclose()

    # -- tensors (p2pinfer.services.tensor; demo and benchmark) ----------------------------
    @property
    def stored_tensors(self) -> dict[str, Any]:
        """The last tensor each peer asked this node to store."""
        return self.tensors.stored

    async def send_tensor(self, peer_id: str, tensor: Any, *, timeout: float | None = None) -> Any:
        """Send `tensor` over `/p2pinfer/tensor/1.0.0` and return the echoed copy."""
        return await self.tensors.send(peer_id, tensor, timeout=timeout)

    async def store_tensor(
        self, peer_id: str, tensor: Any, *, timeout: float | None = None
    ) -> bytes:
        """Send `tensor` to be stored by the peer; returns the SHA-256 it computed."""
        return await self.tensors.store(peer_id, tensor, timeout=timeout)

    # -- inference (p2pinfer.inference.service) ----------------------------------------------
    def generate_stream(self, prompt: str, *, model: str, **kw: Any) -> AsyncIterator[Any]:
        """Stream the tokens of a distributed generation (`TokenEvent`s); once the iteration
        ended, the stream's `result` is the whole `Generation` (route, verification, timings)."""
        return generate_stream(self._inference_service(), prompt, model=model, **kw)

    async def generate(self, prompt: str, *, model: str, **kw: Any) -> Any:
        """Run a whole distributed generation; returns a `Generation`."""
        return await generate(self._inference_service(), prompt, model=model, **kw)

    def chat_stream(self, messages: list[dict[str, str]], *, model: str, **kw: Any
                    ) -> AsyncIterator[Any]:
        """Stream the answer to a chat (`messages` = [{"role", "content"}, ...] ending with the
        user's) formatted with the model's chat template; once the iteration ended, the
        stream's `result` is the `Generation`. Stops on the model's end-of-turn token."""
        return chat_stream(self._inference_service(), messages, model=model, **kw)

    async def chat(self, messages: list[dict[str, str]], *, model: str, **kw: Any) -> Any:
        """The whole answer to a chat; returns a `Generation`."""
        return await chat(self._inference_service(), messages, model=model, **kw)

    def conversation(self, *, model: str, **kw: Any) -> Any:
        """A multi-turn chat (async context manager) whose earlier turns stay in the route's
        KV caches: `send(text)` streams an answer, `ask(text)` returns it, `reset()`."""
        return conversation(self._inference_service(), model=model, **kw)

    async def embed(self, texts: str | list[str], *, model: str, **kw: Any) -> Any:
        """Sentence embeddings [n, H] of `texts`, computed through the network."""
        return (await self.embeddings(texts, model=model, **kw)).vectors

    async def embeddings(self, texts: str | list[str], *, model: str, **kw: Any) -> Any:
        """Sentence embeddings of `texts` and how each was made (`Embeddings`: routes,
        verification, re-plans, timings)."""
        return await embed(self._inference_service(), texts, model=model, **kw)

    async def infer_critical(self, features: Any, *, model: str, **kw: Any) -> Any:
        """Critical-mode inference of a provable MLP: features (tokens, hidden) in, a
        `CriticalResult` out (the output and every stage's verified proof)."""
        return await infer_critical(self._inference_service(), features, model=model, **kw)

    async def wait_for_route(self, model: str, *, timeout: float = 30.0) -> Any:
        """Wait until the peer table holds peers covering a route for `model`."""
        return await self._inference_service().wait_for_route(model, timeout)

    def _inference_service(self) -> Any:
        if self.inference is None:
            raise P2PInferError("the node is not running (use `async with Node(cfg) as node`)")
        return self.inference

    # -- status ------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """A JSON-able summary: identity, addresses, counters (rejected adverts by reason...)."""
        counters: dict[str, Any] = dict(self.counters)
        counters["adverts"] = self.validator.counters()
        counters["streams"] = self.guard.status()
        counters["reachability"] = self.reach.status()
        if self.gossip is not None:
            counters["gossip"] = dict(self.gossip.counters)
            counters["gossip"]["mesh"] = self.gossip.mesh_size(ADVERT_TOPIC)
            counters["gossip"]["topic_peers"] = self.gossip.topic_peers(ADVERT_TOPIC)
        if self.bootstrap is not None:
            counters["bootstrap"] = {
                "dials": self.bootstrap.dials,
                "failures": self.bootstrap.failures,
            }
        if self.dht is not None:
            counters["dht"] = {
                "lookups": self.dht.lookups,
                "routing_table": self.dht.routing_table_size,
            }
        if self.attestation is not None:
            counters["attestation"] = self.attestation.status()
        inference = self.inference.status() if self.inference is not None else None
        return {
            "peer_id": self.peer_id,
            "addrs": self.addrs,
            "network_id": self.network_id,
            "roles": list(self.adverts.roles),
            "connected": len(self.host.connected_peers()),
            "known_peers": len(self.table),
            "uptime_s": round(time.time() - self.started_at, 3) if self.started_at else 0.0,
            "software": SOFTWARE,
            "tasks": _task_count(),
            "counters": counters,
            "inference": inference,
        }


def _task_count() -> int:
    """Live trio tasks in this process (walked from the root task); 0 outside trio."""
    try:
        root = trio.lowlevel.current_root_task()
    except RuntimeError:
        return 0
    if root is None:
        return 0
    count, todo = 0, [root]
    while todo:
        task = todo.pop()
        count += 1
        for nursery in task.child_nurseries:
            todo.extend(nursery.child_tasks)
    return count
