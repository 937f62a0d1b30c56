"""Framed message streams over libp2p, and the guard every inbound handler runs under.

Protocol ids are `/p2pinfer/<name>/<major>.<minor>.<patch>`. On a stream each side writes
frames (p2pinfer.wire.framing: 4-byte big-endian length, then a msgpack envelope). Every read is
bounded by `limits.max_frame_bytes` and `limits.stream_timeout_s`.

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
from collections.abc import Iterator
from contextlib import contextmanager
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack
import trio

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

    def __init__(self, raw: Any, peer_id: str, *, max_frame: int, timeout_s: float) -> None:
        self._raw = raw
        self.peer_id = peer_id
        self.max_frame = max_frame
        self.timeout_s = timeout_s
        self._closed = False

    async def __aenter__(self) -> FramedStream:
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

    async def recv_bytes(self) -> bytearray:
        """One frame's payload. Raises `EndOfStream` if the peer closed between frames."""
        with self._io(f"peer {self.peer_id} sent no frame in {self.timeout_s} s"):
            return await read_frame(self._raw, self.max_frame)

    async def recv(self, expect: set[str] | frozenset[str] | None = None) -> Message:
        """The next message; an error reply raises `RemoteError(code, message)`."""
        frame = await self.recv_bytes()
        msg = decode_message(frame, expect=expect, max_size=self.max_frame)
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


class InboundGuard:
    """Runs inbound handlers: caps concurrent inbound streams and turns failures into replies.

    `served`/`errors` count handled streams and error replies; `garbage` counts streams closed
    because the peer sent something malformed.
    """

    def __init__(self, *, max_frame: int, timeout_s: float, max_inbound: int) -> None:
        self.max_frame = max_frame
        self.timeout_s = timeout_s
        self._slots = trio.Semaphore(max_inbound)
        self.counters: dict[str, int] = {"streams": 0, "error_replies": 0, "garbage": 0, "busy": 0}

    def request_handler(self, handler: RequestHandler) -> Callable[[Any], Awaitable[None]]:
        async def on_stream(raw: Any) -> None:
            await self._guarded(raw, lambda fs: self._answer_requests(fs, handler), hold=False)

        return on_stream

    def stream_handler(
        self, handler: Callable[[FramedStream, str], Awaitable[None]]
    ) -> Callable[[Any], Awaitable[None]]:
        async def on_stream(raw: Any) -> None:
            await self._guarded(raw, lambda fs: handler(fs, fs.peer_id))

        return on_stream

    async def _guarded(
        self, raw: Any, body: Callable[[FramedStream], Awaitable[None]], *, hold: bool = True
    ) -> None:
        """Run `body` on the stream; with `hold`, one inbound slot is held for its duration
        (request streams take a slot per request instead, so idle kept-alive streams hold
        none)."""
        peer = str(raw.muxed_conn.peer_id)
        fs = FramedStream(raw, peer, max_frame=self.max_frame, timeout_s=self.timeout_s)
        self.counters["streams"] += 1
        try:
            if hold:
                try:
                    self._slots.acquire_nowait()
                except trio.WouldBlock:
                    self.counters["busy"] += 1
                    await self._reply_error(fs, Busy("too many inbound streams"))
                    return
                try:
                    await body(fs)
                finally:
                    self._slots.release()
            else:
                await body(fs)
        except (WireError, StreamTimeout) as e:
            # the peer sent garbage, an oversized length, or nothing: tell it once, then close
            self.counters["garbage"] += 1
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
            await fs.aclose()

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
        while True:
            try:
                frame = await fs.recv_bytes()
            except EndOfStream:
                return
            except StreamTimeout:
                if served:  # an idle kept-alive stream: close it quietly
                    return
                raise
            msg = decode_message(frame, max_size=self.max_frame)  # WireError: garbage, close
            try:
                self._slots.acquire_nowait()
            except trio.WouldBlock:
                self.counters["busy"] += 1
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
                self._slots.release()
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
