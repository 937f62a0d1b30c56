"""Benchmark of critical-mode inference: per-stage proof costs on an in-process testnet.

Two stage nodes serve layers [1, 3) and [3, 5) of the built-in `p2pinfer-zk-mlp` (6 layers of
256, written and committed on first use under $P2PINFER_HOME, default a temporary directory
here); a client node runs layers 0 and 5 itself. With `--model p2pinfer-zk-llama` (two Llama
blocks of width 128: attention, MLP, attention, MLP halves, then an identity layer) the stages
serve [1, 3) (an MLP half and an attention half) and [3, 4) (an MLP half). With `--model
smollm2-135m-instruct-zk-block0` (SmolLM2's first block, real weights, imported on first use)
one stage proves the block's MLP half [1, 2) on a real chat prompt of the given length, the
requester running the attention half. After one warm-up request, every request is
timed; the table gives medians per stage: prover time, the next hop's verification, the
requester's own verification, proof size, and the stage's plain fixed-point forward time as
the reference (prove / forward ratio), and the prover time of the same stage on the same input
with the pure-Python reference kernels (P2PINFER_ZK_REFERENCE=1, one proof in a child process
of the same run, outside the node; --no-reference skips it). Last line: end-to-end seconds per
request. The `gen` rows: a proven generation, per generated token, each stage proving one
token's step over its committed KV cache (reference: the span's plain fixed-point step over a
KV cache).

Usage: python tools/bench_critical.py [--model p2pinfer-zk-llama] [--tokens 1 16] [--repeat 5]
                                     [--gen 6] [--no-reference]
       python tools/bench_critical.py --model smollm2-135m-instruct-zk-block0 --tokens 16 64 \
           --repeat 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path

import numpy as np
import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from p2pinfer.config import config_from_dict
from p2pinfer.inference import ClientSettings
from p2pinfer.inference.critical import critical_client
from p2pinfer.models import ClientHead, Tokenizer
from p2pinfer.models.defaults import SMOLLM2_ZK_BLOCK0, smollm2_path
from p2pinfer.models.mlp import ZK_LLAMA, ZK_MLP
from p2pinfer.node import Node
from p2pinfer.zk import ProofBinding, field, prove
from p2pinfer.zk.builtins import builtin_model_path
from p2pinfer.zk.checkpoint import commit_layers, fixed_layers

#: per built-in model: the stages' layer spans, the width, a description, the requester's own
#: layers (k_head, k_tail)
MODELS = {ZK_MLP: ([(1, 3), (3, 5)], 256, "6 x 256, ReLU", (1, 1)),
          ZK_LLAMA: ([(1, 3), (3, 4)], 128, "2 Llama blocks of 128, 4 heads, 2 kv heads, rope",
                     (1, 1)),
          SMOLLM2_ZK_BLOCK0: ([(1, 2)], 1024, ("SmolLM2-135M block 0, real weights, width 576 "
                                               "padded to 1024, 16/4 heads of 64; the stage "
                                               "proves the MLP half"), (1, 0))}


def node_cfg(base: Path, name: str, boot: list[str], serve: dict | None = None):
    data = {
        "node": {"name": name, "data_dir": str(base / name), "network_id": "bench-critical"},
        "net": {"bootstrap": boot, "dht": False},
        "control": {"enabled": False},
        "gossip": {"advert_interval_s": 1.0},
        "inference": {"step_timeout_s": 120.0},
    }
    if serve:
        data["serve"] = serve
    return config_from_dict(data)


def forward_ms(path: Path, start: int, end: int, x: np.ndarray, repeat: int) -> float:
    shard = fixed_layers(path, start, end)
    times = []
    for _ in range(max(3, repeat)):
        t0 = time.perf_counter()
        shard.forward_fixed(x)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def real_prompt(tokens: int, width: int) -> np.ndarray:
    """SmolLM2's embeddings of a real chat prompt cut to `tokens` tokens, padded to `width`."""
    source = smollm2_path()
    text = ("Explain in a few sentences why the sky is blue, how a rainbow forms after rain, "
            "and what the weather will be like tomorrow in Paris, London and Berlin. Then "
            "compare the three cities' climates over a whole year, month by month.")
    ids = Tokenizer.load(source).apply_chat_template([{"role": "user", "content": text}])
    if len(ids) < tokens:
        raise SystemExit(f"the prompt has {len(ids)} tokens, fewer than {tokens}")
    emb = ClientHead.load(source, 0).embed(ids[:tokens])[0].double().numpy()
    x = np.zeros((tokens, width))
    x[:, :emb.shape[1]] = emb
    return x


def stage_input(name: str, path: Path, tokens: int, stage: int) -> np.ndarray:
    """The fixed-point input of stage `stage` for the benchmark's prompt of `tokens` tokens."""
    spans, width, _, (k_head, _) = MODELS[name]
    x = (real_prompt(tokens, width) if name == SMOLLM2_ZK_BLOCK0
         else np.random.default_rng(tokens).normal(size=(tokens, width)))
    head = fixed_layers(path, 0, k_head)
    xi = head.forward_fixed(head.quantize(x))
    for a, b in spans[:stage]:
        xi = fixed_layers(path, a, b).forward_fixed(xi)
    return xi


async def reference_prove_ms(name: str, path: Path, tokens: int, stage: int) -> float | None:
    """One proof of the stage with the pure-Python reference kernels, in a child process (the
    nodes keep running meanwhile)."""
    if field.BACKEND != "native":
        return None
    env = dict(os.environ, P2PINFER_ZK_REFERENCE="1")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--model", name, "--reference-prove",
           str(path), str(tokens), str(stage)]
    done = await trio.run_process(cmd, env=env, capture_stdout=True, capture_stderr=True,
                                  check=False)
    if done.returncode != 0:
        return None
    return float(json.loads(done.stdout.decode().strip().splitlines()[-1]))


def reference_prove_child(name: str, path: Path, tokens: int, stage: int) -> None:
    a, b = MODELS[name][0][stage]
    committed = commit_layers(path, a, b)
    x = stage_input(name, path, tokens, stage)
    y = committed.forward_fixed(x)
    t0 = time.perf_counter()
    prove(committed, x, y, ProofBinding(b"bench-reference", b"\0" * 32))
    print(json.dumps((time.perf_counter() - t0) * 1000))


async def bench(name: str, path: Path, base: Path, tokens: list[int], repeat: int,
                reference: bool, gen: int) -> None:
    spans, width, what, (k_head, k_tail) = MODELS[name]
    async with AsyncExitStack() as stack:
        boot: list[str] = []
        for i, span in enumerate(spans):
            node = await stack.enter_async_context(Node(node_cfg(
                base, f"s{i}", boot, {"model": str(path), "layers": list(span)})))
            boot = boot or [node.addrs[0]]
        client = await stack.enter_async_context(Node(node_cfg(base, "client", boot)))
        # a real layer proves for tens of seconds on 2 cores: well past the default step timeout
        settings = ClientSettings(k_head=k_head, k_tail=k_tail, step_timeout_s=900.0)
        await client.inference.wait_for_route(str(path), 120, settings)
        c = critical_client(client.inference, str(path), settings)
        head = fixed_layers(path, 0, k_head)
        print(f"critical mode, {name} ({what}), stages {spans}, {field.BACKEND} field kernels, "
              f"medians of {repeat} (ref prove: one proof with the pure-Python kernels)")
        print(f"{'tokens':>6} {'stage':>5} {'layers':>7} {'proof KB':>9} {'prove ms':>9} "
              f"{'hop verify':>10} {'req verify':>10} {'fwd ms':>7} {'prove/fwd':>9} "
              f"{'ref prove ms':>12}")
        for t in tokens:
            x = (real_prompt(t, width) if name == SMOLLM2_ZK_BLOCK0
                 else np.random.default_rng(t).normal(size=(t, width)))
            await c.infer(x)  # warm-up: generators, decoded commitments
            runs, ends = [], []
            for _ in range(repeat):
                t0 = time.perf_counter()
                r = await c.infer(x)
                ends.append(time.perf_counter() - t0)
                runs.append(r.proofs)
            xi = head.forward_fixed(head.quantize(x))
            for k, (a, b) in enumerate(spans):
                per = [p[k] for p in runs]
                fwd = forward_ms(path, a, b, xi, repeat)
                xi = fixed_layers(path, a, b).forward_fixed(xi)
                prove = statistics.median(p.prove_ms for p in per)
                hop = statistics.median(p.hop_verify_ms for p in per)
                ref = await reference_prove_ms(name, path, t, k) if reference else None
                print(f"{t:>6} {k:>5} {f'[{a},{b})':>7} {per[0].proof_bytes / 1024:>9.1f} "
                      f"{prove:>9.1f} {hop if k + 1 < len(spans) else float('nan'):>10.1f} "
                      f"{statistics.median(p.verify_ms for p in per):>10.1f} {fwd:>7.2f} "
                      f"{prove / fwd:>9.0f} {'-' if ref is None else f'{ref:.1f}':>12}")
            print(f"{t:>6} end to end: {statistics.median(ends):.2f} s per request")
        if gen and name != SMOLLM2_ZK_BLOCK0:  # the real block's stage proves no attention
            await generation_rows(c, path, spans, width, gen)


async def generation_rows(c, path: Path, spans, width: int, new: int) -> None:
    """Per generated token, with the KV cache: a proven generation of `new` tokens after a
    one-token prompt, every token one step proven over the stages' committed caches; medians
    over the steps after the first (the cache holds 1..new - 1 rows). Reference: the span's
    plain fixed-point step over a KV cache (zk.kvcache.CachedForward)."""
    from p2pinfer.models.sampling import Sampler, SamplingParams
    from p2pinfer.zk.kvcache import CachedForward

    stream = c.generate([72], new, Sampler(SamplingParams(temperature=0.0)))
    async for _ in stream:
        pass
    proofs = [p for p in stream.outcome.proofs if p.position]
    rng = np.random.default_rng(0)
    for k, (a, b) in enumerate(spans):
        per = [p for p in proofs if p.stage == k]
        step = CachedForward(fixed_layers(path, a, b))
        times = []
        for _ in range(new):
            x = np.rint(rng.normal(size=(1, width)) * 256).astype(np.int64)
            t0 = time.perf_counter()
            step.step(x)
            times.append((time.perf_counter() - t0) * 1000)
        fwd = statistics.median(times[1:])
        prove = statistics.median(p.prove_ms for p in per)
        hop = statistics.median(p.hop_verify_ms for p in per)
        print(f"{'gen':>6} {k:>5} {f'[{a},{b})':>7} "
              f"{statistics.median(p.proof_bytes for p in per) / 1024:>9.1f} {prove:>9.1f} "
              f"{hop if k + 1 < len(spans) else float('nan'):>10.1f} "
              f"{statistics.median(p.verify_ms for p in per):>10.1f} {fwd:>7.2f} "
              f"{prove / fwd:>9.0f}")
    steps = stream.outcome.step_s[1:]
    print(f"{'gen':>6} end to end: {statistics.median(steps):.2f} s per generated token "
          f"(one proven KV-cache step per stage; {new} tokens after a 1-token prompt)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=list(MODELS), default=ZK_MLP)
    ap.add_argument("--tokens", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--gen", type=int, default=6,
                    help="tokens of the per-generated-token rows (0: none)")
    ap.add_argument("--no-reference", action="store_true",
                    help="skip the pure-Python reference's prove time per stage")
    ap.add_argument("--reference-prove", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.reference_prove:
        path, tokens, stage = args.reference_prove
        reference_prove_child(args.model, Path(path), int(tokens), int(stage))
        return
    with tempfile.TemporaryDirectory(prefix="bench-critical-") as tmp:
        home = Path(os.environ["P2PINFER_HOME"]) / "models" if os.environ.get(
            "P2PINFER_HOME") else Path(tmp) / "models"
        path = builtin_model_path(args.model, home)
        trio.run(bench, args.model, path, Path(tmp), args.tokens, args.repeat,
                 not args.no_reference, args.gen)


if __name__ == "__main__":
    main()
