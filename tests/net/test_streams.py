"""Request/response and message streams between real nodes, and what garbage does to them."""

from __future__ import annotations

import msgpack
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pinfer.errors import P2PInferError, RemoteError, WireError
from p2pinfer.net.streams import encode_message_parts, protocol_id
from p2pinfer.node import Node
from p2pinfer.wire import Message, encode_message

from .conftest import node_config, node_runner


class Refused(P2PInferError):
    code = "refused"


async def echo(msg: Message, peer_id: str) -> bytes:
    if msg.t == "boom":
        raise Refused("not today")
    if msg.t == "crash":
        raise RuntimeError("a bug in the handler")
    if msg.t == "field":
        msg.get("n", int)
    return encode_message("echo", {"peer": peer_id, "body": msg.fields})


async def pair(runner, tmp_path, **sections) -> tuple[Node, Node]:
    a = await runner.start(node_config(tmp_path, "a", net={"dht": False}, **sections))
    b = await runner.start(
        node_config(tmp_path, "b", boot=[a.addrs[0]], net={"dht": False}, **sections)
    )
    with trio.fail_after(20):
        await b.wait_for_peers(1, timeout=20)
    a.set_handler("echo", echo)
    return a, b


def test_protocol_ids_follow_the_naming_scheme():
    assert protocol_id("tensor") == "/p2pinfer/tensor/1.0.0"
    assert protocol_id("stage", "2.1.0") == "/p2pinfer/stage/2.1.0"
    for bad in ("", "Upper", "a/b", "x" * 49):
        with pytest.raises(ValueError):
            protocol_id(bad)
    with pytest.raises(ValueError):
        protocol_id("ok", "1.0")


async def test_a_request_gets_its_reply_and_the_server_sees_the_caller(tmp_path):
    async with node_runner() as runner:
        a, b = await pair(runner, tmp_path)
        with trio.fail_after(10):
            reply = await b.request(a.peer_id, "echo", "hello", {"x": [1, 2]})
        assert reply.t == "echo"
        assert reply.get("peer", str) == b.peer_id
        assert reply.get("body", dict) == {"x": [1, 2]}


async def test_requests_reuse_an_idle_stream(tmp_path):
    async with node_runner() as runner:
        a, b = await pair(runner, tmp_path)
        opened, reused = b._pool.opened, b._pool.reused
        with trio.fail_after(10):
            for i in range(5):
                reply = await b.request(a.peer_id, "echo", "n", {"i": i})
                assert reply.get("body", dict) == {"i": i}
        assert (b._pool.opened - opened, b._pool.reused - reused) == (1, 4)


async def test_a_handler_error_becomes_a_typed_remote_error(tmp_path):
    async with node_runner() as runner:
        a, b = await pair(runner, tmp_path)
        with trio.fail_after(10):
            with pytest.raises(RemoteError) as e:
                await b.request(a.peer_id, "echo", "boom")
            assert (e.value.code, e.value.message) == ("refused", "not today")
            with pytest.raises(RemoteError) as e:
                await b.request(a.peer_id, "echo", "crash")
            assert e.value.code == "internal" and "bug" not in e.value.message
            with pytest.raises(RemoteError) as e:
                await b.request(a.peer_id, "echo", "field", {"n": "not an int"})
            assert e.value.code == "bad-message"
            # the same stream keeps working after error replies
            assert (await b.request(a.peer_id, "echo", "ok")).t == "echo"


async def test_an_unknown_protocol_fails_to_open_with_a_typed_error(tmp_path):
    async with node_runner() as runner:
        a, b = await pair(runner, tmp_path)
        with trio.fail_after(40), pytest.raises(P2PInferError):
            await b.request(a.peer_id, "nothing-here", "x")


@pytest.mark.parametrize(
    ("junk", "code"),
    [
        (b"\x00\x00\x00\x05hello", "bad-message"),  # a frame that is not msgpack
        (b"\x00\x00\x00\x01\x01", "bad-message"),  # msgpack, not a map
        (b"\xff\xff\xff\xff", "too-large"),  # a length far above the frame limit
        (b"\x00\x00\x00\x08" + msgpack.packb({"v": 7, "t": "x"}), "unsupported-version"),
    ],
    ids=["not-msgpack", "not-a-map", "oversized-length", "unknown-version"],
)
async def test_garbage_gets_a_typed_error_and_the_node_keeps_serving_others(tmp_path, junk, code):
    async with node_runner() as runner:
        a, b = await pair(runner, tmp_path)
        c = await runner.start(node_config(tmp_path, "c", boot=[a.addrs[0]], net={"dht": False}))
        with trio.fail_after(20):
            raw = await b.host.new_stream(a.peer_id, protocol_id("echo"), timeout_s=10)
            await raw.write(junk)
            s = b_stream(b, raw, a.peer_id)
            with pytest.raises(RemoteError) as e:
                await s.recv()
            assert e.value.code == code
            await s.aclose()
            # the garbage did not hurt the node: b's connection and others' still work
            assert (await b.request(a.peer_id, "echo", "again")).t == "echo"
            await c.wait_for_peers(1, timeout=15)
            assert (await c.request(a.peer_id, "echo", "hi")).get("peer", str) == c.peer_id
        assert a.guard.counters["garbage"] == 1


def b_stream(node: Node, raw, peer_id: str):
    from p2pinfer.net.streams import FramedStream

    return FramedStream(raw, peer_id, max_frame=node.config.limits.max_frame_bytes, timeout_s=10)


async def test_a_silent_peer_is_timed_out_and_told_so(tmp_path):
    async with node_runner() as runner:
        a, b = await pair(runner, tmp_path, limits={"stream_timeout_s": 0.5})
        with trio.fail_after(10):
            raw = await b.host.new_stream(a.peer_id, protocol_id("echo"), timeout_s=10)
            await raw.write(b"\x00\x00")  # half a frame header, then nothing
            s = b_stream(b, raw, a.peer_id)
            with pytest.raises(RemoteError) as e:
                await s.recv()
            assert e.value.code == "timeout"


async def test_a_request_that_is_not_answered_in_time_raises_a_timeout(tmp_path):
    async with node_runner() as runner:
        a, b = await pair(runner, tmp_path)

        async def slow(msg: Message, peer_id: str) -> bytes:
            await trio.sleep(5)
            return encode_message("late")

        a.set_handler("slow", slow)
        with trio.fail_after(10), pytest.raises(P2PInferError) as e:
            await b.request(a.peer_id, "slow", "x", timeout=0.3)
        assert e.value.code == "timeout"


async def test_inbound_streams_above_the_limit_are_answered_busy(tmp_path):
    async with node_runner() as runner:
        a, b = await pair(runner, tmp_path, limits={"max_inbound_streams": 2})
        release = trio.Event()
        entered = []

        async def hold(msg: Message, peer_id: str) -> bytes:
            entered.append(peer_id)
            await release.wait()
            return encode_message("done")

        a.set_handler("hold", hold)
        results: list[str] = []

        async def call() -> None:
            try:
                results.append((await b.request(a.peer_id, "hold", "x")).t)
            except RemoteError as e:
                results.append(e.code)

        with trio.fail_after(20):
            async with trio.open_nursery() as n:
                for _ in range(2):
                    n.start_soon(call)
                while len(entered) < 2:
                    await trio.sleep(0.02)
                await call()  # the third concurrent stream
                release.set()
        assert sorted(results) == ["busy", "done", "done"]


async def test_a_streaming_handler_exchanges_many_messages_on_one_stream(tmp_path):
    async with node_runner() as runner:
        a, b = await pair(runner, tmp_path)

        async def counter(stream, peer_id: str) -> None:
            total = 0
            while True:
                msg = await stream.recv(expect={"add", "end"})
                if msg.t == "end":
                    await stream.send("total", {"sum": total})
                    return
                total += msg.get("n", int)
                await stream.send("ack", {"so_far": total})

        a.set_handler("counter", counter, streaming=True)
        with trio.fail_after(10):
            async with await b.open_stream(a.peer_id, "counter") as s:
                for n in range(1, 6):
                    await s.send("add", {"n": n})
                    assert (await s.recv(expect={"ack"})).get("so_far", int) == n * (n + 1) // 2
                await s.send_bytes(encode_message("end"))
                assert (await s.recv(expect={"total"})).get("sum", int) == 15


async def test_an_unexpected_message_type_is_a_wire_error(tmp_path):
    async with node_runner() as runner:
        a, b = await pair(runner, tmp_path)
        with trio.fail_after(10), pytest.raises(WireError):
            await b.request(a.peer_id, "echo", "x", expect={"something-else"})


# -- the zero-copy encoder writes exactly what encode_message writes ----------------------------

values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=10)
    | st.binary(max_size=40)
    | st.tuples(st.integers(65_530, 70_000), st.integers(0, 255)).map(
        lambda p: bytes([p[1]]) * p[0]
    ),
    lambda kids: (
        st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=8), kids, max_size=3)
    ),
    max_leaves=6,
)


@settings(deadline=None, max_examples=300)
@given(
    st.text(min_size=1, max_size=10),
    st.dictionaries(st.text(max_size=8).filter(lambda k: k not in ("v", "t")), values, max_size=4),
)
def test_the_streaming_encoder_produces_the_same_bytes_as_encode_message(t, fields):
    parts = encode_message_parts(t, fields)
    assert b"".join(bytes(p) for p in parts) == encode_message(t, fields)
