"""A probe that gets no pong in time keeps a connection that is only slow and closes one that
is stale. Two nodes on loopback; b's ping handler answers late (a loaded machine), and b
sends frames to a on another stream meanwhile, or sends nothing."""

from __future__ import annotations

import trio

import p2pinfer.node as node_module
from p2pinfer.net.streams import FramedStream
from p2pinfer.services.ping import serve_ping
from p2pinfer.wire import Message

from .conftest import node_config, node_runner, wait_until
from .hostile_peer import attacker

LATE_PONG_S = 1.5


async def late_ping(msg: Message, peer_id: str) -> bytes:
    await trio.sleep(LATE_PONG_S)
    return await serve_ping(msg, peer_id)


async def drip(stream: FramedStream, peer_id: str) -> None:
    """Sends a frame every 0.1 s until the stream dies."""
    for i in range(600):
        await stream.send("drop", {"i": i})
        await trio.sleep(0.1)


async def test_a_slow_but_live_connection_survives_a_probe_and_a_stale_one_is_redialled(
        tmp_path, monkeypatch):
    monkeypatch.setattr(node_module, "PING_TIMEOUT_S", 0.5)
    # adverts rarely, so b's gossip does not count as hearing it during the stale probe
    quiet = {"advert_interval_s": 120.0}
    async with node_runner() as runner:
        a = await runner.start(node_config(tmp_path, "a", net={"dht": False}, gossip=quiet))
        b = await runner.start(node_config(tmp_path, "b", boot=[a.addrs[0]],
                                           net={"dht": False}, gossip=quiet))
        with trio.fail_after(20):
            await b.wait_for_peers(1, timeout=20)
        b.set_handler("ping", late_ping)
        b.set_handler("drip", drip, streaming=True)
        heard: list[int] = []

        async def read_drips(stream: FramedStream) -> None:
            await stream.send("start")
            while True:
                heard.append((await stream.recv(expect={"drop"})).get("i", int))

        stream = await a.open_stream(b.peer_id, "drip")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_drips, stream)
            with trio.fail_after(10):
                while not heard:
                    await trio.sleep(0.05)
            # no pong within 0.5 s, but b's frames kept arriving: alive, kept
            assert await a.probe(b.peer_id)
            assert a.host.is_connected(b.peer_id) and not a.reach.is_down(b.peer_id)
            before = len(heard)
            await trio.sleep(0.5)
            assert len(heard) > before, "the stream the probe found alive still delivers"
            nursery.cancel_scope.cancel()
        await stream.reset()
        await trio.sleep(0.3)
        # nothing but a late pong: the connection looks stale; closed, dialled afresh, and the
        # fresh one's ping is late too: not reachable
        assert not await a.probe(b.peer_id)
        assert a.reach.is_down(b.peer_id)
        assert a.reach.heard_since(b.peer_id, 0.0)


async def test_a_peer_whose_advert_cannot_be_fetched_is_retried_with_back_off(tmp_path):
    """A connected peer that does not answer the advert protocol: the fetch is retried after
    1 s, then 2, 4 ... s, not every second (on a saturated machine, fixed 1 s retries to every
    failing peer kept it saturated)."""
    async with node_runner() as runner:
        node = await runner.start(node_config(tmp_path, "n", net={"dht": False}))
        async with attacker(node.addrs[0]) as atk:
            failures = node.adverts.counters
            await wait_until(lambda: failures["advert_fetch_failures"] >= 1, 10)
            start = failures["advert_fetch_failures"]
            await trio.sleep(6.5)  # retries due at +1, +3 (+7) s: two, where 1 s gave six
            assert atk.host.get_id().to_base58() in node.connected_peers()
            assert 1 <= failures["advert_fetch_failures"] - start <= 3


async def test_gossip_from_a_peer_counts_as_hearing_it(tmp_path, monkeypatch):
    """b's pong is late, but b's gossip keeps arriving (relayed messages): a's probe finds the
    connection alive and keeps it. Before, only our own protocols' frames counted, so under
    load a probe closed connections that carried gossip every second."""
    monkeypatch.setattr(node_module, "PING_TIMEOUT_S", 0.5)
    async with node_runner() as runner:
        a = await runner.start(node_config(tmp_path, "a", net={"dht": False}))
        b = await runner.start(node_config(tmp_path, "b", boot=[a.addrs[0]],
                                           net={"dht": False}))
        with trio.fail_after(20):
            await b.wait_for_peers(1, timeout=20)
        async with a.subscribe("chatter") as got:
            await b.gossip.join("chatter")
            await wait_until(lambda: b.gossip.topic_peers("chatter") == 1, 20)
            b.set_handler("ping", late_ping)

            async def chatter() -> None:
                for i in range(300):
                    await b.publish("chatter", b"%d" % i)
                    await trio.sleep(0.1)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(chatter)
                with trio.fail_after(10):
                    await got.receive()
                asked = a.reach.clock()
                assert await a.probe(b.peer_id)
                assert a.reach.heard_since(b.peer_id, asked)
                assert a.host.is_connected(b.peer_id) and not a.reach.is_down(b.peer_id)
                nursery.cancel_scope.cancel()
