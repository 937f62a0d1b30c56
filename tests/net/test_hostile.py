"""Hostile peers against a running node: a raw py-libp2p host (not our Node) attacks a peer
process serving a model span, while an honest requester generates through that peer.

One peer process (`p2pinfer node --config ...` through the testnet helper) is shared by the
module; each attack comes from a fresh attacker identity and is bounded in time. For every
attack: the honest generation started during the attack returns the same tokens as before it,
within a second of its normal time; the peer's peak RSS (VmHWM) grows by less than its
configured frame budget; the refusals are counted by reason; the attacker collects strikes,
is disconnected and refused.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgpack
import pytest
import torch
import trio
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from multiaddr import Multiaddr

from p2pinfer.config import config_from_dict
from p2pinfer.control import query_control
from p2pinfer.node import Node
from p2pinfer.testnet import PeerProcess, Testnet

pytestmark = pytest.mark.slow

MIB = 1 << 20
LIMITS = {
    "first_frame_timeout_s": 1.5,
    "frame_budget_bytes": 256 * MIB,
    "frame_budget_per_peer_bytes": 96 * MIB,
    "strikes_to_ban": 8,
    "ban_s": 300.0,
}
MAX_FRAME = 80 * MIB  # the default limits.max_frame_bytes
PROMPT = "w3 w17 w42 w8 w64 w5"
N_TOKENS = 12
PROTOCOLS = ["stage", "ping", "advert", "tensor"]
ATTACK_S = 5.0


def _llama_with_word_tokenizer(directory: Path) -> Path:
    """A small random Llama checkpoint and a word-level tokenizer (`wN` is token N)."""
    import transformers as tf
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    torch.manual_seed(3)
    cfg = tf.LlamaConfig(vocab_size=97, hidden_size=32, num_hidden_layers=6,
                         num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                         max_position_embeddings=64, initializer_range=0.3)
    tf.LlamaForCausalLM(cfg).eval().save_pretrained(directory, safe_serialization=True)
    vocab = {f"w{i}": i for i in range(1, 97)}
    vocab["[UNK]"] = 0
    tok = HFTokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = Whitespace()
    tok.save(str(directory / "tokenizer.json"))
    return directory


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Any:
    """(peer process, model directory): one peer serving layers [1, 5) of the model."""
    root = tmp_path_factory.mktemp("hostile")
    model = _llama_with_word_tokenizer(root / "llama")
    net = Testnet(1, base_dir=root / "net", config_for=lambda i: {
        "serve": {"model": str(model), "layers": [1, 5]},
        "gossip": {"advert_interval_s": 1.0},
        "limits": LIMITS,
    })
    try:
        trio.run(net.start)
        yield net.peers[0], model
    finally:
        net.stop()


def vm_hwm(pid: int) -> int:
    """Peak resident memory of a process, in bytes (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM line")


async def stream_counters(peer: PeerProcess) -> dict[str, Any]:
    reply = await query_control(peer.control_path, "status")
    return reply["counters"]["streams"]


class Attacker:
    """A raw libp2p host (its own identity) connected to the victim."""

    def __init__(self, host: Any, victim: PeerProcess) -> None:
        self.host = host
        self.victim = victim
        self.victim_id = ID.from_base58(victim.peer_id)
        self.opened = 0
        self.refused = 0

    async def connect(self) -> None:
        await self.host.connect(info_from_p2p_addr(Multiaddr(self.victim.addrs[0])))

    async def stream(self, name: str) -> Any | None:
        """A raw stream on `/p2pinfer/<name>/1.0.0`, or None when the victim refuses."""
        try:
            with trio.fail_after(5):
                s = await self.host.new_stream(self.victim_id, [TProtocol(f"/p2pinfer/{name}/1.0.0")])
        except Exception:  # noqa: BLE001 - any refusal (reset, closed connection, timeout)
            self.refused += 1
            return None
        self.opened += 1
        return s

    async def reconnect_and_probe(self) -> bool:
        """After a ban: True when the victim still refuses a new stream from us."""
        try:
            with trio.fail_after(5):
                await self.connect()
                s = await self.host.new_stream(self.victim_id, [TProtocol("/p2pinfer/ping/1.0.0")])
                await s.write(_frame(msgpack.packb({"v": 1, "t": "ping"})))
                reply = await s.read(4)
        except Exception:  # noqa: BLE001 - reset, refused or closed: all mean "refused"
            return True
        return not reply


@asynccontextmanager
async def attacker(victim: PeerProcess) -> AsyncIterator[Attacker]:
    key = create_new_key_pair()
    sec = {NOISE_PROTOCOL_ID: NoiseTransport(key, noise_privkey=create_x25519_key_pair().private_key)}
    host = new_host(key_pair=key, sec_opt=sec, muxer_preference="YAMUX")
    async with host.run(listen_addrs=[Multiaddr("/ip4/127.0.0.1/tcp/0")]):
        atk = Attacker(host, victim)
        await atk.connect()
        try:
            yield atk
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(3):
                try:
                    await host.disconnect(atk.victim_id)
                except Exception:  # noqa: BLE001, S110 - already disconnected by the victim
                    pass


def _frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "big") + payload


async def _hold(atk: Attacker, name: str, first: bytes, then: Callable[[Any], Awaitable[None]]
                | None = None) -> None:
    """Open one stream, write `first`, run `then` (or just keep the stream open)."""
    s = await atk.stream(name)
    if s is None:
        return
    try:
        if first:
            await s.write(first)
        if then is not None:
            await then(s)
        await trio.sleep_forever()
    except Exception:  # noqa: BLE001, S110 - the victim reset or closed it: what we expect
        pass


# -- attacks: each runs until cancelled ------------------------------------------------------
async def idle_streams(atk: Attacker) -> None:
    """64 streams that never send a byte, on each protocol."""
    async with trio.open_nursery() as n:
        for name in PROTOCOLS:
            for _ in range(64):
                n.start_soon(_hold, atk, name, b"")


async def max_frames(atk: Attacker) -> None:
    """200 streams announcing the maximum frame; each sends 1 MiB of it, then stalls."""
    async def some_data(s: Any) -> None:
        await s.write(bytes(MIB))

    async with trio.open_nursery() as n:
        for i in range(200):
            n.start_soon(_hold, atk, PROTOCOLS[i % 2 * 3], MAX_FRAME.to_bytes(4, "big"),
                         some_data)


async def decoder_bombs(atk: Attacker) -> None:
    """A msgpack nesting bomb, an array bomb (8 MiB of empty arrays in one array) and an item
    bomb (1,000 arrays of 1,000 empty arrays), each on 4 streams of every protocol."""
    nesting = b"\x91" * 200_000 + b"\x90"
    array = b"\xdd" + (8 * MIB).to_bytes(4, "big") + b"\x90" * (8 * MIB)
    items = b"\x81\xa1x" + b"\xdc\x03\xe8" + (b"\xdc\x03\xe8" + b"\x90" * 1000) * 1000
    async with trio.open_nursery() as n:
        for bomb in (nesting, array, items):
            for name in PROTOCOLS:
                for _ in range(4):
                    n.start_soon(_hold, atk, name, _frame(bomb))


async def huge_prefix(atk: Attacker) -> None:
    """A 4 GiB length prefix on 8 streams of every protocol."""
    async with trio.open_nursery() as n:
        for name in PROTOCOLS:
            for _ in range(8):
                n.start_soon(_hold, atk, name, b"\xff\xff\xff\xff")


async def slowloris(atk: Attacker) -> None:
    """Frames sent 1 byte per second on 16 streams."""
    frame = _frame(msgpack.packb({"v": 1, "t": "ping", "pad": "x" * 64}))

    async def drip(s: Any) -> None:
        for i in range(4, len(frame)):
            await trio.sleep(1.0)
            await s.write(frame[i : i + 1])

    async with trio.open_nursery() as n:
        for i in range(16):
            # half drip the header too, half send the header at once and drip the body
            head = frame[:1] if i % 2 else frame[:4]
            n.start_soon(_hold, atk, PROTOCOLS[i % 2], head, drip)


ATTACKS = {
    "idle_streams": (idle_streams, {"too_many_open", "first_frame_timeout"}),
    "max_frames": (max_frames, {"too_many_open", "slow_frame", "budget"}),
    "decoder_bombs": (decoder_bombs, {"malformed"}),
    "huge_prefix": (huge_prefix, {"oversize"}),
    "slowloris": (slowloris, {"first_frame_timeout", "slow_frame"}),
}


def client_config(tmp_path: Path, peer: PeerProcess) -> Any:
    return config_from_dict({
        "node": {"name": "client", "data_dir": str(tmp_path / "client"),
                 "network_id": "p2pinfer-localnet", "roles": ["client"]},
        "net": {"bootstrap": [peer.addrs[0]], "dht": False},
        "control": {"enabled": False},
        "inference": {"step_timeout_s": 10.0, "k_head": 1, "k_tail": 1},
    })


@pytest.mark.parametrize("attack", list(ATTACKS))
async def test_a_hostile_peer_neither_stops_others_nor_grows_memory(served, tmp_path, attack):
    peer, model = served
    run_attack, reasons = ATTACKS[attack]
    async with Node(client_config(tmp_path, peer)) as client:
        await client.wait_for_route(str(model), timeout=30)
        normal = []
        for _ in range(2):  # the first one warms caches up
            t0 = time.perf_counter()
            ref = await client.generate(PROMPT, model=str(model), max_new_tokens=N_TOKENS)
            normal.append(time.perf_counter() - t0)
        before = await stream_counters(peer)
        hwm_before = vm_hwm(peer.proc.pid)

        async with attacker(peer) as atk:
            async with trio.open_nursery() as n:
                n.start_soon(run_attack, atk)
                await trio.sleep(1.0)  # the attack is under way
                t0 = time.perf_counter()
                with trio.fail_after(30):
                    got = await client.generate(PROMPT, model=str(model), max_new_tokens=N_TOKENS)
                during = time.perf_counter() - t0
                await trio.sleep(max(0.0, ATTACK_S - 1.0 - during))
                n.cancel_scope.cancel()
            with trio.fail_after(15):  # the victim counts and bans within its timeouts
                while (await stream_counters(peer))["disconnected"] <= before["disconnected"]:
                    await trio.sleep(0.25)
            still_refused = await atk.reconnect_and_probe()

        after = await stream_counters(peer)
        hwm_after = vm_hwm(peer.proc.pid)
        assert got.token_ids == ref.token_ids
        assert during <= min(normal) + 1.0, (during, normal)
        assert hwm_after - hwm_before < LIMITS["frame_budget_bytes"], (hwm_before, hwm_after)
        assert after["frame_memory"]["peak_bytes"] <= LIMITS["frame_budget_bytes"]
        assert after["frame_memory"]["in_use_bytes"] == 0
        counted = {r: after[r] - before[r] for r in reasons}
        assert any(counted.values()), counted
        assert after["bans"] > before["bans"] and after["disconnected"] > before["disconnected"]
        assert still_refused
        assert after["refused_banned"] > before["refused_banned"] or atk.refused > 0
        print(f"{attack}: normal {min(normal):.2f} s, under attack {during:.2f} s, "
              f"HWM +{(hwm_after - hwm_before) / MIB:.1f} MiB, counted {counted}, "
              f"pid {os.getpid()}")
