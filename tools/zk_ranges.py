"""Real activations through the fixed-point layers of an imported checkpoint (default: the
installed SmolLM2-135M-Instruct GGUF): varied chat prompts of up to --max-tokens tokens go
through every decoder block in float32 (the checkpoint) and in fixed point (the imported
provable layout, p2pinfer.zk.importer), block by block.

Prints, per block, the largest value the fixed-point stream reaches, its max and RMS error
against float (accumulated from the first block), the float model's largest SiLU gate input
(|gate|: the SiLU table covers [-32, 32)) and widest attention row logit span (span: the exp
table covers 128), the prompts that overflowed a fixed-point range there (FixedPointOverflow: the message names the range), and at the end the greedy-token
agreement of the fixed-point pipeline with the float model (the requester's final norm and
head on both), over every position and over the last one of each prompt.

    python tools/zk_ranges.py [--source GGUF_OR_DIR] [--imported DIR] [--prompts 50]
                              [--max-tokens 128] [--blocks 30]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from p2pinfer.models import ClientHead, ClientTail, LayerSpan, Tokenizer
from p2pinfer.models.defaults import smollm2_path
from p2pinfer.models.llama import rotate_half
from p2pinfer.zk.checkpoint import fixed_layers
from p2pinfer.zk.errors import FixedPointOverflow
from p2pinfer.zk.importer import import_checkpoint

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


def float_ranges(span: LayerSpan, x: torch.Tensor) -> tuple[float, float]:
    """(max |SiLU gate input|, widest attention row's logit span) of one float block on x:
    what the fixed-point tables would have to cover there."""
    block = span.blocks[0]
    seen: dict[str, torch.Tensor] = {}
    hooks = [getattr(block.self_attn, f"{n}_proj").register_forward_hook(
        lambda _m, _i, out, n=n: seen.__setitem__(n, out)) for n in "qk"]
    hooks.append(block.mlp.gate_proj.register_forward_hook(
        lambda _m, _i, out: seen.__setitem__("gate", out)))
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
    return float(seen["gate"].abs().max()), float(widest)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", help="Llama-family checkpoint (default: SmolLM2 GGUF)")
    ap.add_argument("--imported", help="its provable import (default: imported now, uncommitted)")
    ap.add_argument("--prompts", type=int, default=50)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--blocks", type=int, default=None)
    args = ap.parse_args()
    source = Path(args.source) if args.source else smollm2_path()
    tmp = None
    if args.imported:
        imported = Path(args.imported)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="zk-ranges-")
        imported = Path(tmp.name)
        import_checkpoint(source, imported, blocks=args.blocks, commit=False)
    tok = Tokenizer.load(source)
    head = ClientHead.load(source, 0, torch.float32)
    tail = ClientTail.load(source, 0, torch.float32)
    hidden = head.info.hidden_size
    blocks = args.blocks or head.info.num_layers
    ids = [tok.apply_chat_template(m)[: args.max_tokens] for m in prompts(args.prompts)]
    lengths = [len(t) for t in ids]
    print(f"{source.name}: {len(ids)} prompts of {min(lengths)}..{max(lengths)} tokens "
          f"(mean {np.mean(lengths):.0f}), {blocks} blocks")
    floats = [head.embed(t)[0].numpy() for t in ids]
    fixed: list[np.ndarray | None] = []
    mlp0 = fixed_layers(imported, 0, 2)
    for x in floats:
        fixed.append(mlp0.quantize(mlp0.pad_features(x)))
    del mlp0
    overflow: dict[int, str] = {}
    print("block  max|fixed|  max err   rms err   max|float|  overflowed  |gate|  span  s")
    for b in range(blocks):
        t0 = time.perf_counter()
        span = LayerSpan.load(source, b, b + 1, torch.float32)
        mlp = fixed_layers(imported, 2 * b, 2 * b + 2)
        errs, peak, fpeak, new, gate, logits = [], 0.0, 0.0, 0, 0.0, 0.0
        for p, x in enumerate(floats):
            g, w = float_ranges(span, torch.from_numpy(np.asarray(x, np.float32))[None])
            gate, logits = max(gate, g), max(logits, w)
            floats[p] = span.forward(torch.from_numpy(np.asarray(x, np.float32))[None])[0].numpy()
            if fixed[p] is None:
                continue
            try:
                fixed[p] = mlp.forward_fixed(fixed[p])
            except FixedPointOverflow as exc:
                overflow[p] = f"block {b}: {exc}"
                fixed[p], new = None, new + 1
                continue
            y = mlp.dequantize(fixed[p])[:, :hidden]
            errs.append((y - floats[p]).ravel())
            peak, fpeak = max(peak, np.abs(y).max()), max(fpeak, np.abs(floats[p]).max())
        e = np.concatenate(errs) if errs else np.zeros(1)
        print(f"{b:5d}  {peak:10.2f}  {np.abs(e).max():8.4f}  {np.sqrt(np.mean(e ** 2)):8.4f}  "
              f"{fpeak:10.2f}  {new:10d}  {gate:6.1f}  {logits:5.1f}  "
              f"{time.perf_counter() - t0:.0f}", flush=True)
    for p, msg in sorted(overflow.items()):
        print(f"overflow: prompt {p} ({lengths[p]} tokens) at {msg}")
    agree = last = total = 0
    for p, x in enumerate(floats):
        if fixed[p] is None:
            continue
        ref = tail.forward(torch.from_numpy(np.asarray(x, np.float32))[None])[0].argmax(-1).numpy()
        y = mlp.dequantize(fixed[p])[:, :hidden]
        got = tail.forward(torch.from_numpy(y.astype(np.float32))[None])[0].argmax(-1).numpy()
        agree += int((ref == got).sum())
        total += len(ref)
        last += int(ref[-1] == got[-1])
    done = len(ids) - len(overflow)
    print(f"prompts without overflow: {done}/{len(ids)}")
    if total:
        print(f"greedy agreement fixed vs float: {agree / total:.3f} of {total} positions, "
              f"{last}/{done} next tokens after the prompt")
    if tmp is not None:
        tmp.cleanup()
    return 0 if not overflow else 1


if __name__ == "__main__":
    sys.exit(main())
