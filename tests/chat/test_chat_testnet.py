"""`p2pinfer chat` with the real SmolLM2 chat model over peer processes: earlier turns stay in
the stages' KV caches (checked from the turns' outcomes and from the stages' own counters),
and the answers equal the local single-process answers to the same conversation."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from p2pinfer.models import LocalModel, Tokenizer, default_model_path
from p2pinfer.models.defaults import SMOLLM2
from p2pinfer.models.errors import ModelError
from p2pinfer.testnet import Testnet

REPO = Path(__file__).resolve().parents[2]
SPANS = [[1, 15], [15, 29]]
QUESTIONS = ["What is the capital of France?", "And of Italy?", "Which one is larger?"]
NEW_TOKENS = 8


def _smollm2() -> Path:
    try:
        return default_model_path(SMOLLM2)
    except ModelError as e:
        pytest.skip(str(e))


def cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "p2pinfer", *args], capture_output=True, check=False,
                          text=True, timeout=600, env=env, input=stdin)


async def test_chat_over_stdin_keeps_earlier_turns_in_the_stages_caches(tmp_path):
    path = _smollm2()
    config_for = lambda i: {
        "serve": {"model": SMOLLM2, "layers": SPANS[i]}, "gossip": {"advert_interval_s": 1.0}}
    async with Testnet(2, base_dir=tmp_path / "net", config_for=config_for,
                       start_timeout=300) as net:
        await net.wait_converged(timeout=120)
        lines = [*QUESTIONS, "/reset", QUESTIONS[1]]
        out = await trio.to_thread.run_sync(lambda: cli(
            "chat", "--json", "--bootstrap", net.peers[0].addrs[0], "--network-id",
            net.network_id, "--max-new-tokens", str(NEW_TOKENS), "--step-timeout-s", "60",
            "--wait", "120", stdin="\n".join(lines) + "\n"))
        assert out.returncode == 0, out.stderr[-3000:]
        turns = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
        assert [t["user"] for t in turns] == [*QUESTIONS, QUESTIONS[1]]
        assert "(conversation reset)" in out.stderr
        counters = []
        for peer in net.peers:
            st = await trio.to_thread.run_sync(lambda p=peer: cli(
                "status", "--socket", p.control_path))
            assert st.returncode == 0, st.stderr[-2000:]
            counters.append(json.loads(st.stdout)["inference"]["stage"]["counters"])

    assert all(t["replans"] == 0 for t in turns), [t["replans"] for t in turns]
    # what the caches held after each turn: its prompt and its answer but the last token
    cached = 0
    for i, t in enumerate(turns):
        if i == 3:  # after /reset: a fresh route session, the whole conversation is sent
            cached = 0
        assert t["tokens_reused"] == cached
        assert t["tokens_sent"] == t["prompt_tokens"] - cached + len(t["token_ids"]) - 1
        if cached:  # an earlier turn: only the new turn's tokens travel
            assert t["tokens_sent"] < t["prompt_tokens"] - cached + NEW_TOKENS
        cached = t["prompt_tokens"] + len(t["token_ids"]) - 1
    assert turns[1]["tokens_sent"] < turns[1]["prompt_tokens"] // 2
    # the stages received exactly what the turns sent, never the earlier turns again
    sent = sum(t["tokens_sent"] for t in turns)
    assert [c["tokens"] for c in counters] == [sent, sent], counters
    assert sent < sum(t["prompt_tokens"] + len(t["token_ids"]) for t in turns)

    tok, local = Tokenizer.load(path), LocalModel.load(path)
    messages: list[dict[str, str]] = []
    for i, t in enumerate(turns):
        if i == 3:
            messages = []
        messages.append({"role": "user", "content": t["user"]})
        want = local.generate(tok.apply_chat_template(messages), NEW_TOKENS,
                              stop_ids=tok.stop_ids)
        assert t["token_ids"] == want, (t["user"], tok.decode(t["token_ids"]), tok.decode(want))
        messages.append({"role": "assistant", "content": tok.decode(want).strip()})
    assert "Paris" in turns[0]["text"] and "Rome" in turns[1]["text"]
