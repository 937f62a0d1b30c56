"""Hostile peers against a running node: a raw py-libp2p host (not our Node) attacks a peer
process serving a model span, while an honest requester generates through that peer.

One peer process (`p2pinfer node --config ...` through the testnet helper) is shared by the
module; each attack runs in its own process (tests/net/hostile_peer.py, so its work does not
slow the requester it is measured against) from a fresh identity, bounded in time. For every
attack: the honest generation started during the attack returns the same tokens as before it,
within a second of its normal time; the peer's peak RSS (VmHWM) grows by less than its
configured frame budget; the refusals are counted by reason; the attacker collects strikes,
is disconnected and refused.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import trio

from p2pinfer.config import config_from_dict
from p2pinfer.node import Node
from p2pinfer.services.control import query_control
from p2pinfer.testnet import DEFAULT_NETWORK_ID, PeerProcess, Testnet

pytestmark = pytest.mark.slow

MIB = 1 << 20
LIMITS = {
    "first_frame_timeout_s": 1.5,
    "frame_budget_bytes": 256 * MIB,
    "frame_budget_per_peer_bytes": 96 * MIB,
    "strikes_to_ban": 8,
    "ban_s": 300.0,
}
PROMPT = "w3 w17 w42 w8 w64 w5"
N_TOKENS = 12
ATTACK_S = 5.0
REPO = Path(__file__).resolve().parents[2]


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


ATTACKS = {  # attack -> the refusal reasons it should be counted under
    "idle_streams": {"too_many_open", "first_frame_timeout"},
    "max_frames": {"too_many_open", "slow_frame", "budget"},
    "decoder_bombs": {"malformed", "oversize"},
    "huge_prefix": {"oversize"},
    "slowloris": {"first_frame_timeout", "slow_frame"},
}


def client_config(tmp_path: Path, peer: PeerProcess) -> Any:
    return config_from_dict({
        "node": {"name": "client", "data_dir": str(tmp_path / "client"),
                 "network_id": DEFAULT_NETWORK_ID, "roles": ["client"]},
        "net": {"bootstrap": [peer.addrs[0]], "dht": False},
        "control": {"enabled": False},
        "inference": {"step_timeout_s": 10.0, "k_head": 1, "k_tail": 1},
    })


async def run_attacker(attack: str, victim: str, seconds: float) -> dict[str, Any]:
    """Run tests/net/hostile_peer.py in its own process; its JSON result."""
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    done = await trio.run_process(
        [sys.executable, "-m", "tests.net.hostile_peer", attack, victim, str(seconds)],
        cwd=str(REPO), env=env, capture_stdout=True, capture_stderr=True, check=False,
        stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]
    return json.loads(done.stdout.decode().strip().splitlines()[-1])


@pytest.mark.parametrize("attack", list(ATTACKS))
async def test_a_hostile_peer_neither_stops_others_nor_grows_memory(served, tmp_path, attack):
    peer, model = served
    reasons = ATTACKS[attack]
    async with Node(client_config(tmp_path, peer)) as client:
        await client.wait_for_route(str(model), timeout=30)
        normal = []
        for _ in range(3):  # the first one warms caches up
            t0 = time.perf_counter()
            ref = await client.generate(PROMPT, model=str(model), max_new_tokens=N_TOKENS)
            normal.append(time.perf_counter() - t0)
        normal = normal[1:]
        before = await stream_counters(peer)
        hwm_before = vm_hwm(peer.proc.pid)

        result: dict[str, Any] = {}

        async def attack_it() -> None:
            result.update(await run_attacker(attack, peer.addrs[0], ATTACK_S))

        async with trio.open_nursery() as n:
            n.start_soon(attack_it)
            await trio.sleep(2.0)  # the attacker process starts and its attack takes hold
            t0 = time.perf_counter()
            with trio.fail_after(60):
                got = await client.generate(PROMPT, model=str(model), max_new_tokens=N_TOKENS)
            during = time.perf_counter() - t0
        with trio.fail_after(15):  # the victim counts and bans within its timeouts
            while (await stream_counters(peer))["disconnected"] <= before["disconnected"]:
                await trio.sleep(0.25)

        after = await stream_counters(peer)
        hwm_after = vm_hwm(peer.proc.pid)
        counted = {r: after[r] - before[r] for r in reasons}
        print(f"{attack}: normal {normal[0]:.2f}/{normal[1]:.2f} s, under attack {during:.2f} s, "
              f"HWM +{(hwm_after - hwm_before) / MIB:.1f} MiB, counted {counted}, "
              f"attacker {result}")
        assert got.token_ids == ref.token_ids
        assert during <= max(normal) + 1.0, (during, normal)
        assert hwm_after - hwm_before < LIMITS["frame_budget_bytes"], (hwm_before, hwm_after)
        assert after["frame_memory"]["peak_bytes"] <= LIMITS["frame_budget_bytes"]
        assert after["frame_memory"]["in_use_bytes"] == 0
        assert any(counted.values()), counted
        assert after["bans"] > before["bans"] and after["disconnected"] > before["disconnected"]
        assert result["still_refused"], result
