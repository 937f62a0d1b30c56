"""Framed message streams over libp2p, and the guard every inbound handler runs under.

Protocol ids are `/p2pinfer/<name>/<major>.<minor>.<patch>`. On a stream each side writes
frames (p2pinfer.wire.framing: 4-byte big-endian length, then a msgpack envelope). Every read is
bounded by `limits.max_frame_bytes` and `limits.stream_timeout_s`.

Inbound streams run under an `InboundGuard` (protocols/wire.md, "Inbound limits"): a stream must
send its first frame header within `first_frame_timeout_s`, and every frame must keep arriving
at `min_frame_rate_bytes_s` after that grace (slowloris); a stream holds a slot only while a
request (or, on a streaming protocol, the whole conversation after its first frame) is served,
and slots are bounded node-wide, per protocol and per remote peer; frame bytes being read or
decoded come out of a node-wide `FrameMemory` budget with a per-peer share; each protocol has
its own maximum frame and msgpack decode limits. A peer that exceeds its own limits collects
strikes; too many within a window and it is disconnected and refused for a while. Every refusal
is counted by reason.

Request/response: the client opens a stream, writes one request frame and reads one reply
frame; the server loops answering requests until the client closes its side. A handler that
raises a `P2PInferError` becomes a typed error reply (`t = "error"`, `code`, `message`); any
other exception becomes `internal`. Garbage (a non-msgpack frame, an oversized length, a
truncated frame, a silent peer) gets one error reply if the stream still allows it, then the
stream is closed: never an exception escaping into the host.
"""

from __future__ import annotations

import logging
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Self

import msgpack
import trio

from p2pinfer.config import LimitsSection
from p2pinfer.errors import FrameTooLarge, P2PInferError, RemoteError, WireError
from p2pinfer.wire import (
    WIRE_VERSION,
    EndOfStream,
    Message,
    decode_message,
    error_message,
    read_frame,
    write_frame,
)
from p2pinfer.wire.framing import HEADER_BYTES
from p2pinfer.wire.messages import DEFAULT_DECODE_LIMITS, SMALL_DECODE_LIMITS, DecodeLimits

MAX_FRAME_FORMAT = 2**32 - 1

log = logging.getLogger(__name__)

PROTOCOL_PREFIX = "/p2pinfer/"
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,47}$")
_VERSION_RE = re.compile(r"^\d{1,4}\.\d{1,4}\.\d{1,4}$")

#: async handler(msg, peer_id) -> encoded reply (bytes, or an `EncodedReply`)
RequestHandler = Callable[[Message, str], Awaitable[Any]]

#: buffers at least this large are written from their own memory instead of being copied
#: into the encoded message (tensor payloads)
ZERO_COPY_MIN = 64 * 1024
WRITE_SLICE = 4 << 20
_BytesLike = (bytes, bytearray, memoryview)


def _bin_header(n: int) -> bytes:
    """msgpack bin 8/16/32 header, the same choice msgpack's packer makes."""
    if n < 1 << 8:
        return b"\xc4" + n.to_bytes(1, "big")
    if n < 1 << 16:
        return b"\xc5" + n.to_bytes(2, "big")
    if n < 1 << 32:
        return b"\xc6" + n.to_bytes(4, "big")
    raise FrameTooLarge("a byte string of 4 GiB or more cannot be encoded")


def encode_message_parts(t: str, fields: dict[str, Any] | None = None) -> list[Any]:
    """The bytes `encode_message(t, fields)` would produce, as a list of parts: large byte
    buffers (tensor data) appear as themselves, uncopied. Joining the parts gives exactly the
    `encode_message` output, so the receiver cannot tell the difference."""
    packer = msgpack.Packer(use_bin_type=True, autoreset=False)
    parts: list[Any] = []

    def flush() -> None:
        if len(packer.getbuffer()):
            parts.append(packer.bytes())
            packer.reset()

    def walk(obj: Any) -> None:
        if isinstance(obj, _BytesLike) and memoryview(obj).nbytes >= ZERO_COPY_MIN:
            view = memoryview(obj).cast("B")
            flush()
            parts.append(_bin_header(len(view)))
            parts.append(view)
        elif isinstance(obj, dict):
            packer.pack_map_header(len(obj))
            for k, v in obj.items():
                packer.pack(k)
                walk(v)
        elif isinstance(obj, (list, tuple)):
            packer.pack_array_header(len(obj))
            for v in obj:
                walk(v)
        else:
            packer.pack(obj)

    body: dict[str, Any] = {"v": WIRE_VERSION, "t": t}
    if fields:
        for key in ("v", "t"):
            if key in fields:
                raise ValueError(f"field name {key!r} is reserved by the envelope")
        body.update(fields)
    walk(body)
    flush()
    return parts


class EncodedReply:
    """A reply built by `reply_message`: a handler may return it instead of bytes so large
    buffers (tensors) are written from their own memory."""

    __slots__ = ("parts",)

    def __init__(self, parts: list[Any]) -> None:
        self.parts = parts


def reply_message(t: str, fields: dict[str, Any] | None = None) -> EncodedReply:
    return EncodedReply(encode_message_parts(t, fields))


async def write_frame_parts(stream: Any, parts: list[Any]) -> None:
    """One frame (4-byte big-endian length + payload) whose payload is the concatenation of
    `parts`; small parts are coalesced into one write, large ones go out in slices of at most
    4 MiB, each copied once (libp2p's stream wants `bytes`)."""
    total = sum(len(p) for p in parts)
    if total > MAX_FRAME_FORMAT:
        raise FrameTooLarge(f"frame of {total} bytes exceeds the 4 GiB format limit")
    pending = bytearray(total.to_bytes(4, "big"))
    for part in parts:
        if len(part) < ZERO_COPY_MIN:
            pending += part
            continue
        if pending:  # header and small fields go out first, so the data is copied only once
            await stream.write(bytes(pending))
            pending = bytearray()
        view = memoryview(part)
        for start in range(0, len(view), WRITE_SLICE):
            await stream.write(bytes(view[start : start + WRITE_SLICE]))
    if pending:
        await stream.write(bytes(pending))


class StreamTimeout(P2PInferError):
    """A peer did not send the expected frame within the stream timeout."""

    code = "timeout"


class StreamClosedError(P2PInferError):
    """The stream or connection failed underneath (reset, EOF inside a reply, peer gone)."""

    code = "stream-closed"


class Busy(P2PInferError):
    """Too many inbound streams are open; try later."""

    code = "busy"


class FirstFrameTimeout(StreamTimeout):
    """A new inbound stream sent no frame header within the first-frame timeout."""


class SlowFrame(StreamTimeout):
    """A frame arrived slower than the minimum rate (a slowloris peer)."""


class FrameBudgetExceeded(Busy):
    """No inbound frame memory is free (node-wide, or this peer's share) within the wait."""

    def __init__(self, message: str, *, own_share: bool) -> None:
        super().__init__(message)
        #: True when the peer's own share was full (its fault), False when the node's was
        self.own_share = own_share


class FrameMemory:
    """The node-wide budget for inbound frame bytes being read or decoded, with a per-peer
    share. `reserve` waits up to `wait_s` for room, then raises `FrameBudgetExceeded`."""

    def __init__(self, total: int, per_peer: int, wait_s: float) -> None:
        if total <= 0 or per_peer <= 0 or per_peer > total or wait_s < 0:
            raise ValueError("frame budget: need 0 < per_peer <= total and wait_s >= 0")
        self.total = total
        self.per_peer = per_peer
        self.wait_s = wait_s
        self.used = 0
        self.peak = 0
        self._by_peer: dict[str, int] = {}
        self._freed = trio.Event()

    def for_peer(self, peer: str) -> _PeerBudget:
        return _PeerBudget(self, peer)

    def _fits(self, peer: str, n: int) -> bool:
        return self.used + n <= self.total and self._by_peer.get(peer, 0) + n <= self.per_peer

    async def reserve(self, peer: str, n: int) -> None:
        if n > self.per_peer:
            raise FrameBudgetExceeded(f"{n} frame bytes exceed a peer's budget", own_share=True)
        deadline = trio.current_time() + self.wait_s
        while not self._fits(peer, n):
            with trio.move_on_at(deadline) as waited:
                await self._freed.wait()
            if waited.cancelled_caught and not self._fits(peer, n):
                own = self._by_peer.get(peer, 0) + n > self.per_peer
                raise FrameBudgetExceeded(
                    "this peer's inbound frame budget is in use" if own
                    else "the node's inbound frame budget is in use", own_share=own)
        self.used += n
        self._by_peer[peer] = self._by_peer.get(peer, 0) + n
        self.peak = max(self.peak, self.used)

    def release(self, peer: str, n: int) -> None:
        if n <= 0:
            return
        self.used -= n
        left = self._by_peer.get(peer, 0) - n
        if left > 0:
            self._by_peer[peer] = left
        else:
            self._by_peer.pop(peer, None)
        self._freed.set()
        self._freed = trio.Event()

    def status(self) -> dict[str, int]:
        return {"budget_bytes": self.total, "in_use_bytes": self.used, "peak_bytes": self.peak}


class _PeerBudget:
    """One peer's view of a `FrameMemory` (the `FrameBudget` read_frame takes)."""

    __slots__ = ("memory", "peer")

    def __init__(self, memory: FrameMemory, peer: str) -> None:
        self.memory = memory
        self.peer = peer

    async def reserve(self, n: int) -> None:
        await self.memory.reserve(self.peer, n)

    def release(self, n: int) -> None:
        self.memory.release(self.peer, n)


class _Paced:
    """A raw stream whose reads enforce a frame's deadlines: the header by `header_deadline`,
    then the body at `min_rate` bytes/s after `grace_s` (the caller's overall timeout still
    applies on top)."""

    __slots__ = ("body_start", "first", "got", "grace_s", "header_deadline", "min_rate", "raw")

    def __init__(self, raw: Any, header_deadline: float, grace_s: float, min_rate: int,
                 first: bool) -> None:
        self.raw = raw
        self.header_deadline = header_deadline
        self.grace_s = grace_s
        self.min_rate = min_rate
        self.first = first
        self.got = 0
        self.body_start = 0.0

    async def read(self, n: int) -> bytes:
        if self.got < HEADER_BYTES:
            deadline = self.header_deadline
        else:
            deadline = self.body_start + self.grace_s + (self.got - HEADER_BYTES) / self.min_rate
        with trio.move_on_at(deadline) as late:
            data = await self.raw.read(n)
        if late.cancelled_caught:
            if self.got >= HEADER_BYTES:
                raise SlowFrame(f"a frame arrived slower than {self.min_rate} bytes/s")
            if self.first:
                raise FirstFrameTimeout("no frame arrived in time on a new stream")
            raise StreamTimeout("no frame arrived in time")
        if self.got < HEADER_BYTES <= self.got + len(data):
            self.body_start = trio.current_time()
        self.got += len(data)
        return data


def protocol_id(name: str, version: str = "1.0.0") -> str:
    """`/p2pinfer/<name>/<version>`; the name is lowercase letters, digits, `-` and `_`."""
    if not _NAME_RE.match(name):
        raise ValueError(f"protocol name {name!r} must match {_NAME_RE.pattern}")
    if not _VERSION_RE.match(version):
        raise ValueError(f"protocol version {version!r} must be major.minor.patch")
    return f"{PROTOCOL_PREFIX}{name}/{version}"


def _is_io_error(e: BaseException) -> bool:
    """libp2p raises its own exception tree (and sometimes plain OSError) for dead streams."""
    from libp2p.exceptions import BaseLibp2pError

    return isinstance(
        e, (BaseLibp2pError, OSError, EOFError, trio.BrokenResourceError, trio.ClosedResourceError)
    )


class FramedStream:
    """A message stream to one peer. Use as an async context manager; closes on exit.

    `recv` raises `RemoteError` when the peer answered with an error reply, `StreamTimeout`
    when nothing came in time, `WireError` for malformed frames and `StreamClosedError` when
    the stream died.
    """

    def __init__(
        self,
        raw: Any,
        peer_id: str,
        *,
        max_frame: int,
        timeout_s: float,
        decode_limits: DecodeLimits | None = None,
        budget: FrameMemory | None = None,
        first_frame_timeout_s: float | None = None,
        min_rate: int = 0,
        on_frame: Callable[[str], None] | None = None,
    ) -> None:
        self._raw = raw
        self.peer_id = peer_id
        self.max_frame = max_frame
        self.timeout_s = timeout_s
        #: msgpack limits `recv` decodes under (the protocol's, on inbound streams)
        self.decode_limits = decode_limits or DEFAULT_DECODE_LIMITS
        self._budget = budget.for_peer(peer_id) if budget is not None else None
        self._held = 0  # budget bytes held by the last frame handed out by recv_bytes
        self._first_timeout = first_frame_timeout_s
        self._min_rate = min_rate
        #: called with the peer id after every frame read (the node notes it heard the peer)
        self._on_frame = on_frame
        self._frames = 0
        self._pushback: bytearray | None = None
        self._closed = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def protocol(self) -> str:
        return str(self._raw.get_protocol())

    @contextmanager
    def _io(self, too_slow: str) -> Iterator[None]:
        """Run one frame's I/O under the stream timeout and translate what libp2p raises:
        a timeout becomes `StreamTimeout(too_slow)`, a dead stream `StreamClosedError`."""
        try:
            with trio.fail_after(self.timeout_s):
                yield
        except trio.TooSlowError:
            raise StreamTimeout(too_slow) from None
        except P2PInferError:
            raise
        except Exception as e:
            if _is_io_error(e):
                raise StreamClosedError(
                    f"stream to {self.peer_id} failed: {type(e).__name__}"
                ) from None
            raise

    async def send_bytes(self, data: bytes | bytearray | memoryview) -> None:
        with self._io(f"peer {self.peer_id} did not take a frame in time"):
            await write_frame(self._raw, data)

    async def send(self, t: str, fields: dict[str, Any] | None = None) -> None:
        """Send one message; large byte buffers in `fields` are written without a copy."""
        await self._send_parts(encode_message_parts(t, fields))

    async def _send_parts(self, parts: list[Any]) -> None:
        with self._io(f"peer {self.peer_id} did not take a frame in time"):
            await write_frame_parts(self._raw, parts)

    async def send_error(self, code: str, message: str) -> None:
        await self.send_bytes(error_message(code, message))

    def _release_held(self) -> None:
        if self._held and self._budget is not None:
            self._budget.release(self._held)
        self._held = 0

    async def recv_bytes(self) -> bytearray:
        """One frame's payload. Raises `EndOfStream` if the peer closed between frames.

        On a budgeted (inbound) stream the frame's bytes count against the node's frame
        budget while it is read; the returned buffer is the caller's."""
        frame = await self._read_frame()
        self._release_held()
        return frame

    async def _read_frame(self) -> bytearray:
        """The next frame, its budget bytes still held (`decode` or the next read frees them)."""
        if self._pushback is not None:  # its budget bytes are still held: hand them on
            frame, self._pushback = self._pushback, None
            return frame
        self._release_held()
        source: Any = self._raw
        if self._first_timeout is not None or self._min_rate:
            first = self._frames == 0 and self._first_timeout is not None
            wait = min(self._first_timeout, self.timeout_s) if first else self.timeout_s
            grace = self._first_timeout if self._first_timeout is not None else self.timeout_s
            source = _Paced(self._raw, trio.current_time() + wait, grace,
                            self._min_rate or 1, first)
        with self._io(f"peer {self.peer_id} sent no frame in {self.timeout_s} s"):
            frame = await read_frame(source, self.max_frame, budget=self._budget)
        self._frames += 1
        self._held = len(frame) if self._budget is not None else 0
        if self._on_frame is not None:
            self._on_frame(self.peer_id)
        return frame

    def push_back(self, frame: bytearray) -> None:
        """Make `frame` (just read, its budget bytes held) the next frame read returns."""
        if self._pushback is not None:
            raise RuntimeError("one frame is already pushed back")
        self._pushback = frame

    def decode(
        self, frame: bytearray, expect: set[str] | frozenset[str] | None = None
    ) -> Message:
        """Decode a frame under this stream's limits; its budget bytes are handed back."""
        try:
            return decode_message(
                frame, expect=expect, max_size=self.max_frame, limits=self.decode_limits
            )
        finally:
            self._release_held()

    async def recv(self, expect: set[str] | frozenset[str] | None = None) -> Message:
        """The next message; an error reply raises `RemoteError(code, message)`."""
        frame = await self._read_frame()
        msg = self.decode(frame, expect)
        if msg.t == "error":
            raise RemoteError(
                str(msg.fields.get("code", "error"))[:64], str(msg.fields.get("message", ""))[:512]
            )
        return msg

    async def close_write(self) -> None:
        """Half-close: the peer reads end-of-stream, we may still read its replies."""
        try:
            await self._raw.close_write()
        except Exception as e:
            if not _is_io_error(e):
                raise

    async def aclose(self) -> None:
        self._pushback = None
        self._release_held()
        if self._closed:
            return
        self._closed = True
        with trio.CancelScope(shield=True):
            try:
                with trio.move_on_after(2):
                    await self._raw.close()
            except Exception as e:
                if not _is_io_error(e):
                    raise

    async def reset(self) -> None:
        self._pushback = None
        self._release_held()
        self._closed = True
        with trio.CancelScope(shield=True):
            try:
                await self._raw.reset()
            except Exception as e:
                if not _is_io_error(e):
                    raise


def _error_code(e: BaseException) -> str:
    code = getattr(e, "code", None)
    return code if isinstance(code, str) and code else "failed"


@dataclass(frozen=True)
class ProtocolLimits:
    """What one inbound protocol accepts: its largest frame and its msgpack decode limits."""

    max_frame: int
    decode: DecodeLimits = DEFAULT_DECODE_LIMITS


#: protocols whose inbound requests are small control messages
SMALL_PROTOCOLS = frozenset({"ping", "advert"})
SMALL_FRAME = 64 * 1024
#: strikes and bans remembered at most for this many peers (oldest forgotten first)
MAX_TRACKED_PEERS = 4096

#: reasons an inbound stream or request is refused or closed; each is a counter
REFUSAL_REASONS = (
    "busy_node", "busy_protocol", "busy_peer", "too_many_open", "budget",
    "first_frame_timeout", "slow_frame", "timeout", "oversize", "malformed", "refused_banned",
)
#: the reasons that count as a strike against the peer
STRIKE_REASONS = frozenset(
    {"too_many_open", "first_frame_timeout", "slow_frame", "oversize", "malformed"}
)


def protocol_name(pid: str) -> str:
    """`/p2pinfer/<name>/<version>` -> `<name>`; any other id is returned unchanged."""
    if pid.startswith(PROTOCOL_PREFIX):
        return pid[len(PROTOCOL_PREFIX):].split("/", 1)[0]
    return pid


def _reason(e: BaseException) -> str:
    """The refusal reason an error on an inbound stream counts under."""
    if isinstance(e, FirstFrameTimeout):
        return "first_frame_timeout"
    if isinstance(e, SlowFrame):
        return "slow_frame"
    if isinstance(e, StreamTimeout):
        return "timeout"
    if isinstance(e, FrameTooLarge):
        return "oversize"
    return "malformed"


class InboundGuard:
    """Runs inbound handlers under the node's inbound limits and turns failures into replies.

    Slots: a request holds one while its handler runs; a streaming conversation holds one from
    its first frame to its end. Slots are bounded node-wide (`max_inbound`), per protocol and
    per remote peer; a stream waiting for its first frame, or idle between requests, holds
    none. `counters` counts streams, error replies, garbage (malformed or silent streams),
    busy refusals, and every refusal by reason (`REFUSAL_REASONS`), strikes, bans and
    disconnects.
    """

    def __init__(
        self,
        *,
        max_frame: int,
        timeout_s: float,
        max_inbound: int,
        max_per_protocol: int | None = None,
        max_per_peer: int | None = None,
        max_open_per_peer: int | None = None,
        first_frame_timeout_s: float | None = None,
        min_frame_rate: int = 0,
        memory: FrameMemory | None = None,
        strikes_to_ban: int = 8,
        strike_window_s: float = 60.0,
        ban_s: float = 60.0,
        protocol_limits: dict[str, ProtocolLimits] | None = None,
        on_frame: Callable[[str], None] | None = None,
    ) -> None:
        self.max_frame = max_frame
        self.timeout_s = timeout_s
        self.max_inbound = max_inbound
        self.max_per_protocol = max_per_protocol or max_inbound
        self.max_per_peer = max_per_peer or max_inbound
        self.max_open_per_peer = max_open_per_peer or 4 * max_inbound
        self.first_frame_timeout_s = first_frame_timeout_s
        self.min_frame_rate = min_frame_rate
        self.memory = memory
        self.strikes_to_ban = strikes_to_ban
        self.strike_window_s = strike_window_s
        self.ban_s = ban_s
        small = ProtocolLimits(min(SMALL_FRAME, max_frame), SMALL_DECODE_LIMITS)
        self.protocol_limits: dict[str, ProtocolLimits] = {
            name: small for name in SMALL_PROTOCOLS
        }
        self.protocol_limits.update(protocol_limits or {})
        self._default_limits = ProtocolLimits(max_frame)
        self._in_use = 0
        self._by_protocol: dict[str, int] = {}
        self._by_peer: dict[str, int] = {}
        self._open: dict[str, int] = {}
        self._strikes: dict[str, deque[float]] = {}
        self._banned_until: dict[str, float] = {}
        self._to_disconnect: set[str] = set()
        #: called with the peer id after every inbound frame read (the node's `reach.heard`)
        self.on_frame = on_frame
        self.counters: dict[str, int] = {
            "streams": 0, "error_replies": 0, "garbage": 0, "busy": 0,
            **{r: 0 for r in REFUSAL_REASONS},
            "strikes": 0, "bans": 0, "disconnected": 0, "refused_connections": 0,
        }

    @classmethod
    def from_limits(cls, lim: LimitsSection,
                    on_frame: Callable[[str], None] | None = None) -> InboundGuard:
        """The guard a node's `[limits]` section describes; `on_frame` is called with the
        peer id after every inbound frame read."""
        return cls(
            on_frame=on_frame,
            max_frame=lim.max_frame_bytes,
            timeout_s=lim.stream_timeout_s,
            max_inbound=lim.max_inbound_streams,
            max_per_protocol=lim.max_inbound_per_protocol,
            max_per_peer=lim.max_inbound_per_peer,
            max_open_per_peer=lim.max_open_streams_per_peer,
            first_frame_timeout_s=lim.first_frame_timeout_s,
            min_frame_rate=lim.min_frame_rate_bytes_s,
            memory=FrameMemory(
                lim.frame_budget_bytes, lim.frame_budget_per_peer_bytes, lim.budget_wait_s
            ),
            strikes_to_ban=lim.strikes_to_ban,
            strike_window_s=lim.strike_window_s,
            ban_s=lim.ban_s,
            protocol_limits={
                "advert": ProtocolLimits(
                    min(lim.max_frame_bytes, max(SMALL_FRAME, 2 * lim.max_advert_bytes)),
                    SMALL_DECODE_LIMITS,
                ),
            },
        )

    def limits_for(self, protocol: str) -> ProtocolLimits:
        """The frame and decode limits of a protocol, by name or full id."""
        return self.protocol_limits.get(protocol_name(protocol), self._default_limits)

    def status(self) -> dict[str, Any]:
        """Counters plus what is in use now (for the node's `status()`)."""
        out: dict[str, Any] = dict(self.counters)
        out["slots_in_use"] = self._in_use
        out["open_streams"] = sum(self._open.values())
        now = time.monotonic()
        out["banned_peers"] = sum(1 for t in self._banned_until.values() if t > now)
        if self.memory is not None:
            out["frame_memory"] = self.memory.status()
        return out

    def ban(self, peer: str, seconds: float) -> None:
        """Refuse `peer` for `seconds` from now (its streams here, its connections at the
        node's connection gate); its open streams are hung up on as they end."""
        if peer not in self._banned_until and len(self._banned_until) >= MAX_TRACKED_PEERS:
            self._banned_until.pop(next(iter(self._banned_until)))
        self._banned_until[peer] = time.monotonic() + seconds
        self._to_disconnect.add(peer)
        self.counters["bans"] += 1

    def unban(self, peer: str) -> None:
        self._banned_until.pop(peer, None)
        self._to_disconnect.discard(peer)

    def ban_left(self, peer: str) -> float:
        """Seconds left of the peer's ban (0 when it is not banned)."""
        return max(0.0, self._banned_until.get(peer, 0.0) - time.monotonic())

    def is_banned(self, peer: str) -> bool:
        until = self._banned_until.get(peer)
        if until is None:
            return False
        if until > time.monotonic():
            return True
        del self._banned_until[peer]
        return False

    # -- handler wrappers --------------------------------------------------------------------
    def request_handler(
        self, handler: RequestHandler, *, protocol: str | None = None
    ) -> Callable[[Any], Awaitable[None]]:
        """Serve request/response streams with `handler`; `protocol` (name or id) picks the
        limits, otherwise the stream's negotiated protocol does."""

        async def on_stream(raw: Any) -> None:
            await self._guarded(
                raw, lambda fs: self._answer_requests(fs, handler), hold=False, protocol=protocol
            )

        return on_stream

    def stream_handler(
        self,
        handler: Callable[[FramedStream, str], Awaitable[None]],
        *,
        protocol: str | None = None,
    ) -> Callable[[Any], Awaitable[None]]:
        """Serve streaming conversations with `handler`, which owns the stream until it
        returns. The client speaks first: the guard waits for the first frame (under the
        first-frame timeout) before it takes a slot and calls the handler."""

        async def on_stream(raw: Any) -> None:
            await self._guarded(raw, lambda fs: handler(fs, fs.peer_id), protocol=protocol)

        return on_stream

    # -- slots, strikes ----------------------------------------------------------------------
    def _take_slot(self, name: str, peer: str) -> str | None:
        """Take a slot, or return the refusal reason."""
        if self._in_use >= self.max_inbound:
            return "busy_node"
        if self._by_protocol.get(name, 0) >= self.max_per_protocol:
            return "busy_protocol"
        if self._by_peer.get(peer, 0) >= self.max_per_peer:
            return "busy_peer"
        self._in_use += 1
        self._by_protocol[name] = self._by_protocol.get(name, 0) + 1
        self._by_peer[peer] = self._by_peer.get(peer, 0) + 1
        return None

    def _free_slot(self, name: str, peer: str) -> None:
        self._in_use -= 1
        _decrement(self._by_protocol, name)
        _decrement(self._by_peer, peer)

    def _refused(self, peer: str, reason: str) -> None:
        self.counters[reason] += 1
        if reason.startswith("busy") or reason in ("too_many_open", "budget"):
            self.counters["busy"] += 1
        if reason in STRIKE_REASONS:
            self._strike(peer, reason)

    def _strike(self, peer: str, reason: str) -> None:
        self.counters["strikes"] += 1
        now = time.monotonic()
        if peer not in self._strikes and len(self._strikes) >= MAX_TRACKED_PEERS:
            self._strikes.pop(next(iter(self._strikes)))
        times = self._strikes.setdefault(peer, deque())
        times.append(now)
        while times and times[0] < now - self.strike_window_s:
            times.popleft()
        if len(times) >= self.strikes_to_ban and not self.is_banned(peer):
            del self._strikes[peer]
            self.ban(peer, self.ban_s)
            log.info("peer %s exceeded inbound limits %d times (last: %s): disconnecting it "
                     "and refusing it for %s s", peer, len(times), reason, self.ban_s)

    async def _hang_up(self, raw: Any) -> None:
        """Close the connection `raw` runs on (all of the peer's streams on it)."""
        conn = getattr(raw, "swarm_conn", None) or getattr(raw, "muxed_conn", None)
        if conn is None:
            return
        with trio.CancelScope(shield=True), trio.move_on_after(2):
            try:
                await conn.close()
            except Exception as e:
                if not _is_io_error(e):
                    raise

    # -- the guarded stream ------------------------------------------------------------------
    async def _guarded(
        self,
        raw: Any,
        body: Callable[[FramedStream], Awaitable[None]],
        *,
        hold: bool = True,
        protocol: str | None = None,
    ) -> None:
        """Run `body` on the stream; with `hold`, one slot is held from the first frame to the
        end (request streams take a slot per request instead)."""
        peer = str(raw.muxed_conn.peer_id)
        name = protocol_name(protocol or str(raw.get_protocol()))
        limits = self.limits_for(name)
        self.counters["streams"] += 1
        if self.is_banned(peer):
            self.counters["refused_banned"] += 1
            with trio.CancelScope(shield=True):
                try:
                    await raw.reset()
                except Exception as e:
                    if not _is_io_error(e):
                        raise
            await self._hang_up(raw)
            return
        fs = FramedStream(
            raw, peer, max_frame=limits.max_frame, timeout_s=self.timeout_s,
            decode_limits=limits.decode, budget=self.memory,
            first_frame_timeout_s=self.first_frame_timeout_s, min_rate=self.min_frame_rate,
            on_frame=self.on_frame,
        )
        if self._open.get(peer, 0) >= self.max_open_per_peer:
            self._refused(peer, "too_many_open")
            await self._reply_error(fs, Busy("too many open streams from this peer"))
            await fs.aclose()
            await self._disconnect_if_banned(peer, raw)
            return
        self._open[peer] = self._open.get(peer, 0) + 1
        try:
            if hold:
                try:
                    frame = await fs._read_frame()
                except EndOfStream:
                    return
                fs.push_back(frame)
                reason = self._take_slot(name, peer)
                if reason is not None:
                    self._refused(peer, reason)
                    await self._reply_error(fs, Busy("too many inbound streams"))
                    return
                try:
                    await body(fs)
                finally:
                    self._free_slot(name, peer)
            else:
                await body(fs)
        except FrameBudgetExceeded as e:
            self._refused(peer, "budget")
            await self._reply_error(fs, e)
        except (WireError, StreamTimeout) as e:
            # the peer sent garbage, an oversized length, or nothing: tell it once, then close
            self.counters["garbage"] += 1
            self._refused(peer, _reason(e))
            log.debug("closing stream from %s: %s", peer, e)
            await self._reply_error(fs, e)
        except StreamClosedError as e:
            log.debug("stream from %s failed: %s", peer, e)
        except P2PInferError as e:
            await self._reply_error(fs, e)
        except Exception as e:
            if _is_io_error(e):
                log.debug("stream from %s failed: %s", peer, type(e).__name__)
            else:
                log.exception("stream handler for %s failed", fs.protocol)
                await self._reply_error(fs, P2PInferError("internal error"), code="internal")
        finally:
            _decrement(self._open, peer)
            await fs.aclose()
            await self._disconnect_if_banned(peer, raw)

    async def _disconnect_if_banned(self, peer: str, raw: Any) -> None:
        if peer in self._to_disconnect:
            self._to_disconnect.discard(peer)
            self.counters["disconnected"] += 1
            await self._hang_up(raw)

    async def _reply_error(
        self, fs: FramedStream, e: BaseException, code: str | None = None
    ) -> None:
        self.counters["error_replies"] += 1
        try:
            with trio.move_on_after(1):
                await fs.send_error(code or _error_code(e), str(e))
        except P2PInferError:
            pass

    async def _answer_requests(self, fs: FramedStream, handler: RequestHandler) -> None:
        served = 0
        name = protocol_name(fs.protocol)
        while True:
            try:
                frame = await fs._read_frame()
            except EndOfStream:
                return
            except StreamTimeout as e:
                if served and not isinstance(e, SlowFrame):
                    return  # an idle kept-alive stream: close it quietly
                raise
            msg = fs.decode(frame)  # WireError: garbage, close; the frame's budget is freed
            del frame
            reason = self._take_slot(name, fs.peer_id)
            if reason is not None:
                self._refused(fs.peer_id, reason)
                self.counters["error_replies"] += 1
                await fs.send_bytes(error_message("busy", "too many requests in progress"))
                served += 1
                continue
            try:
                reply = await handler(msg, fs.peer_id)
            except (FrameTooLarge, WireError) as e:
                # the request decoded but its fields are wrong: answer and keep serving
                self.counters["error_replies"] += 1
                reply = error_message(_error_code(e), str(e))
            except P2PInferError as e:
                self.counters["error_replies"] += 1
                reply = error_message(_error_code(e), str(e))
            except Exception:
                log.exception("request handler for %s failed", fs.protocol)
                self.counters["error_replies"] += 1
                reply = error_message("internal", "the handler failed")
            finally:
                self._free_slot(name, fs.peer_id)
            if isinstance(reply, EncodedReply):
                await fs._send_parts(reply.parts)
            elif isinstance(reply, (bytes, bytearray)):
                await fs.send_bytes(reply)
            else:
                log.error(
                    "handler for %s returned %s, not bytes", fs.protocol, type(reply).__name__
                )
                await fs.send_bytes(error_message("internal", "the handler returned no reply"))
            served += 1


def _decrement(counts: dict[str, int], key: str) -> None:
    left = counts.get(key, 0) - 1
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)


class StreamPool:
    """Idle request streams kept per (peer, protocol) for reuse.

    Opening a libp2p stream costs a multistream-select round trip (several ms on loopback),
    more than a small request itself. A stream goes back to the pool only after a complete
    request/reply exchange; it is dropped when idle longer than `idle_s` (well below the
    server's idle timeout) or when anything went wrong on it.
    """

    def __init__(self, *, per_key: int = 4, idle_s: float = 10.0) -> None:
        self.per_key = per_key
        self.idle_s = idle_s
        self._idle: dict[tuple[str, str], list[tuple[float, FramedStream]]] = {}
        self.reused = 0
        self.opened = 0

    async def take(self, peer_id: str, protocol: str) -> FramedStream | None:
        """An idle stream to reuse, or None; streams idle for too long are closed."""
        entries = self._idle.get((peer_id, protocol))
        now = trio.current_time()
        while entries:
            since, stream = entries.pop()
            if now - since <= self.idle_s:
                self.reused += 1
                return stream
            await stream.aclose()
        return None

    def give(self, stream: FramedStream, protocol: str) -> bool:
        entries = self._idle.setdefault((stream.peer_id, protocol), [])
        if len(entries) >= self.per_key:
            return False
        entries.append((trio.current_time(), stream))
        return True

    async def aclose(self) -> None:
        idle, self._idle = self._idle, {}
        for entries in idle.values():
            for _, stream in entries:
                await stream.aclose()
