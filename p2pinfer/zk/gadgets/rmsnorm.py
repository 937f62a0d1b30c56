"""The RMSNorm gadget: y = floor(floor(x R / 2**16) g / 2**f) with R = floor(sqrt(C / S)) and
S = sum x^2 + E (fixed.rmsnorm_fixed).

Spec: protocols/zk-proof.md, "RMSNorm layers": the rescales by bits (bits.py), the broadcast
products by sum-checks, and R by two range checks. Written once for both sides: `led` is a
ProverLedger or a VerifierLedger; prover-only inputs are None on the verifier.
"""

from __future__ import annotations

import numpy as np

from ..errors import FixedPointOverflow, ShapeMismatch
from ..field import P, bind_first, eq_eval, eq_table, int_mle_eval
from ..fixed import (
    MAX_RMS_FRAC_BITS,
    RMS_R_BITS,
    RMS_R_FRAC,
    RMS_RANGE_BITS,
    rms_constants,
    rmsnorm_fixed,
)
from ..layout import hyrax_split
from ..ledger import Lin, sumcheck
from ..manifest import LayerCommitment
from .bits import bits_head
from .common import Claim, Committed, TripleOracle, Witness, columns, flat, open_vector

# RMSNorm (fixed.rmsnorm_fixed): the rescales by bits, the broadcast products by sum-checks,
# and R = floor(sqrt(C / S)) by two range checks: 0 <= C - R^2 S and 0 <= (R+1)^2 S - C - 1,
# both below 2**80, with R below 2**32 and S = sum x^2 + E tied to x by a sum-check. All of
# them are integers far below the field's size, so the field equations are integer ones.

_RANGE_COLS = 256  # per token: D1 bits [0, 80), D2 bits [80, 160), R bits [160, 192), zeros


class _RsqrtOracle:
    """Round messages of sum_t e(t) [D1 + R^2 S - C + mu (D2 - (R+1)^2 S + C + 1)] (degree 4)."""

    def __init__(self, e, d1, d2, r, s, c: int, mu: int) -> None:
        self.tabs = [e, d1, d2, r, s]
        self.c, self.mu = c, mu

    def _term(self, e, d1, d2, r, s) -> int:
        rrs = r * r % P * s
        rp1 = (r + 1) * (r + 1) % P * s
        return e * ((d1 + rrs - self.c + self.mu * (d2 - rp1 + self.c + 1)) % P)

    def evals(self, claim: int) -> list[int]:
        h = len(self.tabs[0]) // 2
        acc = [0, 0, 0, 0]
        for k in range(h):
            lo = [t[k] for t in self.tabs]
            hi = [t[k + h] for t in self.tabs]
            for slot, x in enumerate((0, 2, 3, 4)):
                acc[slot] += self._term(*(a + x * (b - a) for a, b in zip(lo, hi)))
        g0 = acc[0] % P
        return [g0, (claim - g0) % P, acc[1] % P, acc[2] % P, acc[3] % P]

    def bind(self, r: int) -> None:
        self.tabs = [bind_first(t, r) for t in self.tabs]


def _check_rms_ranges(d1: list[int], d2: list[int], r: list[int]) -> None:
    """The prover's own check that its range values fit their bits (an honest R always does)."""
    if min(d1 + d2) < 0 or max(d1 + d2) >> RMS_RANGE_BITS or max(r) >> RMS_R_BITS:
        raise FixedPointOverflow("an RMSNorm range check is outside its bits")


def norm_layer(led, lc: LayerCommitment, f: int, nt: int, ni: int, claims: list[Claim],
               x: np.ndarray | None, wit: Witness | None, name: str,
               rows: list | None) -> list[Claim]:
    """An RMSNorm layer: claims on y become claims on its input (returned; none when the input
    is the public x, which the verifier evaluates itself)."""
    prover = wit is not None
    d, full = lc.d_out, 1 << nt
    if lc.residual or lc.bias_rows is not None or lc.d_in != d or lc.skip:
        raise ShapeMismatch("shard", "an RMSNorm layer maps d to d, without bias or residual")
    if not 1 <= f <= MAX_RMS_FRAC_BITS:
        raise ShapeMismatch("shard", f"an RMSNorm layer needs frac_bits <= {MAX_RMS_FRAC_BITS}")
    e_const, c_const = rms_constants(d, f, lc.eps)
    d1_at, d2_at, r_at = 0, RMS_RANGE_BITS, 2 * RMS_RANGE_BITS
    out: list[Claim] = []
    # 0. the range bits (D1 | D2 | R) and S, per token, before any challenge of this layer
    split_b = (nt, _RANGE_COLS.bit_length() - 1)
    if prover:
        norm = rmsnorm_fixed(wit.a, wit.weight, f, lc.eps)
        s_vals = [int(v) for v in norm["s"]]
        r_vals = [int(v) for v in norm["r"]]
        d1 = [c_const - r * r * sv for r, sv in zip(r_vals, s_vals)]
        d2 = [(r + 1) * (r + 1) * sv - c_const - 1 for r, sv in zip(r_vals, s_vals)]
        _check_rms_ranges(d1, d2, r_vals)
        bits = np.zeros((full, _RANGE_COLS), dtype=np.int64)
        for t in range(full):
            for at, value, width in ((d1_at, d1[t], RMS_RANGE_BITS),
                                     (d2_at, d2[t], RMS_RANGE_BITS), (r_at, r_vals[t], RMS_R_BITS)):
                bits[t, at:at + width] = [(value >> j) & 1 for j in range(width)]
        com_b = Committed(led, split_b, ints=bits, bits=1)
        com_s = Committed(led, hyrax_split(nt), ints=np.array(s_vals, dtype=np.int64), bits=62)
    else:
        com_b = Committed(led, split_b)
        com_s = Committed(led, hyrax_split(nt))
    cols_d1 = columns(d1_at, RMS_RANGE_BITS, _RANGE_COLS)
    cols_d2 = columns(d2_at, RMS_RANGE_BITS, _RANGE_COLS)
    cols_r = columns(r_at, RMS_R_BITS, _RANGE_COLS)

    # 1-3. the claims on y = floor(v / 2**f) become v~(rho)
    rho, v_lin, _ = bits_head(led, f, nt, ni, claims, wit.z if prover else None, False, name,
                               list)
    # 4. v~(rho) = sum_i eq(rho, i) u_i g_(i mod d), the gain g opened from the manifest
    oracle = None
    if prover:
        gain = [int(v) % P for v in wit.weight.reshape(-1)]
        oracle = TripleOracle(eq_table(rho), flat(norm["u"]), gain * full)
    rho2, final = sumcheck(led, f"{name}/norm-gain", v_lin, ni, 3, oracle)
    i_u = led.put(oracle.s[0] if prover else None)
    i_g = open_vector(led, f"{name}/weight-opening", rho2[nt:], wit.weight if prover else None,
                      wit.weight_blinds if prover else None,
                      None if prover else rows[("w", id(lc.weight_rows))])
    i_ug = led.put(oracle.s[0] * oracle.m[0] % P if prover else None)
    led.relate(f"{name}/norm-gain-final", final - Lin.var(i_ug) * eq_eval(rho, rho2))
    led.product(f"{name}/norm-gain-mul", i_u, i_g, i_ug)

    # 5. u~(rho2) is a claim on the rescale u = floor(w / 2**RMS_R_FRAC) of w = x R
    rho3, w_lin, _ = bits_head(led, RMS_R_FRAC, nt, ni, [(rho2, Lin.var(i_u), full)],
                                wit.zw if prover else None, False, f"{name}/rescale", list)
    # 6. w~(rho3) = sum_i eq(rho3, i) x_i R_(i div d), R opened from the range bits
    oracle = None
    if prover:
        oracle = TripleOracle(eq_table(rho3), flat(wit.a), [r for r in r_vals for _ in range(d)])
    rho4, final = sumcheck(led, f"{name}/norm-mul", w_lin, ni, 3, oracle)
    i_r4 = com_b.open(f"{name}/range-opening", eq_table(rho4[:nt]), cols_r)
    scale4 = eq_eval(rho3, rho4)
    if x is not None:
        led.relate(f"{name}/norm-mul-final",
                   final - Lin.var(i_r4) * (scale4 * int_mle_eval(x, rho4) % P))
    else:
        i_x4 = led.put(oracle.s[0] if prover else None)
        i_xr = led.put(oracle.s[0] * oracle.m[0] % P if prover else None)
        led.relate(f"{name}/norm-mul-final", final - Lin.var(i_xr) * scale4)
        led.product(f"{name}/norm-mul-product", i_x4, i_r4, i_xr)
        out.append((rho4, Lin.var(i_x4), full))

    # 7. R = floor(sqrt(C / S)) for every token
    tau = [led.challenge(f"{name}/rsqrt/tau/{k}".encode()) for k in range(nt)]
    mu = led.challenge(f"{name}/rsqrt/mu".encode())
    oracle = _RsqrtOracle(eq_table(tau), [v % P for v in d1], [v % P for v in d2], r_vals,
                          s_vals, c_const, mu) if prover else None
    pi, final = sumcheck(led, f"{name}/rsqrt", Lin(), nt, 4, oracle)
    row_pi = eq_table(pi)
    i_d1, i_d2, i_r = com_b.open_many(f"{name}/range-opening", row_pi,
                                      [cols_d1, cols_d2, cols_r])
    i_s = com_s.open_at(f"{name}/sum-opening", pi)
    vals = led.values if prover else None
    i_rr = led.put(vals[i_r] * vals[i_r] % P if prover else None)
    i_rrs = led.put(vals[i_rr] * vals[i_s] % P if prover else None)
    i_rs = led.put(vals[i_r] * vals[i_s] % P if prover else None)
    for a, b, c, check in ((i_r, i_r, i_rr, "rr"), (i_rr, i_s, i_rrs, "rrs"),
                           (i_r, i_s, i_rs, "rs")):
        led.product(f"{name}/rsqrt-{check}", a, b, c)
    rrs, rs, sv = Lin.var(i_rrs), Lin.var(i_rs), Lin.var(i_s)
    expr = (Lin.var(i_d1) + rrs - c_const
            + (Lin.var(i_d2) - rrs - rs * 2 - sv + (c_const + 1)) * mu)
    led.relate(f"{name}/rsqrt-final", final - expr * eq_eval(tau, pi))

    # 8. S~(pi) - E = sum over (t, i) of eq(pi, t) x_(t,i)^2
    oracle = None
    if prover:
        xs = flat(wit.a)
        oracle = TripleOracle([v for v in row_pi for _ in range(d)], xs, xs)
    rho5, final = sumcheck(led, f"{name}/sum-squares", Lin.var(i_s) - e_const, ni, 3, oracle)
    scale5 = eq_eval(pi, rho5[:nt])
    if x is not None:
        x5 = int_mle_eval(x, rho5)
        led.relate(f"{name}/sum-squares-final", final - Lin(const=scale5 * x5 % P * x5 % P))
    else:
        i_x5 = led.put(oracle.s[0] if prover else None)
        i_xx = led.put(oracle.s[0] * oracle.s[0] % P if prover else None)
        led.relate(f"{name}/sum-squares-final", final - Lin.var(i_xx) * scale5)
        led.product(f"{name}/sum-squares-product", i_x5, i_x5, i_xx)
        out.append((rho5, Lin.var(i_x5), full))

    # 9. the range bits are bits: sum over (t, c) of eq(r', (t, c)) B (1 - B) = 0
    nr = nt + split_b[1]
    rb = [led.challenge(f"{name}/range/bool/{k}".encode()) for k in range(nr)]
    oracle = None
    if prover:
        flat_bits = bits.reshape(-1).tolist()
        oracle = TripleOracle(eq_table(rb), flat_bits, [1 - v for v in flat_bits])
    sig, final = sumcheck(led, f"{name}/range-bits", Lin(), nr, 3, oracle)
    i_b = com_b.open_at(f"{name}/range-opening", sig)
    i_bb = led.put(led.values[i_b] ** 2 % P if prover else None)
    led.product(f"{name}/range-bit-square", i_b, i_b, i_bb)
    led.relate(f"{name}/range-bits-final",
               final - (Lin.var(i_b) - Lin.var(i_bb)) * eq_eval(rb, sig))
    return out
