"""Distributed vs. single-process inference latency, and memory per shard.

Runs a >= 100M-parameter Llama-style decoder (the built-in `p2pinfer-llama-108m`, random weights)
two ways in the same run on this machine:
  local        the whole model in this process (`LocalModel`), KV cache, float32
  distributed  the client keeps layer 0 and layer 11 plus embeddings and LM head; 4 peer
               processes on loopback serve the 10 middle layers as 4 spans
and prints prefill latency at 128 tokens and per-token decode latency for both with the ratio
(targets: prefill <= 1.3x, decode <= 2x), then each peer's peak RSS beside its span's weights.

    python tools/bench_inference.py [--tokens 128] [--decode 16] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from p2pinfer.config import config_from_dict
from p2pinfer.models import LLAMA_108M, LocalModel, default_model_path, load_model_info
from p2pinfer.models.sampling import Sampler
from p2pinfer.node import Node
from p2pinfer.testnet import Testnet

SPANS = [[1, 4], [4, 6], [6, 9], [9, 11]]


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


async def distributed_timings(path: Path, prompt: list[int], decode: int, repeats: int):
    config_for = lambda i: {"serve": {"model": str(path), "layers": SPANS[i]}}
    async with Testnet(len(SPANS), config_for=config_for, progress=lambda s: None) as net:
        await net.wait_converged(timeout=120)
        cfg = config_from_dict({
            "node": {"name": "bench-client", "data_dir": str(net.base_dir / "client"),
                     "network_id": net.network_id, "roles": ["client"]},
            "net": {"bootstrap": [net.peers[0].addrs[0]], "dht": False},
            "control": {"enabled": False},
            "inference": {"k_head": 1, "k_tail": 1, "step_timeout_s": 120.0},
        })
        async with Node(cfg) as client:
            with trio.fail_after(120):
                while len([p for p in client.peers() if p.spans]) < len(SPANS):
                    await trio.sleep(0.2)
            c = client.inference.client(str(path))
            local = LocalModel.load(path)
            times: dict[str, list[float]] = {k: [] for k in ("lp", "ld", "dp", "dd")}
            # local and distributed runs alternate, so background load hits both alike; the
            # first round only warms caches, connections and allocators
            for r in range(repeats + 1):
                lp, ld = local_run(local, prompt, decode)
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
            route = [(s.start, s.end) for s in run.outcome.route]
        rss = [peak_rss_mib(p.proc.pid) for p in net.peers]
    med = {k: statistics.median(v) for k, v in times.items()}
    return med, route, rss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--decode", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    path = default_model_path(LLAMA_108M)
    info = load_model_info(path)
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(5, info.vocab_size, (args.tokens,), generator=g).tolist()
    print(f"model {info.model_id}: {info.total_params / 1e6:.1f}M parameters, "
          f"{info.num_layers} layers, hidden {info.hidden_size}; prompt {args.tokens} tokens, "
          f"{args.decode} decode steps, median of {args.repeats}; torch threads "
          f"{torch.get_num_threads()}, {os.cpu_count()} cores")
    med, route, rss = trio.run(distributed_timings, path, prompt, args.decode, args.repeats)
    lp, ld, dp, dd = med["lp"], med["ld"], med["dp"], med["dd"]
    print(f"route: client[0,1) -> {' -> '.join(f'[{a},{b})' for a, b in route)} -> client[11,12)")
    print()
    print(f"| {'measure':<28} | {'local':>10} | {'4 peers':>10} | {'ratio':>6} | target |")
    print(f"|{'-' * 30}|{'-' * 12}|{'-' * 12}|{'-' * 8}|--------|")
    print(f"| {f'prefill {args.tokens} tokens (ms)':<28} | {lp * 1e3:>10.1f} | {dp * 1e3:>10.1f} "
          f"| {dp / lp:>5.2f}x | <= 1.3x |")
    print(f"| {'decode per token (ms)':<28} | {ld * 1e3:>10.1f} | {dd * 1e3:>10.1f} "
          f"| {dd / ld:>5.2f}x | <= 2x |")
    print()
    print("| peer | layers | span weights (MiB) | peak RSS (MiB) |")
    print("|------|--------|--------------------|----------------|")
    for i, (span, mib) in enumerate(zip(SPANS, rss)):
        weights = info.span_params(*span) * 4 / 2**20
        print(f"| {i} | [{span[0]},{span[1]}) | {weights:>18.1f} | {mib:>14.1f} |")
    full = info.total_params * 4 / 2**20
    print(f"(whole model: {full:.1f} MiB of float32 weights; a peer's RSS also holds the Python, "
          "torch and libp2p runtime)")


if __name__ == "__main__":
    main()
