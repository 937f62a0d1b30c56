"""The libp2p host: TCP, Noise only, yamux, optional private-network key.

Only Noise is offered and accepted as the security protocol (a peer proposing plaintext or SECIO
fails negotiation), and only yamux as the muxer (mplex has no flow control). With
`net.psk_file` the raw TCP connection is additionally wrapped by libp2p's private-network layer
(libp2p pnet spec: XSalsa20 keyed by a 32-byte pre-shared key) so peers without the key cannot
even start a handshake. `Host` owns its teardown: connections are closed first, then the
network service, so no lifecycle noise or ExceptionGroup escapes to the caller.
"""

from __future__ import annotations

import logging
import os
import re
import socket
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import multiaddr
import psutil
import trio
from libp2p import new_host
from libp2p.abc import INotifee
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport

from p2pinfer.config import NetSection
from p2pinfer.errors import ConfigError, P2PInferError
from p2pinfer.identity import NodeIdentity

log = logging.getLogger(__name__)

_PSK_RE = re.compile(r"^[0-9a-fA-F]{64}$")


class DialError(P2PInferError):
    """A peer could not be reached or refused the handshake. `kind` says which: "unreachable"
    (nothing answered at the address), "identity" (something answered, but the security
    handshake failed: another peer id, another private network's key), "timeout" or "other"."""

    code = "dial-failed"

    def __init__(self, msg: str, kind: str = "other") -> None:
        super().__init__(msg)
        self.kind = kind


def _dial_failure_kind(exc: BaseException) -> str:
    """What a libp2p dial failure was, from the messages along its cause chain (libp2p wraps
    every failure in the same exception types and says what happened only in the text)."""
    seen: set[int] = set()
    stack: list[BaseException] = [exc]
    while stack:
        e = stack.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        text = str(e)
        if "upgrade security" in text or "handshake failed" in text:
            return "identity"
        if "fail to open connection" in text or isinstance(e, ConnectionRefusedError):
            return "unreachable"
        stack.extend(x for x in (e.__cause__, e.__context__) if x is not None)
        stack.extend(getattr(e, "exceptions", None) or getattr(e, "errors", None) or ())
    return "other"


class DialTimeout(DialError):
    """A dial or a stream negotiation got no answer in time (a dead peer, a stale
    connection)."""

    def __init__(self, msg: str, kind: str = "timeout") -> None:
        super().__init__(msg, kind)


def _route_library_logs() -> None:
    """libp2p logs ordinary events of an open network (a departed peer's refused dial, a
    handshake cut short, a DHT stream closed early) as warnings and errors, on a logger it
    detaches from the root at import. p2pinfer reports what matters of them through its own
    errors and counters, so they are shown only when p2pinfer's debug logging is on (then
    through the application's handlers); LIBP2P_DEBUG, libp2p's own switch, wins."""
    if os.environ.get("LIBP2P_DEBUG"):
        return
    lg = logging.getLogger("libp2p")
    if logging.getLogger("p2pinfer").isEnabledFor(logging.DEBUG):
        lg.setLevel(logging.DEBUG)
        lg.propagate = True
    else:
        lg.setLevel(logging.CRITICAL)


def load_psk(path: str | Path) -> str:
    """Read a private-network key file: 64 hex characters (32 bytes), surrounding space ignored."""
    p = Path(path).expanduser()
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise ConfigError(f"{p}: cannot read net.psk_file ({e.strerror})") from None
    if len(raw) > 1024:
        raise ConfigError(f"{p}: net.psk_file is too large to be a key")
    text = raw.decode("ascii", errors="replace").strip()
    if not _PSK_RE.match(text):
        raise ConfigError(f"{p}: net.psk_file must hold 64 hex characters (a 32-byte key)")
    return text.lower()


def parse_peer_addr(maddr: str) -> Any:
    """A libp2p PeerInfo from `/ip4/.../tcp/.../p2p/<id>`; `DialError` if it is not one."""
    try:
        return info_from_p2p_addr(multiaddr.Multiaddr(maddr))
    except Exception as e:  # noqa: BLE001 - multiaddr raises several unrelated types
        raise DialError(
            f"{maddr!r} is not a multiaddr with /p2p/<peer id> ({type(e).__name__})"
        ) from None


def noise_only(key_pair: Any) -> dict[TProtocol, Any]:
    return {
        NOISE_PROTOCOL_ID: NoiseTransport(
            key_pair, noise_privkey=create_x25519_key_pair().private_key
        )
    }


WILDCARD_IP4 = "/ip4/0.0.0.0"


def interface_ipv4s() -> list[str]:
    """IPv4 addresses of the interfaces that are up: others first, then loopback."""
    stats = psutil.net_if_stats()
    found: list[str] = []
    for name, addrs in psutil.net_if_addrs().items():
        if name in stats and not stats[name].isup:
            continue
        found.extend(a.address for a in addrs if a.family == socket.AF_INET)
    return sorted(set(found), key=lambda ip: (ip.startswith("127."), ip))


class ConnectionGate(INotifee):
    """Closes every connection with a refused peer as soon as it is established, inbound or
    outbound (libp2p 0.8.1 gates connections by IP address only; a peer id is known once the
    Noise handshake is done, so this is the earliest point to refuse one). Every other
    protocol, libp2p's own included (gossip, identify, DHT), rides on those connections."""

    def __init__(self, refuse: Callable[[str], bool], on_refused: Callable[[str], None]) -> None:
        self.refuse, self.on_refused = refuse, on_refused

    async def connected(self, network: Any, conn: Any) -> None:
        peer = str(conn.muxed_conn.peer_id)
        if not self.refuse(peer):
            return
        self.on_refused(peer)
        with trio.CancelScope(shield=True), trio.move_on_after(2):
            try:
                await conn.close()
            except Exception as e:  # noqa: BLE001 - the connection may be going away anyway
                log.debug("closing a refused connection: %s", type(e).__name__)

    async def opened_stream(self, network: Any, stream: Any) -> None:
        return None

    async def closed_stream(self, network: Any, stream: Any) -> None:
        return None

    async def disconnected(self, network: Any, conn: Any) -> None:
        return None

    async def listen(self, network: Any, multiaddr: Any) -> None:
        return None

    async def listen_close(self, network: Any, multiaddr: Any) -> None:
        return None


class Host:
    """A running libp2p host bound to this node's identity. Create with `open_host`."""

    def __init__(self, lp2p: Any, identity: NodeIdentity, net: NetSection) -> None:
        self.lp2p = lp2p
        self.identity = identity
        self.net = net
        self.peer_id = identity.peer_id

    @property
    def addrs(self) -> list[str]:
        """Listen (or announce) addresses with `/p2p/<peer id>`. A wildcard listener
        (`/ip4/0.0.0.0/...`) is given as one address per local IPv4 interface that is up,
        other interfaces before loopback, since nobody can dial 0.0.0.0."""
        out: list[str] = []
        for a in (str(a) for a in self.lp2p.get_addrs()):
            if a.startswith(WILDCARD_IP4 + "/"):
                rest = a[len(WILDCARD_IP4):]
                out.extend(f"/ip4/{ip}{rest}" for ip in interface_ipv4s())
            else:
                out.append(a)
        return list(dict.fromkeys(out))

    def connected_peers(self) -> list[str]:
        return [str(p) for p in self.lp2p.get_connected_peers()]

    def is_connected(self, peer_id: str) -> bool:
        try:
            return bool(self.lp2p.get_network().connections.get(ID.from_base58(peer_id)))
        except Exception:  # noqa: BLE001 - libp2p and multiaddr raise assorted types
            return False

    def known_addrs(self, peer_id: str) -> list[str]:
        try:
            return [str(a) for a in self.lp2p.get_peerstore().addrs(ID.from_base58(peer_id))]
        except Exception:  # noqa: BLE001 - libp2p and multiaddr raise assorted types
            return []

    async def connect(self, maddr: str, *, timeout_s: float | None = None) -> str:
        """Dial `maddr` (with /p2p/<id>) unless already connected; returns the peer id."""
        info = parse_peer_addr(maddr)
        if str(info.peer_id) == self.peer_id:
            raise DialError("refusing to dial ourselves")
        if not self.is_connected(str(info.peer_id)):
            # an explicit address is fresh information. libp2p refuses for a while a peer
            # whose every address failed (negative cache), and dials only one TCP address per
            # peer, the oldest it stored; both kept a peer that restarted on a new port (a
            # requester, say) unreachable. Our callers pace their own re-dials.
            network = self.lp2p.get_network()
            unblock = getattr(network, "unblock_peer", None)
            if unblock is not None:
                unblock(info.peer_id)
            self.lp2p.get_peerstore().clear_addrs(info.peer_id)
        await self._dial(info, timeout_s)
        return str(info.peer_id)

    async def connect_info(self, info: Any, *, timeout_s: float | None = None) -> str:
        await self._dial(info, timeout_s)
        return str(info.peer_id)

    async def _dial(self, info: Any, timeout_s: float | None) -> None:
        try:
            with trio.fail_after(timeout_s or self.net.dial_timeout_s):
                await self.lp2p.connect(info)
        except trio.TooSlowError:
            raise DialTimeout(f"dialing {info.peer_id} timed out") from None
        except Exception as e:  # noqa: BLE001 - libp2p and multiaddr raise assorted types
            kind = _dial_failure_kind(e)
            if kind == "identity":
                msg = (f"the peer answering there is not {info.peer_id} (the security "
                       "handshake failed: another peer id, or another private network's key)")
            elif kind == "unreachable":
                msg = "nothing answers at that address (connection refused)"
            else:
                msg = f"dialing {info.peer_id} failed: {type(e).__name__}: {e}"[:300]
            raise DialError(msg, kind) from None

    async def connect_many(self, maddrs: Sequence[str]) -> dict[str, str | DialError]:
        """Dial concurrently (each libp2p dial waits ~250 ms); maps address -> peer id or error."""
        results: dict[str, str | DialError] = {}

        async def one(addr: str) -> None:
            try:
                results[addr] = await self.connect(addr)
            except DialError as e:
                results[addr] = e

        async with trio.open_nursery() as nursery:
            for addr in maddrs:
                nursery.start_soon(one, addr)
        return results

    async def disconnect(self, peer_id: str) -> None:
        try:
            await self.lp2p.disconnect(ID.from_base58(peer_id))
        except Exception as e:  # noqa: BLE001 - libp2p and multiaddr raise assorted types
            log.debug("disconnect %s: %s", peer_id, type(e).__name__)

    async def new_stream(self, peer_id: str, protocol: str, *, timeout_s: float) -> Any:
        try:
            pid = ID.from_base58(peer_id)
        except Exception:  # noqa: BLE001 - libp2p and multiaddr raise assorted types
            raise DialError(f"{peer_id[:60]!r} is not a peer id") from None
        try:
            with trio.fail_after(timeout_s):
                return await self.lp2p.new_stream(pid, [TProtocol(protocol)])
        except trio.TooSlowError:
            raise DialTimeout(f"opening {protocol} to {peer_id} timed out") from None
        except Exception as e:  # noqa: BLE001 - libp2p and multiaddr raise assorted types
            # libp2p chains the reason (a negotiation cut short, a closed connection)
            cause = e.__cause__ or e.__context__
            why = f" ({type(cause).__name__}: {str(cause)[:120]})" if cause is not None else ""
            raise DialError(
                f"opening {protocol} to {peer_id} failed: {type(e).__name__}{why}") from None

    def set_stream_handler(self, protocol: str, handler: Any) -> None:
        self.lp2p.set_stream_handler(TProtocol(protocol), handler)

    def gate_connections(self, refuse: Callable[[str], bool],
                         on_refused: Callable[[str], None]) -> ConnectionGate:
        """Close every connection with a peer for which `refuse(peer_id)` holds, at once."""
        gate = ConnectionGate(refuse, on_refused)
        self.lp2p.get_network().register_notifee(gate)
        return gate


@asynccontextmanager
async def open_host(identity: NodeIdentity, net: NetSection) -> AsyncIterator[Host]:
    """Start a host listening on `net.listen`; on exit close every connection, then the host."""
    _route_library_logs()
    key_pair = create_new_key_pair(identity.seed())
    psk = load_psk(net.psk_file) if net.psk_file else None
    try:
        listen = [multiaddr.Multiaddr(a) for a in net.listen]
        announce = [multiaddr.Multiaddr(a) for a in net.announce] or None
    except Exception as e:  # noqa: BLE001 - libp2p and multiaddr raise assorted types
        raise ConfigError(f"net.listen/net.announce: bad multiaddr ({e})") from None
    lp2p = new_host(
        key_pair=key_pair,
        sec_opt=noise_only(key_pair),
        muxer_preference="YAMUX",
        psk=psk,
        announce_addrs=announce,
        enable_mDNS=net.mdns,
    )
    if str(lp2p.get_id()) != identity.peer_id:  # pragma: no cover - guards a libp2p change
        raise P2PInferError("libp2p derived a different peer id from our key")
    _check_ports_free(net.listen)
    _disable_auto_dial(lp2p)
    host = Host(lp2p, identity, net)
    started = False
    try:
        async with lp2p.run(listen_addrs=listen):
            started = True
            try:
                yield host
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(5):
                    await _close_listeners(host)
                    await _close_connections(host)
    except OSError as e:
        if started:
            raise
        raise ConfigError(f"cannot listen on {net.listen}: {e.strerror or e}") from None


async def _close_listeners(host: Host) -> None:
    """libp2p 0.8.1 leaves its TCP listeners (and their system tasks) running after the host
    stops, so the port stays bound; close them ourselves."""
    listeners = getattr(host.lp2p.get_network(), "listeners", {})
    for listener in list(listeners.values()):
        try:
            await listener.close()
        except Exception as e:  # noqa: BLE001 - best effort: the process may be going away
            log.debug("closing listener: %s", type(e).__name__)


def _check_ports_free(listen: list[str]) -> None:
    """libp2p binds with SO_REUSEPORT, so a second node on a busy port would silently share
    (and steal) its connections. Refuse fixed ports that another socket is listening on."""
    for addr in listen:
        parts = addr.split("/")
        if len(parts) < 5 or parts[1] not in ("ip4", "ip6") or parts[3] != "tcp":
            continue
        if parts[4] == "0":
            continue
        family = socket.AF_INET if parts[1] == "ip4" else socket.AF_INET6
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((parts[2], int(parts[4])))
            except OSError as e:
                raise ConfigError(f"cannot listen on {addr}: {e.strerror or e}") from None


def _disable_auto_dial(lp2p: Any) -> None:
    """libp2p's connection manager dials every peer in the peerstore while below its low
    watermark (100). The node decides whom to dial (bootstrap, DHT results, mDNS events), so
    that loop is turned off; pruning above the high watermark stays on."""
    connector = getattr(lp2p.get_network(), "auto_connector", None)
    if connector is not None:

        async def no_auto_dial() -> None:
            return None

        connector.maybe_connect = no_auto_dial


async def _close_connections(host: Host) -> None:
    async with trio.open_nursery() as nursery:
        for pid in host.connected_peers():
            nursery.start_soon(host.disconnect, pid)
