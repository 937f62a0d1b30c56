"""Side-by-side calibration of p2pinfer's fingerprint and TOPLOC on real activations.

Used by tools/calibrate_fingerprints.py (`--model smollm2|minilm`, the default run). For every
trial it computes one stage output of a real model (SmolLM2-135M-Instruct: all 30 layers fed the
embeddings of a chat prompt; all-MiniLM-L6-v2: its 6 layers on random token ids) in each honest
setting and each cheat, then judges the same pairs of activations with both schemes:

- p2pinfer (`rp-v1`, rank 32, precision classes): distance between the two fingerprints under a
  fresh task seed, against the tolerance of the pair's classes (float32 pair 1e-3; any pair with
  a bfloat16 replica 1e-1), which is what a vote and fault evidence use.
- TOPLOC (PyPI `toploc` 0.1.6, an optional benchmark dependency): a proof built from the
  reference activation in bfloat16 (top-k 128, decode batches of 32), verified against the other
  activation, accepted with the thresholds of the TOPLOC paper's code: at most 38 of 128
  exponent mismatches, mean mantissa error at most 10, median at most 8.

Rows are grouped by the route they occur on: float32 replicas, bfloat16 replicas, or a mixed
stage (a float32 majority judging a bfloat16-class replica). A cheater of the float32 class on a
mixed stage is judged by the float32 majority alone (consensus/vote.py), so its rows are those
of the float32 route. Honest rows count false rejects, cheat rows false accepts.
"""

from __future__ import annotations

import copy
import sys
import time
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch

from p2pinfer.consensus.fingerprint import (
    DEFAULT_RANK,
    FingerprintContext,
    distance,
    fingerprint,
    pair_tolerance,
)

TOPLOC_TOPK = 128
TOPLOC_DECODE_BATCH = 32
TOPLOC_MAX_EXP_MISMATCHES = 38
TOPLOC_MAX_MANT_MEAN = 10.0
TOPLOC_MAX_MANT_MEDIAN = 8.0

CHEATS = ["other weights", "skipped layer", "int8 weights", "4-bit weights",
          "noise 1% every token", "noise 10% one token", "one input token changed",
          "copied claim (other task)"]


def toploc_module():
    try:
        import toploc
    except ImportError:
        return None
    return toploc


@dataclass
class Pair:
    """One comparison: the reference replica's output and another replica's, with classes."""

    row: str
    honest: bool
    ref: torch.Tensor
    other: torch.Tensor
    ref_class: str
    other_class: str
    #: the other replica's fingerprint comes from another task (a replayed or copied claim)
    other_task: bool = False


def _noise(x: torch.Tensor, scale: float, gen: torch.Generator, token: int | None = None
           ) -> torch.Tensor:
    rms = x.pow(2).mean(dim=-1, keepdim=True).sqrt()
    noise = torch.randn(x.shape, generator=gen) * rms * scale
    if token is not None:
        mask = torch.zeros(x.shape[1], 1)
        mask[token] = 1.0
        noise = noise * mask
    return x + noise


def requantize(weight: torch.Tensor, bits: int, block: int | None) -> torch.Tensor:
    """Symmetric round-to-nearest re-quantisation of a [out, in] weight: per output channel
    (block None) or per block of `block` inputs; returns the dequantized weight."""
    w = weight.float()
    shape = w.shape
    if block is not None and w.shape[-1] % block == 0:
        w = w.reshape(-1, block)
    levels = 2 ** (bits - 1) - 1
    scale = w.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / levels
    q = (w / scale).round().clamp(-levels - 1, levels) * scale
    return q.reshape(shape).to(weight.dtype)


class Stage:
    """One model's stage (float32 and bfloat16) with its substitutes.

    `run(name, x)` runs the variant `name` ("f32", "bf16", "f32 int8 weights", ...) on the
    embeddings x [1, T, H] as a prefill; `batch(name, x, others)` runs it in a batch of three
    and returns the first row; `decode(name, x)` prefills the first half and decodes the rest
    token by token through the KV cache (None for encoders)."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.variants: dict[str, object] = {}
        if model == "smollm2":
            self._load_smollm2()
        else:
            self._load_minilm()

    # -- SmolLM2: p2pinfer's own layer spans of the GGUF checkpoint ---------------------------
    def _load_smollm2(self) -> None:
        from p2pinfer.models import SMOLLM2, ClientHead, LayerSpan, Tokenizer, default_model_path

        path = default_model_path(SMOLLM2)
        self.head, self.tokenizer = ClientHead.load(path, 0), Tokenizer.load(path)
        self.vocab = self.head.info.vocab_size
        self.layers = 30
        gen = torch.Generator().manual_seed(5000)
        for dtype, tag in ((torch.float32, "f32"), (torch.bfloat16, "bf16")):
            span = LayerSpan.load(path, 0, 30, dtype)
            self.variants[tag] = span
            other = copy.deepcopy(span)
            for _, buf in other.blocks.named_buffers():
                if buf.dim() == 2:
                    buf.copy_((torch.randn(buf.shape, generator=gen)
                               * buf.float().std()).to(dtype))
            self.variants[f"{tag} other weights"] = other
            skipped = copy.copy(span)
            skipped.blocks = torch.nn.ModuleList(b for i, b in enumerate(span.blocks)
                                                 if i != 15)
            self.variants[f"{tag} skipped layer"] = skipped
            for key, bits, block in (("int8 weights", 8, None), ("4-bit weights", 4, 32)):
                clone = copy.deepcopy(span)
                for _, buf in clone.blocks.named_buffers():
                    if buf.dim() == 2:
                        buf.copy_(requantize(buf, bits, block))
                self.variants[f"{tag} {key}"] = clone
        # a route of 6 bfloat16 stages of 5 layers, each fed the previous stage's output
        self.variants["bf16 route"] = [self.variants["bf16"].slice(a, a + 5)
                                       for a in range(0, 30, 5)]

    def prompts(self, rng: np.random.Generator, count: int) -> list[list[int]]:
        if self.model == "smollm2":
            from calibrate_fingerprints import PROMPTS, _chat_ids

            out = []
            for i in range(count):
                ids = _chat_ids(self.tokenizer, PROMPTS[i % len(PROMPTS)])
                out.append(ids[:int(rng.integers(min(len(ids), 12), len(ids) + 1))])
            return out
        return [rng.integers(1000, self.vocab, size=int(rng.integers(12, 33))).tolist()
                for _ in range(count)]

    def embed(self, ids: list[int]) -> torch.Tensor:
        if self.model == "smollm2":
            return self.head.embed(ids)
        return torch.tensor([ids])

    def run(self, name: str, x: torch.Tensor) -> torch.Tensor:
        model = self.variants[name]
        with torch.no_grad():
            if self.model == "minilm":
                return model(x).last_hidden_state[:1].float()
            if isinstance(model, list):
                for span in model:
                    x = span.forward(x.to(span.dtype))
                return x.float()
            return model.forward(x.to(model.dtype)).float()

    def batch(self, name: str, x: torch.Tensor, others: list[torch.Tensor]) -> torch.Tensor:
        model = self.variants[name]
        with torch.no_grad():
            if self.model == "minilm":
                return model(torch.cat([x, *others])).last_hidden_state[:1].float()
            return model.run(torch.cat([x, *others]).to(model.dtype), None, 0)[:1].float()

    def decode(self, name: str, x: torch.Tensor) -> torch.Tensor | None:
        if self.model == "minilm":
            return None
        model = self.variants[name]
        half = x.shape[1] // 2
        cache = model.new_cache()
        with torch.no_grad():
            parts = [model.forward(x[:, :half].to(model.dtype), cache, 0)]
            for i in range(half, x.shape[1]):
                parts.append(model.forward(x[:, i:i + 1].to(model.dtype), cache, i))
        return torch.cat(parts, dim=1).float()

    # -- MiniLM: the real all-MiniLM-L6-v2 encoder through transformers ------------------------
    def _load_minilm(self) -> None:
        from calibrate_fingerprints import build_minilm, skip_layers

        real, other = build_minilm()
        self.vocab = real.config.vocab_size
        self.layers = real.config.num_hidden_layers
        for dtype, tag in ((torch.float32, "f32"), (torch.bfloat16, "bf16")):
            base = copy.deepcopy(real).to(dtype)
            self.variants[tag] = base
            self.variants[f"{tag} other weights"] = copy.deepcopy(other).to(dtype)
            self.variants[f"{tag} skipped layer"] = skip_layers(
                base, [i for i in range(self.layers) if i != self.layers // 2])
            for key, bits, block in (("int8 weights", 8, None), ("4-bit weights", 4, 32)):
                clone = copy.deepcopy(base)
                for module in clone.encoder.modules():
                    if isinstance(module, torch.nn.Linear):
                        module.weight.data.copy_(requantize(module.weight.data, bits, block))
                self.variants[f"{tag} {key}"] = clone


def collect(stage: Stage, trials: int, seed: int) -> list[Pair]:
    """Every honest and cheating pair of `trials` inputs (see the module docstring)."""
    rng = np.random.default_rng(seed)
    pairs: list[Pair] = []
    started = time.time()
    for trial, ids in enumerate(stage.prompts(rng, trials)):
        x = stage.embed(ids)
        others = [stage.embed(rng.integers(1000, stage.vocab, size=len(ids)).tolist())
                  for _ in range(2)]
        out: dict[str, torch.Tensor] = {}
        for tag in ("f32", "bf16"):
            torch.set_num_threads(2)
            out[tag] = stage.run(tag, x)
            out[f"{tag} batch"] = stage.batch(tag, x, others)
            dec = stage.decode(tag, x)
            if dec is not None:
                out[f"{tag} decode"] = dec
            torch.set_num_threads(1)
            out[f"{tag} threads"] = stage.run(tag, x)
            torch.set_num_threads(2)
            for cheat in ("other weights", "skipped layer", "int8 weights", "4-bit weights"):
                out[f"{tag} {cheat}"] = stage.run(f"{tag} {cheat}", x)
            changed = list(ids)
            position = int(rng.integers(0, len(ids)))
            replacement = int(rng.integers(1000, stage.vocab))
            while replacement == changed[position]:
                replacement = int(rng.integers(1000, stage.vocab))
            changed[position] = replacement
            out[f"{tag} one input token changed"] = stage.run(tag, stage.embed(changed))
            gen = torch.Generator().manual_seed(int(rng.integers(0, 2**31)))
            out[f"{tag} noise 1% every token"] = _noise(out[tag], 0.01, gen)
            token = int(rng.integers(0, len(ids)))
            out[f"{tag} noise 10% one token"] = _noise(out[tag], 0.1, gen, token)
        if "bf16 route" in stage.variants:
            out["bf16 route"] = stage.run("bf16 route", x)

        def add(row: str, honest: bool, a: str, b: str, ca: str, cb: str, out=out,
                **kw) -> None:
            if a in out and b in out:
                pairs.append(Pair(row, honest, out[a], out[b], ca, cb, **kw))

        for tag, cls, route in (("f32", "float32", "float32"),
                                ("bf16", "bfloat16", "bfloat16")):
            add(f"{route}: threads 1 vs 2", True, tag, f"{tag} threads", cls, cls)
            add(f"{route}: batch 3 vs 1", True, tag, f"{tag} batch", cls, cls)
            add(f"{route}: KV decode vs prefill", True, tag, f"{tag} decode", cls, cls)
        add("mixed: bfloat16 vs float32", True, "f32", "bf16", "float32", "bfloat16")
        add("mixed: bf16 KV decode vs f32", True, "f32", "bf16 decode", "float32", "bfloat16")
        add("mixed: 6-stage bf16 route vs f32", True, "f32", "bf16 route", "float32", "bfloat16")
        for cheat in CHEATS:
            if cheat.startswith("copied"):
                add(f"float32: {cheat}", False, "f32", "f32", "float32", "float32",
                    other_task=True)
                add(f"bfloat16: {cheat}", False, "bf16", "bf16", "bfloat16", "bfloat16",
                    other_task=True)
                continue
            add(f"float32: {cheat}", False, "f32", f"f32 {cheat}", "float32", "float32")
            add(f"bfloat16: {cheat}", False, "bf16", f"bf16 {cheat}", "bfloat16", "bfloat16")
            add(f"mixed, bf16 cheats: {cheat}", False, "f32", f"bf16 {cheat}", "float32",
                "bfloat16")
        print(f"  {stage.model}: {trial + 1}/{trials} inputs ({time.time() - started:.0f} s)",
              file=sys.stderr, flush=True)
    return pairs


@dataclass
class Verdicts:
    accepted: list[bool]
    worst: float


def judge_ours(pairs: list[Pair], seed: int) -> dict[str, Verdicts]:
    rng = np.random.default_rng(seed)
    rows: dict[str, list[tuple[bool, float]]] = defaultdict(list)
    for i, pair in enumerate(pairs):
        context = FingerprintContext("calibration", rng.bytes(16), 1, i)
        other_context = FingerprintContext("calibration", rng.bytes(16), 1, i) \
            if pair.other_task else context
        d = distance(fingerprint(pair.ref, context), fingerprint(pair.other, other_context))
        tol = pair_tolerance(pair.ref_class, pair.other_class)
        rows[pair.row].append((d <= tol, d))
    return _verdicts(rows, pairs)


def judge_toploc(pairs: list[Pair], toploc) -> tuple[dict[str, Verdicts], float]:
    """TOPLOC's verdicts and its proof bytes per token (prefill proofs of these inputs)."""
    rows: dict[str, list[tuple[bool, float]]] = defaultdict(list)
    size = tokens = 0
    for pair in pairs:
        ref = pair.ref[0].to(torch.bfloat16)
        proofs = toploc.build_proofs_bytes([ref], TOPLOC_DECODE_BATCH, TOPLOC_TOPK)
        size += sum(len(p) for p in proofs)
        tokens += ref.shape[0]
        # TOPLOC binds no task: a copied proof of the same output is the same proof
        result = toploc.verify_proofs_bytes([pair.other[0].to(torch.bfloat16)], proofs,
                                            TOPLOC_DECODE_BATCH, TOPLOC_TOPK)[0]
        ok = (result.exp_mismatches <= TOPLOC_MAX_EXP_MISMATCHES
              and result.mant_err_mean <= TOPLOC_MAX_MANT_MEAN
              and result.mant_err_median <= TOPLOC_MAX_MANT_MEDIAN)
        rows[pair.row].append((ok, float(result.mant_err_mean)))
    return _verdicts(rows, pairs), size / max(tokens, 1)


def _verdicts(rows: dict[str, list[tuple[bool, float]]], pairs: list[Pair]
              ) -> dict[str, Verdicts]:
    honest = {p.row: p.honest for p in pairs}
    out = {}
    for row, items in rows.items():
        values = [v for _, v in items]
        out[row] = Verdicts([a for a, _ in items], max(values) if honest[row] else min(values))
    return out


def print_side_by_side(title: str, pairs: list[Pair], ours: dict[str, Verdicts],
                       theirs: dict[str, Verdicts] | None, toploc_bytes: float | None) -> None:
    honest = {p.row: p.honest for p in pairs}
    ours_bytes = DEFAULT_RANK * 4
    print(f"\n{title}")
    print(f"p2pinfer rp-v1 (rank {DEFAULT_RANK}, precision classes): {ours_bytes} bytes per "
          f"token; " + (f"TOPLOC 0.1.6 (top-k {TOPLOC_TOPK}): {toploc_bytes:.1f} bytes per token "
                        f"on these prefills (258 bytes per proof)" if toploc_bytes is not None
                        else "toploc not installed: its columns are skipped"))
    print("rate = false reject (FR) for honest rows, false accept (FA) for cheats; dist = "
          "largest honest / smallest cheat distance (ours), mantissa error mean (TOPLOC)\n")
    print(f"| {'route: variation':<42} | {'n':>4} | {'ours rate':>9} | {'ours dist':>9} |"
          f" {'TOPLOC rate':>11} | {'TOPLOC mant':>11} |")
    print(f"|{'-' * 44}|{'-' * 6}|{'-' * 11}|{'-' * 11}|{'-' * 13}|{'-' * 13}|")
    for row, v in ours.items():
        rate = _rate(v, honest[row])
        if theirs is not None:
            t = theirs[row]
            trate, tdist = _rate(t, honest[row]), f"{t.worst:.2f}"
        else:
            trate, tdist = "-", "-"
        print(f"| {row:<42} | {len(v.accepted):>4} | {rate:>9} | {v.worst:>9.2e} |"
              f" {trate:>11} | {tdist:>11} |")


def _rate(v: Verdicts, honest: bool) -> str:
    if honest:
        return f"FR {np.mean([not a for a in v.accepted]):.0%}"
    return f"FA {np.mean(v.accepted):.0%}"
