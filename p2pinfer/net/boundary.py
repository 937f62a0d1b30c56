"""What the layers above `net/` may ask of the network, as one typed interface.

`p2pinfer.node.Node` implements `PeerNetwork`; every service above this package (attestation
and channels, the stage and the requester, votes, control) receives it when built and uses
nothing else of the node. The interface is small on purpose: identity, the peer table,
dialling, framed streams, one-shot requests, stream handlers, gossip topics and the limits of
the node's configuration.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

import trio

from p2pinfer.config import NodeConfig
from p2pinfer.identity import NodeIdentity
from p2pinfer.net.peertable import PeerInfo
from p2pinfer.net.streams import FramedStream, RequestHandler
from p2pinfer.wire import Message

#: a streaming handler owns one inbound stream until it returns
StreamingHandler = Callable[[FramedStream, str], Awaitable[None]]


class PeerNetwork(Protocol):
    """One node's view of its network."""

    #: this node's persistent key and its peer id
    identity: NodeIdentity
    peer_id: str
    #: the network id that enters every signature and binding
    network_id: str
    #: the node's configuration (limits, trust, serving, request defaults)
    config: NodeConfig

    @property
    def addrs(self) -> list[str]:
        """The addresses this node listens on (with /p2p/<id>)."""
        ...

    # -- the peer table --------------------------------------------------------------------
    def peers(self) -> list[PeerInfo]:
        """Peers with a valid, unexpired advert."""
        ...

    def peer(self, peer_id: str) -> PeerInfo | None: ...

    def connected_peers(self) -> list[str]: ...

    def unreachable(self) -> set[str]:
        """Peers whose last dial, stream or ping failed and that have not answered since
        (they are left out of new routes)."""
        ...

    def update_advert(self, **fields: Any) -> None:
        """Change what this node advertises (model, spans, throughput, load, ...)."""
        ...

    # -- connections and streams -----------------------------------------------------------
    async def dial(self, maddr: str) -> str:
        """Connect to a multiaddr with /p2p/<id>; returns the peer id (`DialError` if not)."""
        ...

    async def probe(self, peer_id: str, *, addrs: Sequence[str] = ()) -> bool:
        """Whether the peer answers now (dialled unless connected, then pinged; a stale
        connection is replaced); the outcome marks it reachable or not."""
        ...

    async def ping(self, peer_id: str, *, count: int = 2,
                   timeout: float | None = None) -> float:
        """Round-trip time in ms; no pong within `timeout` raises `DialError`."""
        ...

    async def open_stream(self, peer_id: str, name: str, *,
                          version: str = "1.0.0") -> FramedStream: ...

    async def request(self, peer_id: str, name: str, t: str,
                      fields: dict[str, Any] | None = None, *, timeout: float | None = None,
                      expect: set[str] | None = None, version: str = "1.0.0") -> Message:
        """One request, one reply; an error reply raises `RemoteError`."""
        ...

    def set_handler(self, name: str, handler: RequestHandler | StreamingHandler, *,
                    streaming: bool = False, version: str = "1.0.0") -> None:
        """Serve `/p2pinfer/<name>/<version>` behind the node's inbound guard."""
        ...

    # -- gossip ----------------------------------------------------------------------------
    async def publish(self, topic_name: str, payload: bytes) -> None: ...

    def subscribe(self, topic_name: str) -> AbstractAsyncContextManager[
            trio.MemoryReceiveChannel[tuple[str, bytes]]]: ...
