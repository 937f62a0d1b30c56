"""Aggregate decode throughput of concurrent sessions through one requester.

Four peer processes on loopback serve the 10 middle layers of the built-in
`p2pinfer-llama-108m` decoder (random weights) as 4 spans; one requester node in this process
keeps layer 0 and layer 11 with embeddings and LM head. In one run it generates greedily with
1, 4 and 8 sessions at once (different prompts) and prints, per level, the aggregate decode
tokens/s (tokens after each session's first, over the window from the first session's first
token to the last session's last), its ratio to 1 session (target: 8 sessions >= 2x, as the
stages work on different sessions at the same time) and the per-token latency p50/p95.

    python tools/bench_concurrency.py [--decode 16] [--prompt 16] [--threads 1]
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from p2pinfer.config import config_from_dict
from p2pinfer.models import LLAMA_108M, default_model_path, load_model_info
from p2pinfer.models.sampling import Sampler
from p2pinfer.node import Node
from p2pinfer.testnet import Testnet

SPANS = [[1, 4], [4, 6], [6, 9], [9, 11]]
LEVELS = (1, 4, 8)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[k]


async def run_level(client: Node, path: Path, sessions: int, prompt_len: int, decode: int,
                    vocab: int) -> dict[str, float]:
    c = client.inference.client(str(path))
    stamps: dict[int, list[float]] = {}

    async def one(i: int) -> None:
        prompt = [(7 * i + 13 * j + 1) % vocab for j in range(prompt_len)]
        out = stamps.setdefault(i, [])
        async for _ in c.generate(prompt, decode + 1, Sampler()):
            out.append(time.perf_counter())

    async with trio.open_nursery() as nursery:
        for i in range(sessions):
            nursery.start_soon(one, i)
    start = min(s[0] for s in stamps.values())
    end = max(s[-1] for s in stamps.values())
    tokens = sum(len(s) - 1 for s in stamps.values())
    gaps = [b - a for s in stamps.values() for a, b in itertools.pairwise(s)]
    return {"tokens_per_s": tokens / (end - start), "p50_ms": percentile(gaps, 0.5) * 1e3,
            "p95_ms": percentile(gaps, 0.95) * 1e3, "tokens": tokens}


async def bench(args: argparse.Namespace) -> dict[int, dict[str, float]]:
    path = default_model_path(LLAMA_108M)
    info = load_model_info(path)

    def config_for(i: int) -> dict[str, dict[str, object]]:
        return {"serve": {"model": str(path), "layers": SPANS[i], "threads": args.threads,
                          "max_sessions": 64},
                "gossip": {"advert_interval_s": 1.0}}

    results: dict[int, dict[str, float]] = {}
    async with Testnet(len(SPANS), config_for=config_for, network_id="bench-concurrency",
                       start_timeout=300.0) as net:
        cfg = config_from_dict({
            "node": {"name": "bench-client", "data_dir": str(net.base_dir / "client"),
                     "network_id": net.network_id, "roles": ["client"]},
            "net": {"bootstrap": [net.peers[0].addrs[0]], "dht": False},
            "control": {"enabled": False},
            "inference": {"k_head": 1, "k_tail": 1, "step_timeout_s": 300.0, "audits": False},
        })
        async with Node(cfg) as client:
            with trio.fail_after(300):
                while len([p for p in client.peers() if p.spans]) < len(SPANS):
                    await trio.sleep(0.2)
            await run_level(client, path, 2, args.prompt, 2, info.vocab_size)  # warm up
            for level in LEVELS:
                results[level] = await run_level(client, path, level, args.prompt, args.decode,
                                                 info.vocab_size)
                print(f"  {level} session(s): {results[level]['tokens_per_s']:.1f} tokens/s",
                      file=sys.stderr, flush=True)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--decode", type=int, default=16, help="decode tokens per session")
    ap.add_argument("--prompt", type=int, default=16, help="prompt tokens per session")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per peer process")
    args = ap.parse_args()
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    results = trio.run(bench, args)
    base = results[LEVELS[0]]["tokens_per_s"]
    print(f"p2pinfer-llama-108m, 4 peer processes (spans {SPANS}), {args.threads} thread(s) "
          f"each, {os.cpu_count()} CPUs; prompt {args.prompt}, decode {args.decode} tokens "
          "per session; greedy")
    print(f"load average before: {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}; after: "
          f"{os.getloadavg()[0]:.2f}; run {time.perf_counter() - t0:.0f} s")
    print()
    print("| sessions | aggregate decode tokens/s | vs 1 session | per-token p50 ms | p95 ms |")
    print("|---:|---:|---:|---:|---:|")
    for level in LEVELS:
        r = results[level]
        print(f"| {level} | {r['tokens_per_s']:.1f} | {r['tokens_per_s'] / base:.2f}x | "
              f"{r['p50_ms']:.0f} | {r['p95_ms']:.0f} |")
    ratio = results[LEVELS[-1]]["tokens_per_s"] / base
    print()
    print(f"target 8 sessions >= 2x of 1: {'met' if ratio >= 2 else 'NOT met'} ({ratio:.2f}x)")
    print(f"(median of per-level p50s: {statistics.median(r['p50_ms'] for r in results.values()):.0f} ms)")


if __name__ == "__main__":
    main()
