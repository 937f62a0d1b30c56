"""Length-prefixed frames over a byte stream.

Layout (protocols/framing.md): a 4-byte big-endian unsigned length N, then N payload bytes.
The receiver checks N against its limit, then grows its buffer only as bytes arrive (a header
announcing 80 MiB costs nothing until 80 MiB come), in a loop whose every iteration consumes at
least one byte, so the loop is bounded by N. Before each chunk joins the buffer the receiver may
take its size from a `FrameBudget` (a node-wide bound on in-flight inbound frame memory); the
owner of the frame hands it back once the frame is decoded. A deadline is the caller's business (wrap the call in `trio.fail_after`, or give the stream a deadline).

Why our own: the readers shipped with libp2p 0.8.1 give up after ~100 partial reads (see
shared notes), which truncates anything above a few MiB on yamux.
"""

from __future__ import annotations

from typing import Protocol

from p2pinfer.errors import FrameTooLarge, WireError

HEADER_BYTES = 4
MAX_ENCODABLE = 2**32 - 1
DEFAULT_MAX_FRAME = 80 * 1024 * 1024  # a 64 MiB tensor plus envelope, with headroom
READ_CHUNK = 1 << 20
WRITE_CHUNK = 4 << 20


class ByteStream(Protocol):
    async def read(self, n: int) -> bytes: ...

    async def write(self, data: bytes) -> None: ...


class FrameBudget(Protocol):
    """Accounts for inbound frame memory: `reserve(n)` returns once `n` more bytes may be held
    (or raises a typed error); `release(n)` hands them back."""

    async def reserve(self, n: int) -> None: ...

    def release(self, n: int) -> None: ...


class EndOfStream(WireError):
    """The stream ended cleanly between frames."""

    code = "end-of-stream"


async def write_frame(stream: ByteStream, payload: bytes | bytearray | memoryview) -> None:
    """Write one frame. Large payloads go out in slices so no second full copy is made."""
    n = len(payload)
    if n > MAX_ENCODABLE:
        raise FrameTooLarge(f"frame of {n} bytes exceeds the 4 GiB format limit")
    header = n.to_bytes(HEADER_BYTES, "big")
    if n <= WRITE_CHUNK:
        await stream.write(header + payload)  # one copy: bytes + any buffer is bytes
        return
    await stream.write(header)
    view = memoryview(payload)
    for start in range(0, n, WRITE_CHUNK):
        await stream.write(bytes(view[start : start + WRITE_CHUNK]))


async def _read_some(stream: ByteStream, n: int) -> bytes:
    try:
        return await stream.read(n)
    except EOFError:  # libp2p raises StreamEOF (an EOFError); others return b""
        return b""


async def read_frame(
    stream: ByteStream, max_size: int = DEFAULT_MAX_FRAME, *, budget: FrameBudget | None = None
) -> bytearray:
    """Read one frame of at most `max_size` payload bytes, returned as a bytearray.

    Raises `EndOfStream` if the stream ends before a frame starts, `FrameTooLarge` if the
    announced length exceeds `max_size`, and `WireError` if the stream ends inside a frame.
    Nothing is allocated ahead of the data: the buffer grows by at most `READ_CHUNK` per read.
    With `budget`, every chunk (at most `READ_CHUNK`) reserves its size there before it
    joins the buffer, so a stream that announces a frame and sends nothing holds no budget; on
    success the caller owns `len(result)` reserved bytes and must release them; on any error
    nothing stays reserved.
    """
    header = bytearray()
    while len(header) < HEADER_BYTES:
        chunk = await _read_some(stream, HEADER_BYTES - len(header))
        if not chunk:
            if not header:
                raise EndOfStream("stream ended")
            raise WireError("stream ended inside a frame header")
        header += chunk
    n = int.from_bytes(header, "big")
    if n > max_size:
        raise FrameTooLarge(f"frame of {n} bytes exceeds the limit of {max_size} bytes")
    buf = bytearray()
    try:
        while len(buf) < n:  # each pass consumes >= 1 byte or exits: at most n passes
            want = min(n - len(buf), READ_CHUNK)
            chunk = await _read_some(stream, want)
            if not chunk:
                raise WireError(f"stream ended after {len(buf)} of {n} frame bytes")
            if len(chunk) > want:
                raise WireError("stream returned more bytes than requested")
            if budget is not None:  # only bytes that arrived count; the wait bounds growth
                await budget.reserve(len(chunk))
            buf += chunk
    except BaseException:
        if budget is not None and buf:
            budget.release(len(buf))
        raise
    return buf
