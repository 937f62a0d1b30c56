"""The host speaks Noise only; private networks need the key; bad settings are one-line errors."""

from __future__ import annotations

import secrets

import multiaddr
import pytest
import trio
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.security.insecure.transport import PLAINTEXT_PROTOCOL_ID, InsecureTransport
from libp2p.security.secio.transport import ID as SECIO_ID
from libp2p.security.secio.transport import Transport as SecioTransport

from p2pinfer.config import NetSection
from p2pinfer.errors import ConfigError
from p2pinfer.identity import NodeIdentity
from p2pinfer.net.host import DialError, load_psk, open_host

from .conftest import node_config, node_runner


@pytest.mark.parametrize("kind", ["plaintext", "secio"])
async def test_a_dialer_offering_only_plaintext_or_secio_is_refused(tmp_path, kind):
    kp = create_new_key_pair()
    sec = (
        {PLAINTEXT_PROTOCOL_ID: InsecureTransport(kp)}
        if kind == "plaintext"
        else {SECIO_ID: SecioTransport(kp)}
    )
    intruder = new_host(key_pair=kp, sec_opt=sec, muxer_preference="YAMUX")
    async with node_runner() as runner:
        node = await runner.start(node_config(tmp_path, "n", net={"dht": False}))
        async with intruder.run(listen_addrs=[multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
            with trio.fail_after(20), pytest.raises(Exception):  # noqa: B017 - libp2p's own types
                await intruder.connect(info_from_p2p_addr(multiaddr.Multiaddr(node.addrs[0])))
            assert str(kp.public_key) not in node.connected_peers()
            assert node.connected_peers() == []
            await intruder.close()


async def test_our_host_refuses_to_dial_a_plaintext_listener(tmp_path):
    kp = create_new_key_pair()
    plain = new_host(key_pair=kp, sec_opt={PLAINTEXT_PROTOCOL_ID: InsecureTransport(kp)})
    async with plain.run(listen_addrs=[multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
        target = str(plain.get_addrs()[0])
        async with open_host(NodeIdentity.generate(), NetSection(dial_timeout_s=10)) as host:
            with pytest.raises(DialError):
                await host.connect(target)
            assert host.connected_peers() == []
        await plain.close()


def _psk_file(tmp_path, name: str, key: str):
    p = tmp_path / name
    p.write_text(key + "\n")
    return str(p)


async def test_peers_sharing_a_private_network_key_connect_and_others_cannot(tmp_path):
    key = secrets.token_hex(32)
    psk = _psk_file(tmp_path, "psk", key)
    other = _psk_file(tmp_path, "other", secrets.token_hex(32))
    async with node_runner() as runner:
        a = await runner.start(node_config(tmp_path, "a", net={"psk_file": psk, "dht": False}))
        b = await runner.start(
            node_config(tmp_path, "b", boot=[a.addrs[0]], net={"psk_file": psk, "dht": False})
        )
        with trio.fail_after(20):
            await b.wait_for_peers(1, timeout=20)
        outsider = await runner.start(
            node_config(tmp_path, "c", net={"dht": False, "psk_file": other, "dial_timeout_s": 3})
        )
        with pytest.raises(DialError):
            await outsider.connect(a.addrs[0])
        no_key = await runner.start(
            node_config(tmp_path, "d", net={"dht": False, "dial_timeout_s": 3})
        )
        with pytest.raises(DialError):
            await no_key.connect(a.addrs[0])
        assert sorted(a.connected_peers()) == [b.peer_id]


@pytest.mark.parametrize("content", ["abc", "zz" * 32, "00" * 31, "00" * 33])
def test_a_malformed_private_network_key_file_is_a_config_error(tmp_path, content):
    with pytest.raises(ConfigError, match="64 hex"):
        load_psk(_psk_file(tmp_path, "psk", content))


def test_a_missing_private_network_key_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_psk(tmp_path / "absent")


async def test_listening_on_a_busy_port_is_a_config_error(tmp_path):
    async with open_host(NodeIdentity.generate(), NetSection()) as first:
        port = first.addrs[0].split("/")[4]
        with pytest.raises(ConfigError):
            async with open_host(
                NodeIdentity.generate(), NetSection(listen=[f"/ip4/127.0.0.1/tcp/{port}"])
            ):
                pass


async def test_the_host_uses_the_node_identity_as_its_peer_id(tmp_path):
    ident = NodeIdentity.generate()
    async with open_host(ident, NetSection()) as host:
        assert host.peer_id == ident.peer_id
        assert all(a.endswith(f"/p2p/{ident.peer_id}") for a in host.addrs)


async def test_dialing_a_bad_address_is_a_dial_error(tmp_path):
    async with open_host(NodeIdentity.generate(), NetSection(dial_timeout_s=2)) as host:
        with pytest.raises(DialError):
            await host.connect("/ip4/127.0.0.1/tcp/1")  # no /p2p/ part
        with pytest.raises(DialError):
            await host.connect(f"/ip4/127.0.0.1/tcp/1/p2p/{NodeIdentity.generate().peer_id}")
        with pytest.raises(DialError):
            await host.connect(host.addrs[0])  # ourselves


async def test_announce_addresses_replace_the_bound_ones_in_addrs_and_adverts(tmp_path):
    announce = "/ip4/203.0.113.7/tcp/4001"
    async with node_runner() as runner:
        node = await runner.start(
            node_config(tmp_path, "n", net={"dht": False, "announce": [announce]})
        )
        assert node.addrs == [f"{announce}/p2p/{node.peer_id}"]
        assert node.advert.addrs == (f"{announce}/p2p/{node.peer_id}",)
