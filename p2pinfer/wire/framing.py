"""Length-prefixed frames over a byte stream.

Layout (protocols/framing.md): a 4-byte big-endian unsigned length N, then N payload bytes.
The receiver checks N against its limit before allocating anything, then fills one preallocated
buffer in a loop whose every iteration consumes at least one byte, so the loop is bounded by N.
A deadline is the caller's business (wrap the call in `trio.fail_after`).

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


async def read_frame(stream: ByteStream, max_size: int = DEFAULT_MAX_FRAME) -> bytearray:
    """Read one frame of at most `max_size` payload bytes, returned as a bytearray (no copy).

    Raises `EndOfStream` if the stream ends before a frame starts, `FrameTooLarge` if the
    announced length exceeds `max_size` (nothing is allocated), and `WireError` if the stream
    ends inside a frame.
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
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:  # each pass consumes >= 1 byte or exits: at most n passes
        chunk = await _read_some(stream, min(n - got, READ_CHUNK))
        if not chunk:
            raise WireError(f"stream ended after {got} of {n} frame bytes")
        if len(chunk) > n - got:
            raise WireError("stream returned more bytes than requested")
        view[got : got + len(chunk)] = chunk
        got += len(chunk)
    return buf
