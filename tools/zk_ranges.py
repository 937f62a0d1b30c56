"""Real activations through the fixed-point layers of an imported checkpoint (default: the
installed SmolLM2-135M-Instruct GGUF): varied chat prompts of up to --max-tokens tokens go
through every decoder block in float32 (the checkpoint) and in fixed point (the imported
provable layout, p2pinfer.zk.importer), block by block.

Prints, per block, the largest value the fixed-point stream reaches, its max and RMS error
against float (accumulated from the first block), the float model's largest SiLU gate input
(|gate|: the import's SiLU table covers [-128, 128), --table-range), widest attention row
logit span (span: the exp table covers 128) and largest gated product (|g*u|: 32 bits hold
2048 * 2**s with the block's --mlp-shift s), the prompts that overflowed a fixed-point range
there (FixedPointOverflow: the message names the layer, the range and the value), and at the
end the greedy-token agreement of the fixed-point pipeline with the float model (the
requester's final norm and head on both), over every position and over the last one of each
prompt, and with --greedy-steps over greedy continuations. Exit status 1 if any prompt
overflowed.

    python tools/zk_ranges.py [--source GGUF_OR_DIR] [--imported DIR] [--prompts 50]
                              [--max-tokens 128] [--blocks 30] [--greedy-steps N]
                              [--table-range 8]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from p2pinfer.models import ClientHead, ClientTail, LayerSpan, Tokenizer
from p2pinfer.models.defaults import smollm2_path
from p2pinfer.models.llama import rotate_half
from p2pinfer.zk.checkpoint import fixed_layers
from p2pinfer.zk.errors import FixedPointOverflow
from p2pinfer.zk.importer import IMPORT_LOOKUP_RANGE_BITS, SMOLLM2_MLP_SHIFTS, import_checkpoint

TOPICS = ["the capital of France", "photosynthesis", "a binary search", "the French revolution",
          "compound interest", "how vaccines work", "black holes", "the rules of chess",
          "a haiku about autumn", "Python list comprehensions", "the water cycle",
          "inflation and interest rates", "the causes of World War I", "how a CPU cache works",
          "the Pythagorean theorem", "a recipe for pancakes", "the symptoms of dehydration",
          "what a mortgage is", "the plot of Hamlet", "why the sky is blue", "TCP vs UDP",
          "the immune system", "Shakespeare's sonnets", "supply and demand", "quantum spin"]
FORMS = ["Explain {t} in one sentence.", "Write three short bullet points about {t}.",
         ("What is {t}? Answer briefly, then give an example and say why it matters to "
          "ordinary people in their daily lives, in plain words a child could follow.")]


def prompts(n: int) -> list[list[dict[str, str]]]:
    out = []
    for i in range(n):
        text = FORMS[i % len(FORMS)].format(t=TOPICS[i % len(TOPICS)])
        if i % 5 == 4:  # a few long ones: a repeated request with context
            text = ("Context: " + " ".join(TOPICS[(i + k) % len(TOPICS)] for k in range(12))
                    + ". " + text)
        out.append([{"role": "user", "content": text}])
    return out


def float_ranges(span: LayerSpan, x: torch.Tensor) -> tuple[float, float, float]:
    """(max |SiLU gate input|, widest attention row's logit span, max |silu(gate) * up|) of one
    float block on x: what the fixed-point tables and the gated product's 32 bits would have to
    cover there."""
    block = span.blocks[0]
    seen: dict[str, torch.Tensor] = {}
    hooks = [getattr(block.self_attn, f"{n}_proj").register_forward_hook(
        lambda _m, _i, out, n=n: seen.__setitem__(n, out)) for n in "qk"]
    hooks.append(block.mlp.gate_proj.register_forward_hook(
        lambda _m, _i, out: seen.__setitem__("gate", out)))
    hooks.append(block.mlp.up_proj.register_forward_hook(
        lambda _m, _i, out: seen.__setitem__("up", out)))
    span.forward(x)
    for h in hooks:
        h.remove()
    attn = block.self_attn
    t = x.shape[1]
    q = seen["q"].view(1, t, attn.heads, -1).transpose(1, 2)
    k = seen["k"].view(1, t, attn.kv_heads, -1).transpose(1, 2)
    cos, sin = attn.rotary(0, t, q.dtype)
    q = q * cos + rotate_half(q) * sin
    k = (k * cos + rotate_half(k) * sin).repeat_interleave(attn.heads // attn.kv_heads, dim=1)
    s = (q @ k.transpose(-1, -2)) * attn.head_dim ** -0.5
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    widest = (s.masked_fill(~causal, -torch.inf).amax(-1)
              - s.masked_fill(~causal, torch.inf).amin(-1)).max()
    product = torch.nn.functional.silu(seen["gate"]) * seen["up"]
    return float(seen["gate"].abs().max()), float(widest), float(product.abs().max())


@dataclass
class BlockRow:
    """One decoder block's figures over every prompt that has not overflowed before it."""

    block: int
    peak: float  # max |fixed-point output|
    max_err: float  # max |fixed - float| (accumulated from the first block)
    rms_err: float
    float_peak: float
    overflowed: int  # prompts that overflowed a fixed-point range in this block
    gate: float  # the float model's max |SiLU gate input| here
    span: float  # the float model's widest attention row logit span here
    product: float  # the float model's max |silu(gate) * up| here
    seconds: float


@dataclass
class Survey:
    prompts: int
    lengths: list[int]
    rows: list[BlockRow] = field(default_factory=list)
    overflows: dict[int, str] = field(default_factory=dict)  # prompt -> where and why
    agree: int = 0  # positions whose greedy token is the float model's
    positions: int = 0
    last: int = 0  # prompts whose next token after the prompt is the float model's
    steps_agree: int = 0  # greedy continuation tokens equal to the float model's
    steps: int = 0

    @property
    def done(self) -> int:
        return self.prompts - len(self.overflows)


def survey(source: Path, imported: Path, n_prompts: int, max_tokens: int,
           blocks: int | None = None, greedy_steps: int = 0,
           report=lambda line: None) -> Survey:
    """Run `n_prompts` chat prompts (at most `max_tokens` tokens) through the first `blocks`
    decoder blocks in float and in fixed point; `report` gets each printed line as it comes.
    With `greedy_steps`, each prompt then continues greedily that many tokens in both
    pipelines (each on its own tokens), counting the steps where they agree."""
    tok = Tokenizer.load(source)
    head = ClientHead.load(source, 0, torch.float32)
    tail = ClientTail.load(source, 0, torch.float32)
    hidden = head.info.hidden_size
    blocks = blocks or head.info.num_layers
    ids = [tok.apply_chat_template(m)[:max_tokens] for m in prompts(n_prompts)]
    out = Survey(len(ids), [len(t) for t in ids])
    report(f"{source.name}: {len(ids)} prompts of {min(out.lengths)}..{max(out.lengths)} tokens "
           f"(mean {np.mean(out.lengths):.0f}), {blocks} blocks")
    floats = [head.embed(t)[0].numpy() for t in ids]
    fixed: list[np.ndarray | None] = []
    mlp0 = fixed_layers(imported, 0, 2)
    for x in floats:
        fixed.append(mlp0.quantize(mlp0.pad_features(x)))
    scale = mlp0.frac_bits
    del mlp0
    report("block  max|fixed|  max err   rms err   max|float|  overflowed  |gate|  span   |g*u|  s")
    spans = []
    for b in range(blocks):
        t0 = time.perf_counter()
        span = LayerSpan.load(source, b, b + 1, torch.float32)
        mlp = fixed_layers(imported, 2 * b, 2 * b + 2)
        if greedy_steps:  # kept for the continuations (memory: every block, twice)
            spans.append((span, mlp))
        errs, peak, fpeak, new, gate, logits, prod = [], 0.0, 0.0, 0, 0.0, 0.0, 0.0
        for p, x in enumerate(floats):
            g, w, gu = float_ranges(span, torch.from_numpy(np.asarray(x, np.float32))[None])
            gate, logits, prod = max(gate, g), max(logits, w), max(prod, gu)
            floats[p] = span.forward(torch.from_numpy(np.asarray(x, np.float32))[None])[0].numpy()
            if fixed[p] is None:
                continue
            try:
                fixed[p] = mlp.forward_fixed(fixed[p])
            except FixedPointOverflow as exc:
                out.overflows[p] = f"block {b}: {exc}"
                fixed[p], new = None, new + 1
                continue
            y = mlp.dequantize(fixed[p])[:, :hidden]
            errs.append((y - floats[p]).ravel())
            peak, fpeak = max(peak, np.abs(y).max()), max(fpeak, np.abs(floats[p]).max())
        e = np.concatenate(errs) if errs else np.zeros(1)
        row = BlockRow(b, float(peak), float(np.abs(e).max()), float(np.sqrt(np.mean(e ** 2))),
                       float(fpeak), new, gate, logits, prod, time.perf_counter() - t0)
        out.rows.append(row)
        report(f"{b:5d}  {row.peak:10.2f}  {row.max_err:8.4f}  {row.rms_err:8.4f}  "
               f"{row.float_peak:10.2f}  {row.overflowed:10d}  {row.gate:6.1f}  "
               f"{row.span:5.1f}  {row.product:6.0f}  {row.seconds:.0f}")
    for p, msg in sorted(out.overflows.items()):
        report(f"overflow: prompt {p} ({out.lengths[p]} tokens) at {msg}")
    for p, x in enumerate(floats):
        if fixed[p] is None:
            continue
        ref = tail.forward(torch.from_numpy(np.asarray(x, np.float32))[None])[0].argmax(-1).numpy()
        y = fixed[p].astype(np.float64)[:, :hidden] / (1 << scale)
        got = tail.forward(torch.from_numpy(y.astype(np.float32))[None])[0].argmax(-1).numpy()
        out.agree += int((ref == got).sum())
        out.positions += len(ref)
        out.last += int(ref[-1] == got[-1])
        if greedy_steps:
            a, c = _continue(head, tail, spans, ids[p], hidden, scale, greedy_steps)
            out.steps_agree += sum(int(u == v) for u, v in zip(a, c))
            out.steps += greedy_steps
    report(f"prompts without overflow: {out.done}/{out.prompts}")
    if out.positions:
        report(f"greedy agreement fixed vs float: {out.agree / out.positions:.3f} of "
               f"{out.positions} positions, {out.last}/{out.done} next tokens after the prompt")
    if out.steps:
        report(f"greedy continuation ({greedy_steps} tokens per prompt, each pipeline on its own "
               f"tokens): {out.steps_agree}/{out.steps} tokens equal")
    return out


def _continue(head, tail, spans, ids: list[int], hidden: int, scale: int, steps: int
              ) -> tuple[list[int], list[int]]:
    """Greedy continuations of one prompt through the float and the fixed-point pipelines
    (whole sequence re-run per token: no cache in either)."""
    runs = []
    for fixed_point in (False, True):
        seq = list(ids)
        for _ in range(steps):
            x = head.embed(seq)[0].numpy()
            if fixed_point:
                a = spans[0][1].quantize(spans[0][1].pad_features(x))
                for _, mlp in spans:
                    a = mlp.forward_fixed(a)
                h = a.astype(np.float64)[:, :hidden] / (1 << scale)
            else:
                h = x
                for span, _ in spans:
                    h = span.forward(torch.from_numpy(np.asarray(h, np.float32))[None])[0].numpy()
            logits = tail.forward(torch.from_numpy(np.asarray(h, np.float32))[None])[0]
            seq.append(int(logits[-1].argmax()))
        runs.append(seq[len(ids):])
    return runs[0], runs[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", help="Llama-family checkpoint (default: SmolLM2 GGUF)")
    ap.add_argument("--imported", help="its provable import (default: imported now, uncommitted)")
    ap.add_argument("--prompts", type=int, default=50)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--blocks", type=int, default=None)
    ap.add_argument("--greedy-steps", type=int, default=0,
                    help="also continue each prompt greedily this many tokens in both pipelines")
    ap.add_argument("--mlp-shift", action="append", metavar="BLOCK=BITS",
                    help="MLP shifts of the import made here (default for SmolLM2: "
                         f"{SMOLLM2_MLP_SHIFTS}; 'none' for none)")
    ap.add_argument("--table-range", type=int, default=IMPORT_LOOKUP_RANGE_BITS,
                    help="SiLU table range R of the import made here (default %(default)s)")
    args = ap.parse_args()
    source = Path(args.source) if args.source else smollm2_path()
    with tempfile.TemporaryDirectory(prefix="zk-ranges-") as tmp:
        if args.imported:
            imported = Path(args.imported)
        else:
            imported = Path(tmp)
            if args.mlp_shift is None:
                shifts = {} if args.source else SMOLLM2_MLP_SHIFTS
            else:
                shifts = {int(b): int(s) for b, _, s in (m.partition("=") for m in args.mlp_shift
                                                         if m != "none")}
            import_checkpoint(source, imported, blocks=args.blocks, commit=False,
                              lookup_range_bits=args.table_range, mlp_shifts=shifts)
        res = survey(source, imported, args.prompts, args.max_tokens, args.blocks,
                     args.greedy_steps, report=lambda line: print(line, flush=True))
    return 0 if not res.overflows else 1


if __name__ == "__main__":
    sys.exit(main())
