"""Public lookup tables of the GELU and SiLU activations, and looking values up in them.

Spec: protocols/zk-proof.md, "GELU and SiLU layers" (the table's keys, its entries and how each
is derived bit for bit on every machine). A layer with a lookup activation (or a gated layer,
whose gate is one) computes y = G(q) for q = floor(z / 2**f) by table; the proof
(gadgets/lookup.py) shows every (q, y) pair is a table entry.
"""

from __future__ import annotations

import decimal
from math import isqrt

import numpy as np

from .errors import FixedPointOverflow

#: activations proven by a lookup into a public table (`activation_table`)
LOOKUP_ACTIVATIONS = ("gelu", "silu")
#: a lookup table covers q in [-2**(f + LOOKUP_RANGE_BITS - 1), 2**(f + LOOKUP_RANGE_BITS - 1)),
#: i.e. real pre-activations in [-32, 32); lookup layers need frac_bits <= MAX_LOOKUP_FRAC_BITS
LOOKUP_RANGE_BITS = 6
MAX_LOOKUP_FRAC_BITS = 10


LOOKUP_NAMES = {"gelu": "GELU", "silu": "SiLU"}


def activation_table(activation: str, frac_bits: int) -> np.ndarray:
    """The public lookup table of a lookup activation (`gelu_table`, `silu_table`)."""
    if activation == "gelu":
        return gelu_table(frac_bits)
    if activation == "silu":
        return silu_table(frac_bits)
    raise ValueError(f"{activation!r} is not a lookup activation")


def lookup_activation(q: np.ndarray, activation: str, frac_bits: int) -> np.ndarray:
    """A lookup activation of fixed-point values by table; FixedPointOverflow outside the
    table's range."""
    table = activation_table(activation, frac_bits)
    lo = len(table) // 2
    if q.size and (q.min() < -lo or q.max() >= lo):
        worst = int(q.max()) if q.max() >= -int(q.min()) else int(q.min())
        raise FixedPointOverflow(f"a {LOOKUP_NAMES[activation]} input is outside the table's range "
                                 f"[-{lo}, {lo}) (real [-{lo >> frac_bits}, {lo >> frac_bits})): "
                                 f"{worst / (1 << frac_bits):g}")
    return table[q + lo]


_GELU_TABLES: dict[int, np.ndarray] = {}
_SILU_TABLES: dict[int, np.ndarray] = {}


def silu_table(frac_bits: int) -> np.ndarray:
    """S[t + 2**(K-1)] = round(t / (1 + exp(-t / 2**f))) for t in [-2**(K-1), 2**(K-1)),
    K = f + 6: exact SiLU x sigmoid(x) of x = t / 2**f, rounded half up to 2**-f (read-only
    int64 array).

    exp comes from the decimal module at 40 significant digits: the General Decimal Arithmetic
    specification makes it correctly rounded, so every machine derives the same table bit for
    bit, with no dependence on the platform's libm. An entry could differ from the exactly
    rounded value only if t * sigmoid(x), irrational for t != 0, lay within about 10**-35 of a
    rounding tie; `tests/zk/test_silu.py` checks every table (f = 1..10) against float64.
    """
    if not 1 <= frac_bits <= MAX_LOOKUP_FRAC_BITS:
        raise ValueError(f"SiLU tables exist for frac_bits 1..{MAX_LOOKUP_FRAC_BITS}")
    cached = _SILU_TABLES.get(frac_bits)
    if cached is not None:
        return cached
    half, scale = 1 << (frac_bits + LOOKUP_RANGE_BITS - 1), 1 << frac_bits
    ctx = decimal.Context(prec=40, rounding=decimal.ROUND_HALF_EVEN, Emin=-999, Emax=999,
                          traps=[])
    one, point_five = decimal.Decimal(1), decimal.Decimal("0.5")
    out = np.zeros(2 * half, dtype=np.int64)
    with decimal.localcontext(ctx):  # whatever the process's own decimal settings are
        for t in range(-half, 0):
            d = decimal.Decimal(t)
            sig = ctx.divide(d, ctx.add(one, ctx.exp(ctx.divide(ctx.minus(d), scale))))
            out[t + half] = int(ctx.add(sig, point_five).to_integral_value(decimal.ROUND_FLOOR))
    # SiLU(x) = x + SiLU(-x), and t is an integer, so rounding commutes with adding it
    pos = np.arange(1, half, dtype=np.int64)
    out[half + 1:] = pos + out[half - pos]
    out.setflags(write=False)
    _SILU_TABLES[frac_bits] = out
    return out


def gelu_table(frac_bits: int) -> np.ndarray:
    """G[t + 2**(K-1)] = round(t * Phi(t / 2**f)) for t in [-2**(K-1), 2**(K-1)), K = f + 6:
    exact GELU x Phi(x) of x = t / 2**f, rounded half up to 2**-f (read-only int64 array).

    Computed in 128-bit integer arithmetic (pi by Machin's formula, erf by its Taylor series),
    so every machine derives the same table bit for bit, with no dependence on the platform's
    libm. For |x| >= 8 the table holds x and 0: GELU differs from them by < 2**-50 there.
    """
    if not 1 <= frac_bits <= MAX_LOOKUP_FRAC_BITS:
        raise ValueError(f"GELU tables exist for frac_bits 1..{MAX_LOOKUP_FRAC_BITS}")
    cached = _GELU_TABLES.get(frac_bits)
    if cached is not None:
        return cached
    k = frac_bits + LOOKUP_RANGE_BITS
    half, scale = 1 << (k - 1), 1 << frac_bits
    one = 1 << 128
    pi = 16 * _atan_inv(5, one) - 4 * _atan_inv(239, one)
    sqrt2 = isqrt(2 * one * one)
    sqrt_pi = isqrt(pi * one)
    t = np.arange(-half, half, dtype=np.int64)
    out = np.where(t > 0, t, 0)
    for ti in range(-8 * scale + 1, 8 * scale):
        u = ti * one * one // (scale * sqrt2)  # x / sqrt(2), fixed point
        term, total, n = u, u, 0
        while term:
            term = -term * u // one * u // one // (n + 1)
            n += 1
            total += term // (2 * n + 1)
        erf = 2 * total * one // sqrt_pi
        out[ti + half] = (ti * (one + erf) + one) // (2 * one)
    out.setflags(write=False)
    _GELU_TABLES[frac_bits] = out
    return out


def _atan_inv(n: int, one: int) -> int:
    """atan(1 / n) in fixed point with `one` = 1."""
    x = total = one // n
    k, sign, n2 = 1, -1, n * n
    while x:
        x //= n2
        total += sign * (x // (2 * k + 1))
        sign, k = -sign, k + 1
    return total
