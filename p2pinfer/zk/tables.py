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
#: a lookup table of range R covers q in [-2**(f + R - 1), 2**(f + R - 1)), i.e. real
#: pre-activations in [-2**(R - 1), 2**(R - 1)): by default R = LOOKUP_RANGE_BITS ([-32, 32));
#: a layer may widen its table up to MAX_LOOKUP_RANGE_BITS ([-256, 256)), recorded in the
#: manifest (its `range`). Lookup layers need frac_bits <= MAX_LOOKUP_FRAC_BITS
LOOKUP_RANGE_BITS = 6
MAX_LOOKUP_RANGE_BITS = 9
MAX_LOOKUP_FRAC_BITS = 10
#: SiLU keys below -2**(f + 5) (real below -32) hold 0 and keys t above 2**(f + 5) hold t:
#: |SiLU(x) - max(x, 0)| < 32 exp(-32) < 2**-40 there, so rounding to 2**-f is exact
_SILU_FLAT = 5


LOOKUP_NAMES = {"gelu": "GELU", "silu": "SiLU"}


def check_range_bits(range_bits: object) -> int:
    """A table range R (int in [LOOKUP_RANGE_BITS, MAX_LOOKUP_RANGE_BITS]), else ValueError."""
    if type(range_bits) is not int or not LOOKUP_RANGE_BITS <= range_bits <= MAX_LOOKUP_RANGE_BITS:
        raise ValueError(f"a lookup table's range must be an int in {LOOKUP_RANGE_BITS}.."
                         f"{MAX_LOOKUP_RANGE_BITS} (real inputs in [-2**(R-1), 2**(R-1))), "
                         f"got {range_bits!r}")
    return range_bits


def activation_table(activation: str, frac_bits: int,
                     range_bits: int = LOOKUP_RANGE_BITS) -> np.ndarray:
    """The public lookup table of a lookup activation (`gelu_table`, `silu_table`)."""
    if activation == "gelu":
        return gelu_table(frac_bits, range_bits)
    if activation == "silu":
        return silu_table(frac_bits, range_bits)
    raise ValueError(f"{activation!r} is not a lookup activation")


def lookup_activation(q: np.ndarray, activation: str, frac_bits: int,
                      range_bits: int = LOOKUP_RANGE_BITS) -> np.ndarray:
    """A lookup activation of fixed-point values by table; FixedPointOverflow outside the
    table's range."""
    table = activation_table(activation, frac_bits, range_bits)
    lo = len(table) // 2
    if q.size and (q.min() < -lo or q.max() >= lo):
        worst = int(q.max()) if q.max() >= -int(q.min()) else int(q.min())
        raise FixedPointOverflow(f"a {LOOKUP_NAMES[activation]} input is outside the table's range "
                                 f"[-{lo}, {lo}) (real [-{lo >> frac_bits}, {lo >> frac_bits})): "
                                 f"{worst / (1 << frac_bits):g}")
    return table[q + lo]


_GELU_TABLES: dict[tuple[int, int], np.ndarray] = {}
_SILU_TABLES: dict[tuple[int, int], np.ndarray] = {}


def silu_table(frac_bits: int, range_bits: int = LOOKUP_RANGE_BITS) -> np.ndarray:
    """S[t + 2**(K-1)] = round(t / (1 + exp(-t / 2**f))) for t in [-2**(K-1), 2**(K-1)),
    K = f + range_bits: exact SiLU x sigmoid(x) of x = t / 2**f, rounded half up to 2**-f
    (read-only int64 array). Beyond real +-32 the entries are 0 and t (exact, _SILU_FLAT).

    exp comes from the decimal module at 40 significant digits: the General Decimal Arithmetic
    specification makes it correctly rounded, so every machine derives the same table bit for
    bit, with no dependence on the platform's libm. An entry could differ from the exactly
    rounded value only if t * sigmoid(x), irrational for t != 0, lay within about 10**-35 of a
    rounding tie; `tests/zk/test_silu.py` checks every table (f = 1..10) against float64.
    """
    if not 1 <= frac_bits <= MAX_LOOKUP_FRAC_BITS:
        raise ValueError(f"SiLU tables exist for frac_bits 1..{MAX_LOOKUP_FRAC_BITS}")
    check_range_bits(range_bits)
    cached = _SILU_TABLES.get((frac_bits, range_bits))
    if cached is not None:
        return cached
    half, scale = 1 << (frac_bits + range_bits - 1), 1 << frac_bits
    flat = min(half, 1 << (frac_bits + _SILU_FLAT))
    ctx = decimal.Context(prec=40, rounding=decimal.ROUND_HALF_EVEN, Emin=-999, Emax=999,
                          traps=[])
    one, point_five = decimal.Decimal(1), decimal.Decimal("0.5")
    out = np.zeros(2 * half, dtype=np.int64)
    with decimal.localcontext(ctx):  # whatever the process's own decimal settings are
        for t in range(-flat, 0):
            d = decimal.Decimal(t)
            sig = ctx.divide(d, ctx.add(one, ctx.exp(ctx.divide(ctx.minus(d), scale))))
            out[t + half] = int(ctx.add(sig, point_five).to_integral_value(decimal.ROUND_FLOOR))
    # SiLU(x) = x + SiLU(-x), and t is an integer, so rounding commutes with adding it
    pos = np.arange(1, half, dtype=np.int64)
    out[half + 1:] = pos + out[half - pos]
    out.setflags(write=False)
    _SILU_TABLES[(frac_bits, range_bits)] = out
    return out


def gelu_table(frac_bits: int, range_bits: int = LOOKUP_RANGE_BITS) -> np.ndarray:
    """G[t + 2**(K-1)] = round(t * Phi(t / 2**f)) for t in [-2**(K-1), 2**(K-1)),
    K = f + range_bits:
    exact GELU x Phi(x) of x = t / 2**f, rounded half up to 2**-f (read-only int64 array).

    Computed in 128-bit integer arithmetic (pi by Machin's formula, erf by its Taylor series),
    so every machine derives the same table bit for bit, with no dependence on the platform's
    libm. For |x| >= 8 the table holds x and 0: GELU differs from them by < 2**-50 there.
    """
    if not 1 <= frac_bits <= MAX_LOOKUP_FRAC_BITS:
        raise ValueError(f"GELU tables exist for frac_bits 1..{MAX_LOOKUP_FRAC_BITS}")
    check_range_bits(range_bits)
    cached = _GELU_TABLES.get((frac_bits, range_bits))
    if cached is not None:
        return cached
    k = frac_bits + range_bits
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
    _GELU_TABLES[(frac_bits, range_bits)] = out
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
