"""The connection gate: a peer banned by a node cannot keep or make a connection to it (nor open
any stream, libp2p's own protocols included) while the ban lasts, and is served again after.

Two real nodes on loopback; the banned one is an ordinary node, so the refusal is seen from the
side of a peer that tries everything a node does (its dialer, gossip, adverts, pings)."""

import pytest
import trio

from p2pinfer.net.host import DialError

from .conftest import node_config, node_runner, wait_until


async def test_a_banned_peer_is_disconnected_and_its_new_connections_are_closed(tmp_path):
    async with node_runner() as runner:
        a = await runner.start(node_config(tmp_path, "a"))
        b = await runner.start(node_config(tmp_path, "b", boot=[a.addrs[0]]))
        await wait_until(lambda: a.peer_id in b.connected_peers(), 10, "b connected to a")
        assert await b.ping(a.peer_id) > 0

        await a.ban(b.peer_id, 30.0)
        await wait_until(lambda: b.peer_id not in a.connected_peers()
                         and a.peer_id not in b.connected_peers(), 5, "b disconnected")
        refused = a.status()["counters"]["streams"]["refused_connections"]
        # b tries again (its bootstrap loop redials every 0.5 s, and we dial by hand): every
        # connection is closed at once, so nothing it sends is served
        for _ in range(3):
            try:
                await b.dial(a.addrs[0])
            except DialError:
                pass
            with pytest.raises(DialError):
                await b.ping(a.peer_id, count=1, timeout=3.0)
        counters = a.status()["counters"]["streams"]
        assert counters["refused_connections"] > refused
        assert counters["banned_peers"] == 1
        # a does not dial b either while the ban lasts
        with pytest.raises(DialError, match="banned"):
            await a.dial(b.addrs[0])
        # a stays open to everyone else
        c = await runner.start(node_config(tmp_path, "c", boot=[a.addrs[0]]))
        await wait_until(lambda: a.peer_id in c.connected_peers(), 10, "c connected to a")
        assert await c.ping(a.peer_id) > 0

        a.unban(b.peer_id)
        with trio.fail_after(15):
            while True:
                try:
                    await b.dial(a.addrs[0])
                    assert await b.ping(a.peer_id, count=1) > 0
                    break
                except DialError:
                    await trio.sleep(0.2)
        await trio.sleep(0.5)  # the connection is kept, not closed behind the pong
        assert a.peer_id in b.connected_peers()


async def test_a_ban_runs_out(tmp_path):
    async with node_runner() as runner:
        a = await runner.start(node_config(tmp_path, "a"))
        b = await runner.start(node_config(tmp_path, "b", boot=[a.addrs[0]]))
        await wait_until(lambda: a.peer_id in b.connected_peers(), 10, "b connected to a")
        await a.ban(b.peer_id, 1.5)
        with pytest.raises(DialError):
            await b.ping(a.peer_id, count=1, timeout=1.0)
        await trio.sleep(1.5)
        # b's bootstrap loop reconnects on its own once the ban ran out
        await wait_until(lambda: a.peer_id in b.connected_peers(), 10, "b reconnected")
        assert await b.ping(a.peer_id, count=1) > 0
