"""Cost of redundant general-mode inference: latency and bytes for m = 1, 3, 5 on one testnet.

A multi-process testnet (p2pinfer.testnet) serves a random Llama in two stages with five
replicas each; an in-process requester generates the same prompt with m = 1, 3 and 5 (the
planner picks m of the five replicas per stage, so the layers and peers are the same route
family). For each m it prints the latency per token, the bytes of activation tensors and of
fingerprint claims that cross one hop per step (counted from the encoded messages the nodes
send: m tensors and m x m claims of ~150 bytes + 128 bytes per token), and the ratio to m = 1.

Then the protocol's own cost per stage and step, excluding compute, measured in-process on a
real activation: commit to the output, seal, fingerprint under the sealed seed and sign the
claim (each replica); decode and verify the m commitments and claims, find each claim's seal,
vote and check the local tensor (each voter). With replicas running in parallel on separate
machines a redundant step costs the m = 1 step plus this overhead per stage, plus one one-way
network delay per stage for the commitments (a replica reveals only once it holds its fellow
replicas' commitments); the last column gives the CPU part as a fraction of the m = 1 latency
(target: under 10%). On a 2-core machine the m replicas share the cores, so the measured
m = 3, 5 latencies also include m-fold compute and every process's networking.

    python tools/bench_consensus.py [--hidden 512] [--layers 6] [--tokens 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import trio

from p2pinfer.config import config_from_dict
from p2pinfer.consensus import (
    TOLERANCE_BFLOAT16,
    FingerprintContext,
    InlinedPeerKeys,
    decode_claim,
    fingerprint,
    sign_claim,
    tally,
)
from p2pinfer.consensus.commit import decode_commit, find_seal, sealed_context, sign_commit
from p2pinfer.identity import NodeIdentity
from p2pinfer.models import LayerSpan
from p2pinfer.models.sampling import Sampler
from p2pinfer.node import Node
from p2pinfer.testnet import Testnet
from p2pinfer.wire import tensor_to_wire

REPLICAS = 5
PROMPT = [3, 17, 42, 8, 64, 5, 11, 23]


def make_checkpoint(directory: Path, hidden: int, layers: int) -> Path:
    import transformers as tf

    torch.manual_seed(0)
    cfg = tf.LlamaConfig(vocab_size=97, hidden_size=hidden, num_hidden_layers=layers,
                         num_attention_heads=max(1, hidden // 64), num_key_value_heads=max(
                             1, hidden // 128), intermediate_size=2 * hidden,
                         max_position_embeddings=128, initializer_range=0.06)
    tf.LlamaForCausalLM(cfg).eval().save_pretrained(directory, safe_serialization=True)
    return directory


def protocol_overhead(path: Path, span: tuple[int, int], m: int, tokens: int, repeats: int
                      ) -> tuple[float, float]:
    """(ms of claim work per replica + vote work per voter, ms of compute) for one step."""
    layers = LayerSpan.load(path, *span)
    hidden = torch.randn(1, tokens, layers.info.hidden_size)
    ids = [NodeIdentity.generate() for _ in range(m)]
    keys = InlinedPeerKeys()
    ctx = FingerprintContext("bench", b"t" * 16, 0, 0)
    compute, claim_ms, vote_ms = [], [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = layers.forward(hidden, layers.new_cache(), 0)
        compute.append(time.perf_counter() - t0)
        route = [ident.peer_id for ident in ids]
        t0 = time.perf_counter()
        commits = [sign_commit(ident, ident.peer_id, ctx, m, out).encode() for ident in ids]
        sealed = sealed_context([decode_commit(c) for c in commits], route) if m > 1 else ctx
        encoded = [sign_claim(ident, ident.peer_id, sealed, m, fingerprint(out, sealed)).encode()
                   for ident in ids]
        claim_ms.append((time.perf_counter() - t0) / m)
        t0 = time.perf_counter()
        held = [decode_commit(c) for c in commits]
        for commit in held:
            commit.verify(keys)
        claims = [decode_claim(e) for e in encoded]
        if m > 1:
            for claim in claims:
                find_seal(claim, held, route, keys)
        outcome = tally(claims, keys, TOLERANCE_BFLOAT16)
        outcome.check_local(out)
        vote_ms.append(time.perf_counter() - t0)
    overhead = statistics.median(claim_ms) + statistics.median(vote_ms)
    return overhead * 1e3, statistics.median(compute) * 1e3


async def measure(args: argparse.Namespace, base: Path, ckpt: Path) -> dict[int, float]:
    spans = [[1, 1 + (args.layers - 2) // 2], [1 + (args.layers - 2) // 2, args.layers - 1]]
    config_for = lambda i: {"serve": {"model": str(ckpt), "layers": spans[i // REPLICAS],
                                      "threads": 1},
                            "gossip": {"advert_interval_s": 1.0}}
    latencies: dict[int, float] = {}
    async with Testnet(2 * REPLICAS, base_dir=base / "net", config_for=config_for,
                       start_timeout=180) as net:
        await net.wait_converged(timeout=120)
        cfg = config_from_dict({
            "node": {"name": "requester", "data_dir": str(base / "requester"),
                     "network_id": net.network_id, "roles": ["client"]},
            "net": {"bootstrap": [net.peers[0].addrs[0]], "dht": False},
            "control": {"enabled": False},
            "inference": {"step_timeout_s": 60.0},
        })
        async with Node(cfg) as node:
            with trio.fail_after(90):
                while len([p for p in node.peers() if p.spans]) < 2 * REPLICAS:
                    await trio.sleep(0.2)
            from dataclasses import replace

            for m in (1, 3, 5):
                base_client = node.inference.client(str(ckpt))
                client = node.inference.client(str(ckpt), replace(
                    base_client.settings, redundancy=m, audits=False))
                _ = [t async for t in client.generate(PROMPT, 2, Sampler())]  # warm routes
                runs = []
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    _ = [t async for t in client.generate(PROMPT, args.tokens, Sampler())]
                    runs.append((time.perf_counter() - t0) / args.tokens)
                latencies[m] = statistics.median(runs) * 1e3
    return latencies


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--tokens", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-consensus-") as tmp:
        base = Path(tmp)
        ckpt = make_checkpoint(base / "llama", args.hidden, args.layers)
        latencies = trio.run(measure, args, base, ckpt)
        span = (1, 1 + (args.layers - 2) // 2)
        rows = []
        for m in (1, 3, 5):
            overhead, compute = protocol_overhead(ckpt, span, m, 1, 20)
            claim = sign_claim(NodeIdentity.generate(), NodeIdentity.generate().peer_id,
                               FingerprintContext("p2pinfer-localnet", b"t" * 16, 0, 0), m,
                               fingerprint(torch.randn(1, 1, args.hidden),
                                           FingerprintContext("x", b"t" * 16, 0, 0)))
            tensor_bytes = len(tensor_to_wire(torch.zeros(1, 1, args.hidden))["data"])
            claim_bytes = len(claim.encode()) if m > 1 else 0
            rows.append((m, latencies[m], m * tensor_bytes, m * m * claim_bytes, overhead,
                         compute))
    ref = rows[0][1]
    print(f"random Llama hidden {args.hidden}, {args.layers} layers, 2 stages x {REPLICAS} "
          f"replicas; decode steps (1 token); median of {args.repeats} runs of "
          f"{args.tokens} tokens")
    print(f"{'m':>2} {'ms/token':>9} {'vs m=1':>7} {'tensor B/hop':>13} {'claim B/hop':>12} "
          f"{'protocol ms/stage':>18} {'compute ms/stage':>17} {'parallel est. vs m=1':>21}")
    stages = 2
    for m, lat, tb, cb, overhead, compute in rows:
        est = (ref + (stages * overhead if m > 1 else 0.0)) / ref
        print(f"{m:>2} {lat:>9.1f} {lat / ref:>7.2f} {tb:>13} {cb:>12} {overhead:>18.3f} "
              f"{compute:>17.3f} {est:>21.3f}")


if __name__ == "__main__":
    main()
