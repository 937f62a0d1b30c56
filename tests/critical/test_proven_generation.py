"""Proven generation over an in-process testnet: every token is one step through the route,
each stage proving its layers over its committed KV cache; the requester verifies every
stage's step before it samples the next token, and a stage that tampers with a cached row is
caught by the next stage."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import trio

from p2pinfer.errors import P2PInferError
from p2pinfer.inference import ClientSettings
from p2pinfer.inference.critical import CriticalRunner, critical_client
from p2pinfer.models.byte_vocab import ByteVocabulary
from p2pinfer.models.mlp import zk_mlp_config
from p2pinfer.models.sampling import Sampler, SamplingParams
from p2pinfer.zk.checkpoint import fixed_layers, write_committed_mlp

from ..inference.conftest import network
from .cheats import install

#: a small Llama: blocks alternate attention and MLP halves; stages serve [1, 3) and [3, 5)
SPANS = [[1, 3], [3, 5]]
NEW_TOKENS = 8


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    model = tmp_path_factory.mktemp("kv-llama") / "model"
    model.mkdir()
    write_committed_mlp(model, zk_mlp_config("zk-kv-llama", layers=6, hidden=32,
                                             activation="llama", intermediate=64, heads=4,
                                             kv_heads=2, rope_theta=10000, frac_bits=4))
    return model


def settings(**kw) -> ClientSettings:
    return ClientSettings(k_head=1, k_tail=1, step_timeout_s=60.0, **kw)


def greedy() -> Sampler:
    return Sampler(SamplingParams(temperature=0.0))


def local_greedy(model: Path, prompt: list[int], new: int) -> list[int]:
    """The same generation on this machine, the whole sequence re-run per token."""
    mlp = fixed_layers(model, 0, 6)
    vocab = ByteVocabulary(mlp_model_id(model), 32)
    ids = list(prompt)
    f = mlp.frac_bits
    for _ in range(new):
        x = np.rint(vocab.embed(ids) * (1 << f)).astype(np.int64)
        y = mlp.forward_fixed(x)
        ids.append(int(vocab.logits(y[-1:] / (1 << f)).argmax()))
    return ids[len(prompt):]


def mlp_model_id(model: Path) -> str:
    from p2pinfer.models import load_model_info

    return load_model_info(str(model)).model_id


class TamperingRunner(CriticalRunner):
    """TEST-ONLY: after two steps, changes one value of a key row it already committed."""

    def attest_step(self, shard, cache, x, binding):
        if cache.position == 2:
            cache.keys[0][1, 0] += 3
        return super().attest_step(shard, cache, x, binding)


async def test_a_critical_generation_proves_every_token_over_the_kv_cache(tmp_path, llama_dir):
    async with network(tmp_path, str(llama_dir), SPANS) as (client, stages):
        gen = await client.generate("H", model=str(llama_dir), max_new_tokens=NEW_TOKENS,
                                    mode="critical", settings=settings())
        counters = [s.inference.stage.runners["critical"].counters for s in stages]
    prompt = [72]  # "H", a byte
    assert gen.mode == "critical" and gen.prompt_tokens == 1
    assert gen.token_ids == local_greedy(llama_dir, prompt, NEW_TOKENS)
    proofs = gen.proofs
    steps = len(prompt) + NEW_TOKENS - 1  # the last token is sampled, not sent
    assert len(proofs) == 2 * steps
    assert [p["position"] for p in proofs] == [k // 2 for k in range(2 * steps)]
    assert [p["stage"] for p in proofs[:4]] == [0, 1, 0, 1]
    assert all(p["proof_bytes"] > 0 and p["verify_ms"] > 0 for p in proofs)
    # one token's step costs one row's proof: the size stays flat as the cache grows
    sizes = [p["proof_bytes"] for p in proofs if p["stage"] == 0]
    assert max(sizes) < 1.2 * min(sizes)
    assert all(p["hop_verified_by"] == stages[1].peer_id for p in proofs if p["stage"] == 0)
    assert counters[0]["proved"] == steps and counters[1]["verified"] == steps


async def test_a_stage_that_tampers_with_its_cached_row_is_caught(tmp_path, llama_dir):
    async with network(tmp_path, str(llama_dir), SPANS) as (client, stages):
        cheat = install(stages[0], TamperingRunner)
        c = critical_client(client.inference, str(llama_dir), settings(max_replans=0))
        with pytest.raises(P2PInferError, match="proof"):
            async for _ in c.generate([1, 2, 3], 1, greedy()):
                pass
        assert c.backoff.failures == {stages[0].peer_id: 1}
        assert stages[1].inference.stage.runners["critical"].counters["rejected"] == 1
        assert cheat.counters["proved"] == 3


async def test_a_proven_step_of_two_tokens_is_refused_by_the_stage(tmp_path, llama_dir):
    from p2pinfer.inference.client import RequestOutcome, StageFailure

    async with network(tmp_path, str(llama_dir), SPANS) as (client, stages):
        c = critical_client(client.inference, str(llama_dir), settings(max_replans=0))
        sent = torch.zeros((1, 2, 32), dtype=torch.int64)
        with pytest.raises(StageFailure, match="one token at the next position"):
            async with c._route(RequestOutcome("critical"), c.settings, c.proven_kv,
                                8) as session:
                await c._step(session, 0, 0, sent)
        assert stages[0].inference.stage.runners["critical"].counters["proved"] == 0


async def test_p2pinfer_chat_in_critical_mode_streams_proven_tokens(tmp_path, llama_dir):
    repo = Path(__file__).resolve().parents[2]
    async with network(tmp_path, str(llama_dir), SPANS) as (_, stages):
        out = await trio.to_thread.run_sync(lambda: subprocess.run(
            [sys.executable, "-m", "p2pinfer", "chat", "--json", "--mode", "critical",
             "--model", str(llama_dir), "--bootstrap", stages[0].addrs[0], "--network-id",
             "inference-test", "--k-head", "1", "--k-tail", "1", "--max-new-tokens", "1",
             "--step-timeout-s", "60", "--wait", "30"],
            input="h\ni\n", capture_output=True, text=True, timeout=400, check=False,
            env={**os.environ, "PYTHONPATH": str(repo)}))
    assert out.returncode == 0, out.stderr[-3000:]
    first, second = [json.loads(ln) for ln in out.stdout.splitlines() if ln.startswith("{")]
    vocab = ByteVocabulary("x", 32)
    prompt = vocab.apply_chat_template([{"role": "user", "content": "h"}])
    assert first["mode"] == "critical" and first["prompt_tokens"] == len(prompt) == 6
    assert len(first["proofs"]) == 2 * 6 and {p["position"] for p in first["proofs"]} == set(
        range(6))
    assert first["token_ids"] == local_greedy(llama_dir, prompt, 1)
    # the second turn proves only what the stages' committed caches do not hold yet
    assert second["tokens_reused"] == 6
    assert second["tokens_sent"] == second["prompt_tokens"] - 6
    assert {p["position"] for p in second["proofs"]} == set(range(6, second["prompt_tokens"]))
    answer = vocab.decode(first["token_ids"]).strip()
    again = vocab.apply_chat_template([{"role": "user", "content": "h"},
                                       {"role": "assistant", "content": answer},
                                       {"role": "user", "content": "i"}])
    assert second["token_ids"] == local_greedy(llama_dir, again, 1)
