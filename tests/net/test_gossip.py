"""GossipSub on this network's topics: delivery at our peer counts, drains, advert validation."""

from __future__ import annotations

import time

import msgpack
import trio

from p2pinfer.identity import NodeIdentity
from p2pinfer.net.adverts import REJECT_REASONS, Advert, sign_advert
from p2pinfer.net.gossip import topic_name

from .conftest import NETWORK, node_config, node_runner, wait_until


def test_topic_names_carry_the_network_id_and_major_version():
    assert topic_name("p2pinfer-devnet", "votes") == "p2pinfer/p2pinfer-devnet/votes/1"
    assert topic_name("testnet", "adverts", 2) == "p2pinfer/testnet/adverts/2"


async def _mesh(runner, tmp_path, n: int):
    boot = await runner.start(node_config(tmp_path, "boot"))
    others = await runner.start_many(
        [node_config(tmp_path, f"n{i}", boot=[boot.addrs[0]]) for i in range(n - 1)]
    )
    nodes = [boot, *others]
    with trio.fail_after(30):
        for node in nodes:
            await node.wait_for_peers(n - 1, timeout=30)
    return nodes


async def test_a_burst_above_libp2ps_default_rate_limit_reaches_every_peer(tmp_path):
    # libp2p's defaults cap a publisher at 10 messages/s per topic and silently drop the rest;
    # the node's settings let a burst of 30 through to all 5 subscribers
    async with node_runner() as runner:
        nodes = await _mesh(runner, tmp_path, 6)
        got: dict[str, list[bytes]] = {n.peer_id: [] for n in nodes[1:]}

        async def collect(node, task_status=trio.TASK_STATUS_IGNORED):
            async with node.subscribe("votes") as msgs:
                task_status.started()
                async for origin, payload in msgs:
                    assert origin == nodes[0].peer_id
                    got[node.peer_id].append(payload)

        async with trio.open_nursery() as nursery:
            for node in nodes[1:]:
                await nursery.start(collect, node)
            await nodes[0].gossip.join("votes")
            await wait_until(lambda: nodes[0].gossip.topic_peers("votes") == 5, 20)
            await trio.sleep(1.5)  # one heartbeat: meshes graft
            payloads = [b"vote-%d" % i for i in range(30)]
            for p in payloads:
                await nodes[0].publish("votes", p)
            await wait_until(lambda: all(len(v) == 30 for v in got.values()), 20)
            nursery.cancel_scope.cancel()
        for v in got.values():
            assert sorted(v) == sorted(payloads)


async def test_a_flooding_publisher_is_cut_to_its_rate_while_other_publishers_get_through(
    tmp_path,
):
    # the limit is per origin, at the receiving peer: a flood from one publisher is refused past
    # its bucket (2 s worth), another publisher on the same topic is unaffected, and the
    # flooder's bucket refills
    async with node_runner() as runner:
        a = await runner.start(node_config(tmp_path, "a", net={"dht": False}))
        b = await runner.start(node_config(tmp_path, "b", boot=[a.addrs[0]], net={"dht": False},
                                           gossip={"max_msgs_per_s": 5.0}))
        c = await runner.start(node_config(tmp_path, "c", boot=[b.addrs[0]], net={"dht": False}))
        await b.wait_for_peers(2, timeout=20)
        got: list[tuple[str, bytes]] = []
        async with b.subscribe("news") as msgs:
            for n in (a, c):
                await n.gossip.join("news")
            await wait_until(lambda: b.gossip.topic_peers("news") == 2, 20)
            await trio.sleep(1.5)

            async def drain(timeout: float) -> None:
                with trio.move_on_after(timeout):
                    async for item in msgs:
                        got.append(item)

            for i in range(40):
                await a.publish("news", b"flood-%d" % i)
            await drain(1.0)
            from_a = [p for o, p in got if o == a.peer_id]
            assert 10 <= len(from_a) <= 16, len(from_a)
            assert b.gossip.counters["rate_limited"] >= 20  # the rest may still be in flight

            got.clear()
            await c.publish("news", b"other")
            await trio.sleep(1.0)
            await a.publish("news", b"after")
            await drain(2.0)
            assert (c.peer_id, b"other") in got
            assert (a.peer_id, b"after") in got


async def test_a_subscriber_that_does_not_read_loses_only_its_own_messages(tmp_path):
    async with node_runner() as runner:
        a = await runner.start(node_config(tmp_path, "a", net={"dht": False}))
        b = await runner.start(node_config(tmp_path, "b", boot=[a.addrs[0]], net={"dht": False}))
        await b.wait_for_peers(1, timeout=20)
        async with b.subscribe("news") as lazy, b.subscribe("news") as eager:
            await a.gossip.join("news")
            await wait_until(lambda: a.gossip.topic_peers("news") == 1, 20)
            await trio.sleep(1.5)
            seen = []
            with trio.fail_after(30):
                for i in range(40):
                    await a.publish("news", b"%d" % i)
                    seen.append(await eager.receive())
            assert len(seen) == 40
            assert b.gossip.counters["dropped"] == 40 - 32
            pending = []
            while True:
                try:
                    pending.append(lazy.receive_nowait())
                except trio.WouldBlock:
                    break
            assert len(pending) == 32


async def test_bad_adverts_on_gossip_are_dropped_and_counted_by_reason(tmp_path):
    async with node_runner() as runner:
        x = await runner.start(node_config(tmp_path, "x", net={"dht": False}))
        y = await runner.start(node_config(tmp_path, "y", boot=[x.addrs[0]], net={"dht": False}))
        await y.wait_for_peers(1, timeout=20)
        good = y.peer(x.peer_id).advert
        await wait_until(lambda: x.gossip.topic_peers("adverts") == 1, 20)
        await trio.sleep(1.5)

        now = int(time.time() * 1000)
        z = NodeIdentity.generate()

        def advert_of(ident: NodeIdentity, **over) -> Advert:
            base = {
                "peer_id": ident.peer_id,
                "network_id": NETWORK,
                "seq": now,
                "issued_ms": now,
                "expires_ms": now + 60_000,
            }
            base.update(over)
            return Advert(**base)

        env = msgpack.unpackb(sign_advert(advert_of(x.identity), x.identity))
        unsigned = msgpack.packb({**env, "sig": b""}, use_bin_type=True)
        forged = dict(env, sig=z.sign(b"p2pinfer/advert/v1\x00" + env["body"]))
        bad = {
            "oversized": b"\x00" * (17 * 1024),
            "malformed": b"\xc1 not msgpack",
            "unsigned": unsigned,
            "bad-signature": msgpack.packb(forged, use_bin_type=True),
            "wrong-signer": sign_advert(advert_of(z), z),
            "foreign-network": sign_advert(
                advert_of(x.identity, network_id="elsewhere"), x.identity
            ),
            "expired": sign_advert(
                advert_of(x.identity, issued_ms=now - 120_000, expires_ms=now - 60_000), x.identity
            ),
            "replayed": sign_advert(advert_of(x.identity, seq=1), x.identity),
        }
        assert set(bad) == set(REJECT_REASONS)
        for payload in bad.values():
            await x.gossip.publish("adverts", payload)
        await wait_until(lambda: all(y.validator.rejected[r] >= 1 for r in REJECT_REASONS), 20)
        # x's row still holds its real advert (or a newer one it signed since), not a replay
        assert y.peer(x.peer_id).advert.seq >= good.seq
        assert z.peer_id not in {p.peer_id for p in y.peers()}
        status = y.status()["counters"]["adverts"]["rejected"]
        assert all(status[r] >= 1 for r in REJECT_REASONS)


async def test_a_connected_peer_that_pubsub_forgot_is_registered_again(tmp_path):
    from libp2p.peer.id import ID

    async with node_runner() as runner:
        a = await runner.start(node_config(tmp_path, "a", net={"dht": False}))
        b = await runner.start(node_config(tmp_path, "b", boot=[a.addrs[0]], net={"dht": False}))
        await b.wait_for_peers(1, timeout=20)
        await wait_until(lambda: b.gossip.has_peer(a.peer_id), 20)
        # what libp2p does when one of two parallel connections to a peer closes
        b.gossip.pubsub._handle_dead_peer(ID.from_base58(a.peer_id))
        assert not b.gossip.has_peer(a.peer_id) and a.peer_id in b.connected_peers()
        await wait_until(lambda: b.gossip.has_peer(a.peer_id), 20, "pubsub stream reopened")


async def test_the_heartbeat_stays_at_the_configured_interval_in_a_small_network(tmp_path):
    # libp2p's adaptive gossip scores a mesh against D = 8 every 30 s and, in any network of
    # fewer than ~9 peers, rewrites the heartbeat to 30 s or 60 s. Each router's 30-s health
    # clock is moved back so its own heartbeat loop takes that step now, not half a minute on.
    async with node_runner() as runner:
        nodes = await _mesh(runner, tmp_path, 3)
        configured = nodes[0].config.gossip.heartbeat_s
        assert [n.gossip.router.heartbeat_interval for n in nodes] == [configured] * 3
        for n in nodes:
            n.gossip.router.last_health_update -= 3600
        await trio.sleep(3 * configured + 0.5)  # three heartbeats of each router
        assert [n.gossip.router.heartbeat_interval for n in nodes] == [configured] * 3
