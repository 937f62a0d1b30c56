"""Inbound limits between real nodes on loopback: slots per protocol and per peer, the
first-frame timeout, strikes and bans, and the frame memory budget."""

from __future__ import annotations

import pytest
import trio

from p2pinfer.config import config_from_dict
from p2pinfer.errors import ConfigError, P2PInferError, RemoteError
from p2pinfer.net.streams import FrameBudgetExceeded, FramedStream, FrameMemory, protocol_id
from p2pinfer.node import Node
from p2pinfer.wire import Message, encode_message

from .conftest import node_config, node_runner, wait_until

MIB = 1 << 20


async def echo(msg: Message, peer_id: str) -> bytes:
    return encode_message("echo", {"peer": peer_id})


async def trio_of_nodes(runner, tmp_path, **limits) -> tuple[Node, Node, Node]:
    """a (the server, with `limits`), b and c (clients)."""
    a = await runner.start(node_config(tmp_path, "a", net={"dht": False}, limits=limits))
    b, c = await runner.start_many([
        node_config(tmp_path, n, boot=[a.addrs[0]], net={"dht": False}) for n in ("b", "c")])
    with trio.fail_after(20):
        await b.wait_for_peers(1, timeout=20)
        await c.wait_for_peers(1, timeout=20)
    a.set_handler("echo", echo)
    return a, b, c


def holder(a: Node) -> tuple[list[str], trio.Event]:
    """A request handler `hold` on `a` that waits until the returned event is set."""
    entered: list[str] = []
    release = trio.Event()

    async def hold(msg: Message, peer_id: str) -> bytes:
        entered.append(peer_id)
        await release.wait()
        return encode_message("done")

    a.set_handler("hold", hold)
    return entered, release


async def outcome(node: Node, peer: str, name: str) -> str:
    try:
        return (await node.request(peer, name, "x", timeout=10)).t
    except RemoteError as e:
        return e.code


async def test_one_protocol_cannot_take_the_slots_of_another(tmp_path):
    async with node_runner() as runner:
        a, b, _ = await trio_of_nodes(runner, tmp_path, max_inbound_streams=8,
                                      max_inbound_per_protocol=2)
        entered, release = holder(a)
        results: list[str] = []

        async def call() -> None:
            results.append(await outcome(b, a.peer_id, "hold"))

        with trio.fail_after(20):
            async with trio.open_nursery() as n:
                n.start_soon(call)
                n.start_soon(call)
                await wait_until(lambda: len(entered) == 2, 10)
                assert await outcome(b, a.peer_id, "hold") == "busy"
                assert await outcome(b, a.peer_id, "echo") == "echo"  # another protocol
                release.set()
        assert results == ["done", "done"]
        assert a.guard.counters["busy_protocol"] == 1
        assert a.status()["counters"]["streams"]["busy_protocol"] == 1


async def test_one_peer_cannot_take_the_slots_of_others(tmp_path):
    async with node_runner() as runner:
        a, b, c = await trio_of_nodes(runner, tmp_path, max_inbound_per_peer=2)
        entered, release = holder(a)
        results: list[str] = []

        async def call(node: Node) -> None:
            results.append(await outcome(node, a.peer_id, "hold"))

        with trio.fail_after(20):
            async with trio.open_nursery() as n:
                n.start_soon(call, b)
                n.start_soon(call, b)
                await wait_until(lambda: len(entered) == 2, 10)
                assert await outcome(b, a.peer_id, "hold") == "busy"
                n.start_soon(call, c)  # another peer still gets a slot
                await wait_until(lambda: len(entered) == 3, 10)
                release.set()
        assert results == ["done"] * 3
        assert entered.count(c.peer_id) == 1
        assert a.guard.counters["busy_peer"] >= 1  # b's own background requests may add some
        assert a.guard.counters["strikes"] == 0  # being busy is not misbehaviour


async def test_a_new_stream_that_sends_nothing_is_closed_after_the_first_frame_timeout(tmp_path):
    async with node_runner() as runner:
        a, b, _ = await trio_of_nodes(runner, tmp_path, first_frame_timeout_s=0.5)
        with trio.fail_after(10):
            raw = await b.host.new_stream(a.peer_id, protocol_id("echo"), timeout_s=10)
            s = FramedStream(raw, a.peer_id, max_frame=MIB, timeout_s=5)
            t0 = trio.current_time()
            with pytest.raises(RemoteError) as e:
                await s.recv()
            assert e.value.code == "timeout"
            assert trio.current_time() - t0 < 3  # not the 60 s stream timeout
            await s.aclose()
        assert a.guard.counters["first_frame_timeout"] == 1
        assert a.guard.counters["strikes"] == 1


async def test_a_streaming_protocol_gives_no_slot_to_a_stream_before_its_first_frame(tmp_path):
    async with node_runner() as runner:
        a, b, _ = await trio_of_nodes(runner, tmp_path, max_inbound_per_protocol=1)

        async def count(stream: FramedStream, peer_id: str) -> None:
            msg = await stream.recv(expect={"n"})
            await stream.send("twice", {"n": 2 * msg.get("n", int)})

        a.set_handler("count", count, streaming=True)
        with trio.fail_after(15):
            idle = await b.open_stream(a.peer_id, "count")  # holds no slot: sends nothing
            async with await b.open_stream(a.peer_id, "count") as s:
                await s.send("n", {"n": 21})
                assert (await s.recv()).get("n", int) == 42
            await idle.aclose()


async def test_a_peer_that_keeps_exceeding_limits_is_disconnected_and_refused(tmp_path):
    async with node_runner() as runner:
        a, b, c = await trio_of_nodes(runner, tmp_path, strikes_to_ban=3, ban_s=60)
        with trio.fail_after(20):
            for _ in range(3):  # a 4 GiB length prefix, three times
                raw = await b.host.new_stream(a.peer_id, protocol_id("echo"), timeout_s=10)
                await raw.write(b"\xff\xff\xff\xff")
                s = FramedStream(raw, a.peer_id, max_frame=MIB, timeout_s=5)
                with pytest.raises(P2PInferError):
                    await s.recv()
                await s.aclose()
            await wait_until(lambda: a.guard.counters["disconnected"] == 1, 10)
            assert a.guard.counters["oversize"] == 3 and a.guard.counters["bans"] == 1
            with pytest.raises(P2PInferError):
                await b.request(a.peer_id, "echo", "again", timeout=5)
            assert await outcome(c, a.peer_id, "echo") == "echo"
        assert a.status()["counters"]["streams"]["banned_peers"] == 1


async def test_frames_beyond_a_peers_memory_share_wait_then_are_refused(tmp_path):
    async with node_runner() as runner:
        frame = MIB + 1024
        a, b, _ = await trio_of_nodes(
            runner, tmp_path, max_frame_bytes=frame, frame_budget_per_peer_bytes=frame,
            frame_budget_bytes=4 * MIB, budget_wait_s=0.3)
        got: list[int] = []

        async def sink(stream: FramedStream, peer_id: str) -> None:
            got.append(len(await stream.recv_bytes()))

        a.set_handler("sink", sink, streaming=True)
        header = frame.to_bytes(4, "big")
        with trio.fail_after(20):
            # the first stream sends 1 MiB of its frame and pauses: that MiB is held
            first = await b.host.new_stream(a.peer_id, protocol_id("sink"), timeout_s=10)
            await first.write(header + bytes(MIB))
            await wait_until(lambda: a.guard.memory.used == MIB, 5)
            # the second finds the peer's share full: it waits 0.3 s, then is refused busy
            raw = await b.host.new_stream(a.peer_id, protocol_id("sink"), timeout_s=10)
            await raw.write(header + bytes(frame))
            second = FramedStream(raw, a.peer_id, max_frame=MIB, timeout_s=5)
            with pytest.raises(RemoteError) as e:
                await second.recv()
            assert e.value.code == "busy"
            assert a.guard.counters["budget"] == 1
            await second.aclose()
            await first.write(bytes(1024))  # the first frame completes and is handled
            await wait_until(lambda: got == [frame], 5)
            await wait_until(lambda: a.guard.memory.used == 0, 5)
            third = await b.open_stream(a.peer_id, "sink")  # the share is free again
            await third.send_bytes(bytes(frame))
            await wait_until(lambda: got == [frame, frame], 5)
            await third.aclose()
            await first.close()
        assert a.guard.memory.peak <= frame
        assert a.guard.counters["strikes"] == 0  # waiting for memory is not misbehaviour


async def test_frame_memory_waits_for_room_then_refuses():
    mem = FrameMemory(total=100, per_peer=60, wait_s=0.2)
    await mem.reserve("p", 60)
    with pytest.raises(FrameBudgetExceeded) as e:
        await mem.reserve("p", 1)  # p's own share is full
    assert e.value.own_share
    await mem.reserve("q", 40)
    with pytest.raises(FrameBudgetExceeded) as e:
        await mem.reserve("r", 1)  # the node's budget is full
    assert not e.value.own_share

    async def free_later() -> None:
        await trio.sleep(0.05)
        mem.release("p", 30)

    async with trio.open_nursery() as n:
        n.start_soon(free_later)
        await mem.reserve("r", 30)  # waits for the release, within wait_s
    assert mem.used == 100 and mem.peak == 100


def test_limits_that_cannot_hold_one_frame_are_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="frame_budget_per_peer_bytes"):
        config_from_dict({"node": {"data_dir": str(tmp_path)},
                          "limits": {"frame_budget_per_peer_bytes": MIB}}).validate()
    with pytest.raises(ConfigError, match="first_frame_timeout_s"):
        config_from_dict({"node": {"data_dir": str(tmp_path)},
                          "limits": {"first_frame_timeout_s": 0}}).validate()
