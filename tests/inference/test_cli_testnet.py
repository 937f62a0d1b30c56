"""`p2pinfer infer` and `p2pinfer embed` from the command line against a multi-process testnet."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
import trio

from p2pinfer.models import LocalModel, Tokenizer
from p2pinfer.testnet import Testnet

from .conftest import save_checkpoint

REPO = Path(__file__).resolve().parents[2]
SPANS = [[1, 3], [3, 5], [1, 5], [1, 4]]


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "p2pinfer", *args], check=False,
                          capture_output=True,
                          text=True, timeout=180, env=env, stdin=subprocess.DEVNULL)


async def test_infer_from_the_cli_through_four_peer_processes_equals_local(tmp_path):
    gpt = save_checkpoint("gpt2", tmp_path / "gpt2", seed=5)
    bert = save_checkpoint("bert", tmp_path / "bert", seed=6)
    config_for = lambda i: {
        "serve": {"model": str(gpt if i < 2 else bert), "layers": SPANS[i]},
        "gossip": {"advert_interval_s": 1.0}}
    async with Testnet(4, base_dir=tmp_path / "net", config_for=config_for) as net:
        await net.wait_converged(timeout=60)
        boot = net.peers[0].addrs[0]
        prompt_ids = [5, 9, 13, 2]
        # the CLI takes text: a word-level tokenizer maps "wN" to id N
        tok_dir = _word_tokenizer(gpt, tmp_path)
        out = await trio.to_thread.run_sync(lambda: cli(
            "infer", "--bootstrap", boot, "--network-id", net.network_id, "--model",
            str(tok_dir), "--prompt", "w5 w9 w13 w2", "--max-new-tokens", "8", "--json"))
        assert out.returncode == 0, out.stderr[-2000:]
        result = json.loads(out.stdout)
        want = LocalModel.load(gpt).generate(prompt_ids, 8)
        assert result["token_ids"] == want
        assert [r["layers"] for r in result["route"]] == [[1, 3], [3, 5]]

        bert_dir = _word_tokenizer(bert, tmp_path)
        emb = await trio.to_thread.run_sync(lambda: cli(
            "embed", "--bootstrap", boot, "--network-id", net.network_id, "--model",
            str(bert_dir), "--text", "w5 w9 w13", "--text", "w2 w7"))
        assert emb.returncode == 0, emb.stderr[-2000:]
        got = torch.tensor(json.loads(emb.stdout)["embeddings"])
        local = LocalModel.load(bert_dir)
        tok = Tokenizer.load(bert_dir)
        ref = torch.stack([local.forward(tok.encode(t)).reshape(-1) for t in ("w5 w9 w13", "w2 w7")])
        torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)


def _word_tokenizer(model_dir: Path, tmp_path: Path) -> Path:
    """The same checkpoint directory plus a word-level tokenizer.json: word `wN` is id N."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    vocab = {f"w{i}": i for i in range(97)}
    vocab["[UNK]"] = 0
    tok = HFTokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = Whitespace()
    tok.save(str(model_dir / "tokenizer.json"))
    return model_dir
