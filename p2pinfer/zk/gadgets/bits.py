"""The bits gadget: a rescale out = act(floor(z / 2**f)), act ReLU or the identity, proven by
the 32-bit decomposition of z (zkDL section 4), and committed 0/1 tables.

Spec: protocols/zk-proof.md, "Per-layer argument" (the merged sum-check over (i, j) of
lambda/32 E1 s m + eq(r', .) B (1 - B), and the opening of B at its final point). Written once
for both sides: `led` is a ProverLedger or a VerifierLedger; prover-only inputs are None on the
verifier.
"""

from __future__ import annotations

import numpy as np

from ..booleanity import BooleanityProver
from ..field import P, axpy, bind_first, dot, eq_eval, eq_table, int_vecmat
from ..fixed import BITS
from ..layout import hyrax_split
from ..ledger import Lin, sumcheck
from .common import (
    INV32,
    POWERS,
    SIGN_BIT,
    BooleanOracle,
    Claim,
    bit_decomposition,
    kron,
    masked_eq,
    masked_eq_eval,
    triple_sums,
)


class BitsOracle:
    """Round messages of lambda/32 E1 s m + eq(r', .) B (1 - B) over (i, j)."""

    def __init__(self, e1, s, m, boolean: BooleanityProver, lam: int, ni: int, nb: int) -> None:
        self.e1, self.s, self.m = e1, s, m
        self.boolean = boolean
        self.lam, self.ni, self.nb = lam, ni, nb
        self.round = 0
        self.const = 0
        if ni == 0:
            self._set_const()

    def _set_const(self) -> None:
        self.const = self.lam * INV32 % P * self.e1[0] % P * self.s[0] % P * self.m[0] % P

    def evals(self, claim: int) -> list[int]:
        if self.round < self.ni:
            t0, t2, t3 = triple_sums(self.e1, self.s, self.m)
            g = [self.lam * t0 % P, self.lam * t2 % P, self.lam * t3 % P]
        else:
            c = self.const * pow(2, self.nb - self.round - 1, P) % P
            g = [c, c, c]
        b0, b2, b3 = self.boolean.evals()
        g0, g2, g3 = (g[0] + b0) % P, (g[1] + b2) % P, (g[2] + b3) % P
        return [g0, (claim - g0) % P, g2, g3]

    def bind(self, r: int) -> None:
        if self.round < self.ni:
            self.e1 = bind_first(self.e1, r)
            self.s = bind_first(self.s, r)
            self.m = bind_first(self.m, r)
            if self.round == self.ni - 1:
                self._set_const()
        self.boolean.bind(r)
        self.round += 1


def bits_head(led, f: int, nt: int, ni: int, claims: list[Claim], z: np.ndarray | None,
               relu: bool, name: str, split_residual) -> tuple[list[int], Lin, list[Claim]]:
    """Steps 1-3 of a ReLU or identity rescale: the claims on out = act(floor(z / 2**f)), less
    the residual parts `split_residual()` splits off, become z~(rho) as a committed linear
    form. Returns (rho, z~(rho), the residual claims for the layer below)."""
    prover = z is not None
    nb = ni + 5
    # 1. commit the bits of z + 2**31 (Hyrax rows) before any challenge of this layer
    rows_b, cols_b = hyrax_split(nb, 5)
    if prover:
        bits = bit_decomposition(z)
        bmat = bits.reshape(1 << rows_b, 1 << cols_b)
        row_blinds = led.put_bit_matrix(bmat)
    else:
        bit_rows = led.next_matrix(1 << rows_b)

    # 2. split off the residual (a~(p_k), committed unless a is the public input), then merge
    #    the claims on this layer's output with powers of a challenge
    below = split_residual()
    weights = [1]
    if len(claims) > 1:
        alpha = led.challenge(f"{name}/merge".encode())
        for _ in claims[1:]:
            weights.append(weights[-1] * alpha % P)
    total = Lin()
    for k, (w, (_, lin, _)) in enumerate(zip(weights, claims)):
        total = total + lin * w
        if below:
            total = total - below[k][1] * w

    lam = led.challenge(f"{name}/lambda".encode())
    r_bool = [led.challenge(f"{name}/bool/{k}".encode()) for k in range(nb)]
    oracle = None
    if prover:
        e1 = [0] * (1 << ni)
        for w, (p, _, live) in zip(weights, claims):
            e1 = axpy(e1, w, masked_eq(p, live, nt))
        if relu:
            s_tab = bits[:, BITS - 1].tolist()
            m_tab = (bits[:, f:BITS - 1] @ (1 << np.arange(BITS - 1 - f, dtype=np.int64))).tolist()
        else:
            s_tab = [1] * (1 << ni)
            m_tab = [int(v) % P for v in (z.reshape(-1) >> f)]
        oracle = BitsOracle(e1, s_tab, m_tab, BooleanityProver(bits.reshape(-1), r_bool, ni),
                             lam, ni, nb)
    point, final = sumcheck(led, f"{name}/bits", total * lam, nb, 3, oracle)
    rho, sigma = point[:ni], point[ni:]

    # 3. open B at the final point
    lo = eq_table(rho[rows_b:])
    y_m = [(1 << (j - f)) if f <= j < BITS - 1 else 0 for j in range(BITS)]
    if not relu:
        y_m = [(1 << (j - f)) if j >= f else 0 for j in range(BITS)]
    ys = ([kron(lo, SIGN_BIT)] if relu else []) + [
        kron(lo, y_m), kron(lo, POWERS), kron(lo, eq_table(sigma))]
    row_w = eq_table(point[:rows_b])
    u = int_vecmat(row_w, bmat) if prover else None
    opened = [led.put(dot(u, y) if prover else None) for y in ys]
    if relu:
        i_s, i_m, i_z, i_beta = opened
        i_sm = led.put(led.values[i_s] * led.values[i_m] if prover else None)
        act = Lin.var(i_sm)
    else:
        i_m, i_z, i_beta = opened
        act = Lin.var(i_m) - (1 << (BITS - 1 - f))
    i_b2 = led.put(led.values[i_beta] ** 2 if prover else None)
    e1_rho = sum(w * masked_eq_eval(p, rho, live, nt)
                 for w, (p, _, live) in zip(weights, claims)) % P
    e2 = eq_eval(r_bool, point)
    expect = act * (lam * INV32 % P * e1_rho) + (Lin.var(i_beta) - Lin.var(i_b2)) * e2
    led.relate(f"{name}/bits-final", final - expect)
    if relu:
        led.product(f"{name}/relu-product", i_s, i_m, i_sm)
    led.product(f"{name}/bit-square", i_beta, i_beta, i_b2)
    if prover:
        led.prove_dot(u, dot(row_w, row_blinds), ys, opened)
    else:
        led.check_dot(f"{name}/bits-opening", bit_rows, row_w, ys, opened)
    return rho, Lin.var(i_z) - (1 << (BITS - 1)), below


class BitTable:
    """A committed 0/1 table B(i, j) of 32 columns j, its Hyrax rows over the first variables
    of i; opened at a point of i against column patterns, proven boolean by one sum-check."""

    def __init__(self, led, ni: int, bits: np.ndarray | None = None) -> None:
        self.led, self.ni = led, ni
        self.rows_b, _ = hyrax_split(ni + 5, 5)
        self.bits = None
        if bits is not None:
            self.bits = np.asarray(bits, dtype=np.int64).reshape(1 << ni, BITS)
            self.mat = self.bits.reshape(1 << self.rows_b, -1)
            self.blinds = led.put_bit_matrix(self.mat)
        else:
            self.points = led.next_matrix(1 << self.rows_b)

    def open(self, check: str, point: list[int], cols: list[list[int]]) -> list[int]:
        """Commit sum_j col[j] B(point, j) for each 32-entry column pattern, one proof."""
        led = self.led
        row_w = eq_table(point[:self.rows_b])
        lo = eq_table(point[self.rows_b:])
        ys = [kron(lo, c) for c in cols]
        if self.bits is None:
            idx = [led.put() for _ in ys]
            led.check_dot(check, self.points, row_w, ys, idx)
            return idx
        u = int_vecmat(row_w, self.mat)
        idx = [led.put(dot(u, y)) for y in ys]
        led.prove_dot(u, dot(row_w, self.blinds), ys, idx)
        return idx

    def prove_boolean(self, name: str) -> None:
        """sum over (i, j) of eq(r', (i, j)) B (1 - B) = 0, then B at the end point."""
        led, ni = self.led, self.ni
        nb = ni + 5
        r_bool = [led.challenge(f"{name}/bool/{k}".encode()) for k in range(nb)]
        oracle = None
        if self.bits is not None:
            oracle = BooleanOracle(BooleanityProver(self.bits.reshape(-1), r_bool, ni))
        point, final = sumcheck(led, f"{name}/bits", Lin(), nb, 3, oracle)
        (i_b,) = self.open(f"{name}/bits-opening", point[:ni], [eq_table(point[ni:])])
        i_b2 = led.put(led.values[i_b] ** 2 % P if self.bits is not None else None)
        led.product(f"{name}/bit-square", i_b, i_b, i_b2)
        led.relate(f"{name}/bits-final",
                   final - (Lin.var(i_b) - Lin.var(i_b2)) * eq_eval(r_bool, point))
