import random
import tracemalloc

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pinfer.errors import FrameTooLarge, WireError
from p2pinfer.wire.framing import EndOfStream, read_frame, write_frame


class ChunkyPipe:
    """An in-memory byte stream whose reads return random short chunks, like a real socket."""

    def __init__(self, data: bytes = b"", seed: int = 0, eof_error: bool = False) -> None:
        self.buf = bytearray(data)
        self.rng = random.Random(seed)
        self.eof_error = eof_error
        self.reads = 0

    async def write(self, data: bytes) -> None:
        self.buf += data

    async def read(self, n: int) -> bytes:
        self.reads += 1
        if not self.buf:
            if self.eof_error:
                raise EOFError
            return b""
        k = min(n, self.rng.randint(1, 70_000), len(self.buf))
        out = bytes(self.buf[:k])
        del self.buf[:k]
        return out


async def test_frames_round_trip_through_partial_reads():
    pipe = ChunkyPipe(seed=1)
    payloads = [b"", b"x", bytes(range(256)) * 3000, random.randbytes(3 << 20)]
    for p in payloads:
        await write_frame(pipe, p)
    for p in payloads:
        assert await read_frame(pipe) == p
    with pytest.raises(EndOfStream):
        await read_frame(pipe)


async def test_oversized_frame_is_refused_before_allocating():
    pipe = ChunkyPipe((2**31).to_bytes(4, "big"))
    with pytest.raises(FrameTooLarge):
        await read_frame(pipe, max_size=1 << 20)
    assert pipe.reads == 1  # only the header was read


async def test_stream_ending_inside_a_frame_is_a_wire_error():
    pipe = ChunkyPipe((100).to_bytes(4, "big") + b"abc")
    with pytest.raises(WireError, match="after 3 of 100"):
        await read_frame(pipe)


async def test_stream_ending_inside_the_header_is_a_wire_error():
    with pytest.raises(WireError, match="header"):
        await read_frame(ChunkyPipe(b"\x00\x00"))


async def test_libp2p_style_eof_exception_is_end_of_stream():
    with pytest.raises(EndOfStream):
        await read_frame(ChunkyPipe(b"", eof_error=True))


async def test_read_loop_is_bounded_by_frame_length():
    payload = random.randbytes(200_000)
    pipe = ChunkyPipe(seed=3)
    await write_frame(pipe, payload)
    await read_frame(pipe)
    assert pipe.reads <= 1 + len(payload)


async def test_frames_over_a_real_tcp_socket_pair():
    left, right = trio.socket.socketpair()
    sa, sb = trio.SocketStream(left), trio.SocketStream(right)

    class Adapter:
        def __init__(self, s):
            self.s = s

        async def read(self, n):
            return await self.s.receive_some(n)

        async def write(self, data):
            await self.s.send_all(data)

    payload = random.randbytes(5 << 20)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(write_frame, Adapter(sa), payload)
        got = await read_frame(Adapter(sb))
    assert got == payload
    await sa.aclose()
    await sb.aclose()


@settings(deadline=None, max_examples=2000)
@given(st.binary(max_size=64))
def test_arbitrary_bytes_give_a_frame_or_a_wire_error(data):
    async def run():
        try:
            await read_frame(ChunkyPipe(data, seed=len(data)), max_size=32)
        except WireError:
            pass

    trio.run(run)


class CountingBudget:
    """A frame budget of `total` bytes that records what is held; it refuses past the total."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.held = 0
        self.peak = 0

    async def reserve(self, n: int) -> None:
        if self.held + n > self.total:
            raise FrameTooLarge("budget exhausted")
        self.held += n
        self.peak = max(self.peak, self.held)

    def release(self, n: int) -> None:
        self.held -= n
        assert self.held >= 0


async def test_a_frame_announced_but_not_sent_allocates_nothing():
    # 80 MiB announced, 10 bytes sent: the reader never holds more than what arrived
    pipe = ChunkyPipe((80 << 20).to_bytes(4, "big") + b"0123456789")
    budget = CountingBudget(1 << 30)
    tracemalloc.start()
    try:
        with pytest.raises(WireError, match="after 10 of"):
            await read_frame(pipe, max_size=100 << 20, budget=budget)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 256 * 1024
    assert budget.peak == 10 and budget.held == 0


async def test_a_frame_holds_its_size_in_the_budget_until_released():
    payload = random.randbytes(3 << 20)
    pipe = ChunkyPipe(seed=4)
    await write_frame(pipe, payload)
    budget = CountingBudget(4 << 20)
    got = await read_frame(pipe, budget=budget)
    assert got == payload and budget.held == len(payload)
    budget.release(len(got))


async def test_a_frame_over_the_budget_is_refused_and_holds_nothing():
    pipe = ChunkyPipe(seed=5)
    await write_frame(pipe, random.randbytes(3 << 20))
    budget = CountingBudget(2 << 20)
    with pytest.raises(FrameTooLarge, match="budget"):
        await read_frame(pipe, budget=budget)
    assert budget.held == 0 and budget.peak <= 2 << 20
