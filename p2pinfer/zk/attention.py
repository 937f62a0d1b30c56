"""Fixed-point causal self-attention: multi-head, grouped-query, rotary positions.

The integer attention a critical-mode stage runs and proves (the proof: gadgets/attention.py;
bytes: protocols/zk-proof.md, "Attention layers"). With x the layer input (tokens x d, scale
2**f), heads H of width dh = d / H, kv_heads Hk dividing H (query head h reads kv head
h // (H / Hk)), and the weight [W_q | W_k | W_v] (scale 2**f; W_q and b_q already carry
1/sqrt(dh)):

1. z = x [W_q | W_k | W_v] + b, every |z| < 2**31; q, k, v = floor(z / 2**f) per part.
2. Rotary positions (Su et al. 2021, "RoFormer", in the rotate-half layout of Llama
   checkpoints), when `rope` = theta > 0: with C, S = round(2**f cos, sin(t theta**(-2i/dh)))
   for token t and pair i < dh/2, rq = [q1 C - q2 S, q2 C + q1 S] per head (q1, q2 the halves),
   at scale 2**(2f); rk likewise. Without rope rq = q, rk = k.
3. Scores s[t, h, j] = sum_c rq[t, h, c] rk[j, h // G, c] at scale 2**F2, F2 = 2f (+ 2f with
   rope); the causal row of query t is j <= t.
4. Softmax, shifted by the row's maximum M[t, h] = max_(j <= t) s[t, h, j]:
   delta = floor((M - s) / 2**(F2 - f)) (the logit gap at scale 2**f) and
   e = E(delta) = round(2**f exp(-delta / 2**f)) from a public table of 2**(f + 7) entries, so a
   row's gaps must stay below 128 (real), FixedPointOverflow beyond; e = 0 above the diagonal.
5. Z[t, h] = sum_j e, O[t, h, c] = sum_j e[t, h, j] v[j, h // G, c] (scale 2**(2f)), and the
   output out = round(O / Z) = floor((2 O + Z) / (2 Z)) (scale 2**f), heads side by side.

Every table comes from integer arithmetic and decimal operations that the General Decimal
Arithmetic specification makes deterministic (each one correctly rounded at 80 digits, in a
local context, whatever the process's own decimal settings), so every machine holds the same
tables and the same output bit for bit.

Token rows at or beyond `live` are the proof's padding (prove pads x with zero rows to a power
of two): each of them attends to itself only, so padding never overflows and never reaches a
live row.
"""

from __future__ import annotations

import decimal
from dataclasses import dataclass

import numpy as np

from .errors import FixedPointOverflow

#: the exp table's keys cover logit gaps in [0, 2**EXP_RANGE_BITS) (real): exp(-128) is 0
EXP_RANGE_BITS = 7
#: attention layers need frac_bits <= this (the exp table has 2**(f + 7) entries)
MAX_ATTENTION_FRAC_BITS = 10
#: a rope theta is an integer in [2, 2**32) (10000 for Llama 2, 500000 for Llama 3)
MAX_ROPE_THETA = 1 << 32
_HALF = 1 << 31
_FIXED = 200  # fractional bits of the integer recurrences behind the tables


@dataclass(frozen=True)
class AttentionShape:
    """The public shape of an attention layer."""

    d: int
    heads: int
    kv_heads: int
    rope: int  # theta, 0 for none

    @property
    def head_dim(self) -> int:
        return self.d // self.heads

    @property
    def kv_width(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def group(self) -> int:
        return self.heads // self.kv_heads

    def parts(self) -> tuple[int, int, int]:
        """Widths of the q, k and v parts of the layer's weight."""
        return self.d, self.kv_width, self.kv_width

    def check(self) -> str | None:
        """What is wrong with this shape, or None."""
        def pow2(n: int) -> bool:
            return type(n) is int and n >= 1 and not n & (n - 1)

        if not (pow2(self.d) and pow2(self.heads) and pow2(self.kv_heads)):
            return "an attention layer's width, heads and kv_heads must be powers of two"
        if self.heads > self.d or self.heads % self.kv_heads:
            return "an attention layer needs heads <= d and kv_heads dividing heads"
        if type(self.rope) is not int or not (self.rope == 0 or 2 <= self.rope < MAX_ROPE_THETA):
            return f"rope must be 0 (none) or a theta in [2, {MAX_ROPE_THETA})"
        if self.rope and self.head_dim < 2:
            return "rotary positions need heads of width 2 or more"
        return None


def score_shift(frac_bits: int, rope: int) -> int:
    """F2 - f: the scores' extra fractional bits over the logits' 2**f."""
    return frac_bits + (2 * frac_bits if rope else 0)


# --------------------------------------------------------------------------------------------
# Public tables


_EXP_TABLES: dict[int, np.ndarray] = {}
_ROPE_TABLES: dict[tuple[int, int, int], tuple[np.ndarray, np.ndarray]] = {}


def _check_frac(frac_bits: int) -> None:
    if type(frac_bits) is not int or not 1 <= frac_bits <= MAX_ATTENTION_FRAC_BITS:
        raise ValueError(f"attention tables exist for frac_bits 1..{MAX_ATTENTION_FRAC_BITS}")


def exp_table(frac_bits: int) -> np.ndarray:
    """E[u] = round(2**f exp(-u / 2**f)) for u in [0, 2**(f + 7)) (read-only int64).

    exp(-1 / 2**f) comes from the decimal module at 80 digits (correctly rounded), then powers
    of it by an integer recurrence at 2**-200: every machine derives the same table.
    """
    _check_frac(frac_bits)
    cached = _EXP_TABLES.get(frac_bits)
    if cached is not None:
        return cached
    with decimal.localcontext(_context()) as ctx:
        step = ctx.exp(ctx.divide(decimal.Decimal(-1), decimal.Decimal(1 << frac_bits)))
        w = int(ctx.multiply(step, decimal.Decimal(1 << _FIXED)).to_integral_value(
            decimal.ROUND_FLOOR))
    one = 1 << _FIXED
    out = np.zeros(1 << (frac_bits + EXP_RANGE_BITS), dtype=np.int64)
    acc, half = one, 1 << (_FIXED - 1)
    for u in range(len(out)):
        out[u] = ((acc << frac_bits) + half) >> _FIXED
        acc = acc * w >> _FIXED
    out.setflags(write=False)
    _EXP_TABLES[frac_bits] = out
    return out


def _context() -> decimal.Context:
    """80 significant digits, half-even, no traps: the tables' only decimal context."""
    return decimal.Context(prec=80, rounding=decimal.ROUND_HALF_EVEN, Emin=-999, Emax=999,
                           traps=[])


def _dec_cos_sin(x: decimal.Decimal, ctx: decimal.Context) -> tuple[decimal.Decimal,
                                                                      decimal.Decimal]:
    """cos x and sin x for 0 < x <= 1 by 40 terms of their Taylor series, every operation
    rounded in ctx: term_n = term_(n-1) (-x^2) / ((2n - 1) 2n) (cosine; sine with 2n (2n + 1))."""
    cos = term_c = decimal.Decimal(1)
    sin = term_s = x
    minus_x2 = ctx.minus(ctx.multiply(x, x))
    for n in range(1, 40):  # the 80th term is below 1/80! < 10**-118
        term_c = ctx.divide(ctx.multiply(term_c, minus_x2), (2 * n - 1) * (2 * n))
        term_s = ctx.divide(ctx.multiply(term_s, minus_x2), (2 * n) * (2 * n + 1))
        cos, sin = ctx.add(cos, term_c), ctx.add(sin, term_s)
    return cos, sin


def rope_tables(theta: int, head_dim: int, tokens: int,
                frac_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """(C, S), each (tokens, head_dim / 2) int64: round(2**f cos(t w_i)), round(2**f sin(t w_i))
    with w_i = theta**(-2i / head_dim) (the inverse frequencies of Llama checkpoints).

    w_i and its cosine and sine come from decimal arithmetic at 80 digits; t w_i by an exact
    integer rotation recurrence at 2**-200, so every machine derives the same tables.
    """
    _check_frac(frac_bits)
    if type(theta) is not int or not 2 <= theta < MAX_ROPE_THETA or head_dim < 2 or head_dim % 2:
        raise ValueError("rope needs an integer theta >= 2 and an even head width")
    key = (theta, head_dim, frac_bits)
    cached = _ROPE_TABLES.get(key)
    if cached is not None and cached[0].shape[0] >= tokens:
        return cached[0][:tokens], cached[1][:tokens]
    rows = max(tokens, 1 << max(0, (tokens - 1).bit_length()))
    half = head_dim // 2
    one, rnd = 1 << _FIXED, 1 << (_FIXED - 1)
    c = np.zeros((rows, half), dtype=np.int64)
    s = np.zeros((rows, half), dtype=np.int64)
    rotations = []
    with decimal.localcontext(_context()) as ctx:
        ln_theta = ctx.ln(decimal.Decimal(theta))
        scale = decimal.Decimal(one)
        for i in range(half):
            w = ctx.exp(ctx.divide(ctx.multiply(decimal.Decimal(-2 * i), ln_theta), head_dim))
            cw, sw = _dec_cos_sin(w, ctx)
            rotations.append([int(ctx.multiply(v, scale).to_integral_value(decimal.ROUND_FLOOR))
                              for v in (cw, sw)])
    for i, (wc, ws) in enumerate(rotations):
        re, im = one, 0
        for t in range(rows):
            c[t, i] = ((re << frac_bits) + rnd) >> _FIXED
            s[t, i] = ((im << frac_bits) + rnd) >> _FIXED
            re, im = (re * wc - im * ws) >> _FIXED, (re * ws + im * wc) >> _FIXED
    c.setflags(write=False)
    s.setflags(write=False)
    _ROPE_TABLES[key] = (c, s)
    return c[:tokens], s[:tokens]


def causal_mask(tokens: int, live: int | None = None) -> np.ndarray:
    """M[t, j] = 1 for j <= t (bool, tokens x tokens); a padding row t >= live has j = t only."""
    idx = np.arange(tokens)
    mask = idx[None, :] <= idx[:, None]
    if live is not None and live < tokens:
        mask[live:] = np.eye(tokens, dtype=bool)[live:]
    return mask


# --------------------------------------------------------------------------------------------
# The forward pass


def _exact_product(bound: int, what: str) -> bool:
    """Whether a product with entries below `bound` is exact in float64 (else int64)."""
    if bound >= 1 << 62:
        raise FixedPointOverflow(f"{what} could leave int64")
    return bound < 1 << 53


def apply_rope(q: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotate (tokens, heads, dh) by the integer tables: [q1 C - q2 S, q2 C + q1 S]."""
    half = q.shape[2] // 2
    q1, q2 = q[..., :half], q[..., half:]
    c, s = cos[:, None, :], sin[:, None, :]
    return np.concatenate([q1 * c - q2 * s, q2 * c + q1 * s], axis=2)


def attention_fixed(a: np.ndarray, weight: np.ndarray, bias: np.ndarray | None,
                    shape: AttentionShape, frac_bits: int,
                    live: int | None = None) -> dict[str, np.ndarray]:
    """Causal attention of integer rows a (tokens x d): the output `out` (tokens x d) and every
    intermediate a proof needs (shapes in the comments; h is a query head, g = h // G). Rows
    from `live` on are padding (see the module's docstring)."""
    f = frac_bits
    _check_frac(f)
    problem = shape.check()
    if problem:
        raise ValueError(problem)
    tokens, d = a.shape
    heads, dh, kvw = shape.heads, shape.head_dim, shape.kv_width
    if weight.shape != (d, d + 2 * kvw) or d != shape.d:
        raise ValueError("an attention weight is (d, d + 2 kv_width)")
    bound = int(np.abs(a).max(initial=0)) * int(np.abs(weight).max(initial=0)) * d
    if _exact_product(bound, "an attention projection"):
        z = (a.astype(np.float64) @ weight.astype(np.float64)).astype(np.int64)
    else:
        z = a @ weight
    if bias is not None:
        z = z + bias
    if z.min(initial=0) < -_HALF or z.max(initial=0) >= _HALF:
        raise FixedPointOverflow("an attention projection is outside [-2**31, 2**31)")
    q = z[:, :d] >> f  # (T, d): (t, h, c)
    k = z[:, d:d + kvw] >> f  # (T, kv_width): (j, g, c)
    v = z[:, d + kvw:] >> f
    q3, k3 = q.reshape(tokens, heads, dh), k.reshape(tokens, shape.kv_heads, dh)
    if shape.rope:
        cos, sin = rope_tables(shape.rope, dh, tokens, f)
        q3, k3 = apply_rope(q3, cos, sin), apply_rope(k3, cos, sin)
    kh = np.repeat(k3, shape.group, axis=1)  # (T, H, dh): key of query head h at j
    bound = int(np.abs(q3).max(initial=0)) * int(np.abs(k3).max(initial=0)) * dh
    if _exact_product(bound, "an attention score"):
        s = np.einsum("thc,jhc->thj", q3.astype(np.float64), kh.astype(np.float64))
        s = s.astype(np.int64)
    else:
        s = np.einsum("thc,jhc->thj", q3, kh)
    mask = causal_mask(tokens, live)[:, None, :]  # (T, 1, T)
    low = np.iinfo(np.int64).min
    mx = np.where(mask, s, low).max(axis=2)  # (T, H)
    shift = score_shift(f, shape.rope)
    gap = mx[:, :, None] - s
    delta = gap >> shift
    table = exp_table(f)
    top = len(table) - 1
    widest = int(np.where(mask, delta, 0).max(initial=0))
    if widest > top:
        raise FixedPointOverflow(f"attention logits of one row span more than "
                                 f"{1 << EXP_RANGE_BITS} (real): outside the exp table: "
                                 f"{widest / (1 << f):g}")
    rem = np.where(mask, gap - (delta << shift), 0)
    delta = np.where(mask, delta, top)  # above the diagonal: the key whose value is 0
    e = table[delta]
    hit = mask & (gap == 0)
    first = hit.argmax(axis=2)  # the lowest j at the row's maximum
    argmax = np.zeros_like(s)
    np.put_along_axis(argmax, first[:, :, None], 1, axis=2)
    zsum = e.sum(axis=2)  # (T, H), at least 2**f
    vh = np.repeat(v.reshape(tokens, shape.kv_heads, dh), shape.group, axis=1)
    o = np.einsum("thj,jhc->thc", e.astype(np.float64), vh.astype(np.float64))
    o = o.astype(np.int64)  # exact: |e| <= 2**f, |v| < 2**(31 - f), tokens <= 2**16
    out = (2 * o + zsum[:, :, None]) // (2 * zsum[:, :, None])
    r = 2 * o + zsum[:, :, None] - 2 * zsum[:, :, None] * out
    return {"z": z, "q": q, "k": k, "v": v, "rq": q3.reshape(tokens, d),
            "rk": k3.reshape(tokens, kvw), "s": s, "mx": mx, "delta": delta, "rem": rem,
            "argmax": argmax, "e": e, "zsum": zsum, "o": o.reshape(tokens, d),
            "r": r.reshape(tokens, d), "out": out.reshape(tokens, d)}
