"""Peers find each other with no central server: one bootstrap peer, the DHT, re-dial, mDNS."""

from __future__ import annotations

import threading

import multiaddr
import pytest
import trio
from libp2p.discovery.events.peerDiscovery import peerDiscovery
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo as Libp2pPeerInfo

from p2pinfer.identity import NodeIdentity
from p2pinfer.net.host import DialError

from .conftest import free_port, node_config, node_runner, wait_until


async def test_five_nodes_find_each_other_through_one_bootstrap_and_the_dht(tmp_path):
    async with node_runner() as runner:
        boot = await runner.start(node_config(tmp_path, "boot"))
        # every other node knows only the bootstrap peer
        others = await runner.start_many(
            [node_config(tmp_path, f"n{i}", boot=[boot.addrs[0]]) for i in range(4)]
        )
        everyone = [boot, *others]
        for node in everyone:
            node.target_peers = 0  # no dialing from adverts: only the DHT may connect them
        with trio.fail_after(30):
            for node in everyone:
                await node.wait_for_peers(len(everyone) - 1, timeout=30)
        for node in everyone:
            known = {p.peer_id for p in node.peers()}
            assert known == {n.peer_id for n in everyone} - {node.peer_id}
        # the DHT led every node to peers its bootstrap list never named
        await wait_until(
            lambda: all(len(n.connected_peers()) == len(everyone) - 1 for n in everyone), 20
        )
        for node in everyone:
            assert node.dht is not None and node.dht.routing_table_size == len(everyone) - 1


async def test_a_well_connected_node_stops_walking_the_dht_every_few_seconds(tmp_path):
    """A provider lookup walks the DHT and re-announces our record; a node that holds its
    target of connections does it once per DHT_WELL_CONNECTED_S, one below target on the
    short schedule (0.5, 1, 2, 4 s ...)."""
    async with node_runner() as runner:
        boot = await runner.start(node_config(tmp_path, "boot"))
        full, short = await runner.start_many(
            [node_config(tmp_path, f"n{i}", boot=[boot.addrs[0]]) for i in range(2)]
        )
        boot.target_peers = 0
        full.target_peers = 1  # the bootstrap connection meets it
        short.target_peers = 8  # never met by three nodes
        await wait_until(lambda: full.dht.lookups >= 1 and short.dht.lookups >= 1, 20)
        at_first = full.dht.lookups
        await wait_until(lambda: short.dht.lookups >= 4, 30)
        assert full.dht.lookups == at_first


async def test_libp2ps_own_dht_maintenance_walks_the_network_only_at_start(tmp_path):
    """libp2p's KadDHT maintenance (every 10 min: a lookup per bucket, then re-providing our
    key) does nothing after its first run: every node started together would walk at the same
    moment. Its later runs here, on a node with a full routing table, query nobody."""
    async with node_runner() as runner:
        a = await runner.start(node_config(tmp_path, "a"))
        b = await runner.start(node_config(tmp_path, "b", boot=[a.addrs[0]]))
        await wait_until(lambda: b.dht.lookups >= 1 and b.dht.routing_table_size >= 1, 20)
        kad = b.dht.dht
        queried: list[str] = []
        real_query = kad.peer_routing._query_peer_for_closest

        async def counted(peer, target_key):
            queried.append(str(peer))
            return await real_query(peer, target_key)

        kad.peer_routing._query_peer_for_closest = counted
        provided = kad.provider_store.provide
        provides: list[bytes] = []

        async def counted_provide(key):
            provides.append(key)
            return await provided(key)

        kad.provider_store.provide = counted_provide
        assert kad.maintenance_walks == 1
        with trio.fail_after(10):
            await kad.refresh_routing_table()
            await kad.provider_store._republish_provider_records()
        assert queried == [] and provides == []
        # the node's own lookup still walks the DHT and provides the key
        with trio.fail_after(20):
            await b.dht.find_network_peers()
        assert queried and provides

async def test_without_the_dht_adverts_still_converge_over_gossip_through_the_bootstrap(tmp_path):
    async with node_runner() as runner:
        boot = await runner.start(node_config(tmp_path, "boot", net={"dht": False}))
        others = await runner.start_many(
            [
                node_config(tmp_path, f"n{i}", boot=[boot.addrs[0]], net={"dht": False})
                for i in range(3)
            ]
        )
        for node in others:
            node.target_peers = 0  # dial nobody found in adverts
        with trio.fail_after(30):
            for node in others:
                await node.wait_for_peers(3, timeout=30)
        for node in others:
            # only the bootstrap peer is connected: the others' adverts came by gossip
            assert node.connected_peers() == [boot.peer_id]
            assert node.validator.accepted >= 3


async def test_nodes_dial_peers_named_in_adverts_until_they_reach_their_target(tmp_path):
    async with node_runner() as runner:
        boot = await runner.start(node_config(tmp_path, "boot", net={"dht": False}))
        others = await runner.start_many(
            [
                node_config(tmp_path, f"n{i}", boot=[boot.addrs[0]], net={"dht": False})
                for i in range(3)
            ]
        )
        everyone = [boot, *others]
        await wait_until(
            lambda: all(len(n.connected_peers()) == 3 for n in everyone), 30, "full mesh"
        )
        # one dialer per pair (the counter moves when the dial returns, just after the conn)
        await wait_until(lambda: sum(n.counters["advert_dials"] for n in everyone) == 3, 10)


async def test_adverts_carry_what_a_peer_serves_and_queries_find_it(tmp_path):
    async with node_runner() as runner:
        a = await runner.start(node_config(tmp_path, "a"))
        b = await runner.start(node_config(tmp_path, "b", boot=[a.addrs[0]]))
        b.update_advert(
            model="tiny-llama", spans=[(0, 4)], throughput=12.5, load=0.25, tee_digest=b"\x01" * 32
        )
        await wait_until(
            lambda: (p := a.peer(b.peer_id)) is not None and p.model == "tiny-llama",
            20,
            "b's new advert at a",
        )
        await wait_until(lambda: a.peer(b.peer_id).rtt_ms is not None, 20, "a ping")
        row = a.peer(b.peer_id)
        assert row.spans == ((0, 4),)
        assert row.throughput == 12.5 and row.load == 0.25
        assert row.tee_digest == b"\x01" * 32
        assert row.rtt_ms is not None and row.rtt_ms > 0
        assert [p.peer_id for p in a.serving("tiny-llama", 3)] == [b.peer_id]
        assert a.serving("tiny-llama", 4) == []
        assert a.serving("other-model") == []
        d = row.to_dict()
        assert d["peer_id"] == b.peer_id and d["tee_digest"] == "01" * 32


async def test_peers_find_each_other_again_after_the_bootstrap_peer_restarts(tmp_path):
    port = free_port()
    ident = NodeIdentity.generate()
    boot_cfg = node_config(tmp_path, "boot", net={"listen": [f"/ip4/127.0.0.1/tcp/{port}"]})
    async with node_runner() as runner:
        boot = await runner.start(boot_cfg, ident)
        addr = f"/ip4/127.0.0.1/tcp/{port}/p2p/{ident.peer_id}"
        a = await runner.start(node_config(tmp_path, "a", boot=[addr], net={"dht": False}))
        await a.wait_for_peers(1, timeout=20)
        await runner.stop(boot)
        await wait_until(lambda: ident.peer_id not in a.connected_peers(), 10, "disconnect")

        # the bootstrap peer comes back with an empty table; `a` re-dials it
        boot2 = await runner.start(boot_cfg, ident)
        with trio.fail_after(20):
            await boot2.wait_for_peers(1, timeout=20)
        # a newcomer that knows only the restarted bootstrap peer finds `a` again
        c = await runner.start(node_config(tmp_path, "c", boot=[addr]))
        with trio.fail_after(30):
            await c.wait_for_peers(2, timeout=30)
        assert {p.peer_id for p in c.peers()} == {ident.peer_id, a.peer_id}
        # the bootstrap dialer has tried again (another path, dialing the addresses adverts
        # name, may have reconnected first while a dial into the dying peer was timing out)
        assert a.bootstrap is not None
        await wait_until(lambda: a.bootstrap.dials >= 2, 15, "bootstrap re-dial")


async def test_a_peer_that_restarted_on_another_port_is_reachable_at_once(tmp_path):
    # dialing it while it was down put it in libp2p's negative cache; its new address (as a
    # signed task or an advert names it) must still be dialable straight away
    ident = NodeIdentity.generate()
    async with node_runner() as runner:
        a = await runner.start(node_config(tmp_path, "a", net={"dht": False}))
        b = await runner.start(node_config(tmp_path, "b", net={"dht": False}), ident)
        old = b.addrs[0]
        await a.connect(old)
        await runner.stop(b)
        await wait_until(lambda: ident.peer_id not in a.connected_peers(), 10, "disconnect")
        with pytest.raises(DialError):
            await a.host.connect(old)
        b2 = await runner.start(node_config(tmp_path, "b2", net={"dht": False}), ident)
        assert b2.addrs[0] != old
        with trio.fail_after(15):
            assert await a.host.connect(b2.addrs[0]) == ident.peer_id


async def test_mdns_discoveries_from_zeroconfs_thread_reach_the_node_and_are_dialed(tmp_path):
    async with node_runner() as runner:
        a = await runner.start(node_config(tmp_path, "a", net={"mdns": True, "dht": False}))
        b = await runner.start(node_config(tmp_path, "b", net={"dht": False}))
        assert a.mdns is not None
        host, port = b.addrs[0].split("/")[2], b.addrs[0].split("/")[4]
        info = Libp2pPeerInfo(
            ID.from_base58(b.peer_id), [multiaddr.Multiaddr(f"/ip4/{host}/tcp/{port}")]
        )
        # zeroconf calls its handlers on its own thread: emit from a plain thread the same way
        t = threading.Thread(target=peerDiscovery.emit_peer_discovered, args=(info,))
        t.start()
        await trio.to_thread.run_sync(t.join)
        with trio.fail_after(20):
            await a.wait_for_peers(1, timeout=20)
        await wait_until(lambda: a.counters["mdns_dials"] == 1, 10)
        assert b.peer_id in a.connected_peers()


async def test_the_dht_refuses_values_in_our_record_namespace(tmp_path):
    async with node_runner() as runner:
        a = await runner.start(node_config(tmp_path, "a"))
        assert a.dht is not None
        assert a.dht.key == f"/p2pinfer/{a.network_id}/peers"
        with trio.fail_after(10), pytest.raises(Exception, match="stores no DHT values"):
            await a.dht.dht.put_value(f"/p2pinfer/{a.network_id}/x", b"anything")
