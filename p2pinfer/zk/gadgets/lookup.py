"""The lookup gadget: GELU and SiLU layers by a committed logUp lookup into their public
tables (tables.py), and the logUp argument the exp table of attention layers shares.

Spec: protocols/zk-proof.md, "GELU and SiLU layers (committed logUp lookup)"; Haboeck,
"Multivariate lookups based on logarithmic derivatives", 2022. Written once for both sides:
`led` is a ProverLedger or a VerifierLedger; prover-only inputs are None on the verifier.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..booleanity import BooleanityProver
from ..errors import RelationError, ShapeMismatch
from ..field import P, batch_inv, dot, eq_eval, eq_table, int_vecmat
from ..fixed import BITS, log2_exact
from ..layout import hyrax_split
from ..ledger import Lin, sumcheck
from ..tables import LOOKUP_NAMES, LOOKUP_RANGE_BITS, MAX_LOOKUP_FRAC_BITS, activation_table
from .bits import BitsOracle
from .common import (
    INV32,
    POWERS,
    Claim,
    Committed,
    TableOracle,
    Witness,
    act_split,
    bit_decomposition,
    kron,
)

# --------------------------------------------------------------------------------------------
# logUp (Haboeck, "Multivariate lookups based on logarithmic derivatives", 2022): pairs
# (key_i, value_i) lie in a public table {(k_u, T_u)} iff, for random beta, gamma,
#     sum_i 1 / (beta - key_i - gamma value_i) = sum_u m_u / (beta - k_u - gamma T_u)
# with m_u the multiplicity of entry u. A layer commits the keys, values and multiplicities;
# `lookup_inverses` commits h_i and g_u, the layer proves h_i (beta - key_i - gamma value_i) = 1
# in a sum-check of its own, and `lookup_table_side` proves g_u (beta - k_u - gamma T_u) = m_u
# and sum h = sum g.


@dataclass
class Lookup:
    beta: int
    gamma: int
    t_tab: list[int]  # beta - k_u - gamma T_u, public
    com_h: Committed
    com_g: Committed
    h_tab: list[int] | None = None  # prover only
    l_tab: list[int] | None = None  # beta - key_i - gamma value_i
    g_tab: list[int] | None = None


def lookup_inverses(led, name: str, table_keys: Sequence[int], table_values: Sequence[int],
                    split_h: tuple[int, int], split_g: tuple[int, int],
                    pairs: tuple[Sequence[int], Sequence[int], Sequence[int]] | None = None
                    ) -> Lookup:
    """Challenges `name/lookup/beta`, `gamma`, then h (layout split_h) and g (split_g)
    committed; `pairs` = (keys, values, multiplicities) on the prover."""
    beta = led.challenge(f"{name}/lookup/beta".encode())
    gamma = led.challenge(f"{name}/lookup/gamma".encode())
    t_tab = [(beta - int(k) - gamma * int(v)) % P for k, v in zip(table_keys, table_values)]
    if 0 in t_tab:  # g_u would be unconstrained there (probability ~2**-238)
        raise RelationError(f"{name}/lookup", "a table denominator vanished")
    if pairs is None:
        return Lookup(beta, gamma, t_tab, Committed(led, split_h), Committed(led, split_g))
    keys, values, mult = pairs
    l_tab = [(beta - int(a) - gamma * int(b)) % P for a, b in zip(keys, values)]
    if 0 in l_tab:  # no inverse: this transcript cannot be proven (probability ~2**-238)
        raise RelationError(f"{name}/lookup", "a lookup denominator vanished")
    h_tab = batch_inv(l_tab)
    g_tab = [int(m) * v % P for m, v in zip(mult, batch_inv(t_tab))]
    return Lookup(beta, gamma, t_tab, Committed(led, split_h, field=h_tab),
                  Committed(led, split_g, field=g_tab), h_tab, l_tab, g_tab)


def lookup_table_side(led, name: str, lookup: Lookup, com_m: Committed,
                      mult: Sequence[int] | None) -> None:
    """sum_u eq(r_g, u) (g_u T_u - m_u) = 0 (`name/table`, T public), then sum h = sum g."""
    kt = len(lookup.t_tab).bit_length() - 1
    r_g = [led.challenge(f"{name}/lookup/rg/{k}".encode()) for k in range(kt)]
    oracle = None
    if mult is not None:
        oracle = TableOracle(eq_table(r_g), lookup.g_tab, lookup.t_tab, [int(v) for v in mult])
    pi, final = sumcheck(led, f"{name}/table", Lin(), kt, 3, oracle)
    i_g = lookup.com_g.open_at(f"{name}/lookup-opening", pi)
    i_m = com_m.open_at(f"{name}/multiplicity-opening", pi)
    t_pi = dot(eq_table(pi), lookup.t_tab)
    led.relate(f"{name}/table-final",
               final - (Lin.var(i_g) * t_pi - Lin.var(i_m)) * eq_eval(r_g, pi))
    i_hs = lookup.com_h.open_sum(f"{name}/lookup-opening")
    i_gs = lookup.com_g.open_sum(f"{name}/lookup-opening")
    led.relate(f"{name}/lookup-sums", Lin.var(i_hs) - Lin.var(i_gs))


# --------------------------------------------------------------------------------------------
# GELU and SiLU by a committed logUp lookup (Haboeck, "Multivariate lookups based on logarithmic
# derivatives", 2022): (q_i, y_i) lies in the table {(t, G(t))} iff, for random beta, gamma,
#     sum_i 1 / (beta - q_i - gamma y_i) = sum_t m_t / (beta - t - gamma G(t))
# with m_t the multiplicity of t. The prover commits y, m, then (after beta, gamma) the
# inverses h and g, and proves h_i (beta - q_i - gamma y_i) = 1 and
# g_t (beta - t - gamma G(t)) = m_t by zero-checks, and sum h = sum g by two openings.


def lookup_head(led, activation: str, f: int, nt: int, ni: int, claims: list[Claim],
                below: list[Claim], wit: Witness | None, name: str,
                range_bits: int = LOOKUP_RANGE_BITS) -> tuple[list[int], Lin]:
    """Steps 1-3 of a GELU or SiLU layer whose table has range `range_bits` (the layer's
    manifest `range`): returns (rho, z~(rho) as a committed linear form)."""
    prover = wit is not None
    nb = ni + 5
    if not 1 <= f <= MAX_LOOKUP_FRAC_BITS:
        raise ShapeMismatch("shard", f"a {LOOKUP_NAMES[activation]} layer needs frac_bits <= "
                                     f"{MAX_LOOKUP_FRAC_BITS}")
    table = activation_table(activation, f, range_bits)
    kt = log2_exact(len(table), "table")
    half = len(table) // 2
    rows_b, cols_b = hyrax_split(nb, 5)
    split_a = act_split(ni, nt)
    split_t = hyrax_split(kt)

    # 1. commit the bits of z + 2**31, the outputs y = G(q) and the multiplicities m
    if prover:
        bits = bit_decomposition(wit.z)
        bmat = bits.reshape(1 << rows_b, 1 << cols_b)
        row_blinds = led.put_bit_matrix(bmat)
        q = wit.z.reshape(-1) >> f
        y = table[q + half]
        mult = np.bincount(q + half, minlength=len(table)).astype(np.int64)
        # public bounds: |G(t)| <= |t| <= 2**(kt - 1), and a key is used at most 2**ni times
        com_y = Committed(led, split_a, ints=y, bits=kt)
        com_m = Committed(led, split_t, ints=mult, bits=ni + 1)
    else:
        bit_rows = led.next_matrix(1 << rows_b)
        com_y = Committed(led, split_a)
        com_m = Committed(led, split_t)

    # 2. the claims on this layer's output are openings of y (minus the residual part)
    for k, (p, lin, live) in enumerate(claims):
        row_w = eq_table(p[:split_a[0]])
        live_rows = live * (len(row_w) >> nt)
        row_w[live_rows:] = [0] * (len(row_w) - live_rows)
        i_y = com_y.open(f"{name}/output-opening", row_w, eq_table(p[split_a[0]:]))
        rest = lin - below[k][1] if below else lin
        led.relate(f"{name}/output", rest - Lin.var(i_y))

    # 3. the lookup: inverses h (per element) and g (per table entry), committed
    lookup = lookup_inverses(led, name, range(-half, half), table, split_a, split_t,
                             (q, y, mult) if prover else None)
    beta, gamma, com_h = lookup.beta, lookup.gamma, lookup.com_h

    # 4. one sum-check over (i, j): lambda/32 eq(r_h, i) h(i) l(i) (sums to lambda: h l = 1)
    #    plus booleanity of the bits; it ends at (rho, sigma)
    r_h = [led.challenge(f"{name}/lookup/rh/{k}".encode()) for k in range(ni)]
    lam = led.challenge(f"{name}/lambda".encode())
    r_bool = [led.challenge(f"{name}/bool/{k}".encode()) for k in range(nb)]
    oracle = None
    if prover:
        oracle = BitsOracle(eq_table(r_h), lookup.h_tab, lookup.l_tab,
                             BooleanityProver(bits.reshape(-1), r_bool, ni), lam, ni, nb)
    point, final = sumcheck(led, f"{name}/bits", Lin(const=lam), nb, 3, oracle)
    rho, sigma = point[:ni], point[ni:]
    lo = eq_table(rho[rows_b:])
    y_q = [(1 << (j - f)) if j >= f else 0 for j in range(BITS)]
    ys = [kron(lo, y_q), kron(lo, POWERS), kron(lo, eq_table(sigma))]
    row_w = eq_table(point[:rows_b])
    u = int_vecmat(row_w, bmat) if prover else None
    i_q, i_z, i_beta = (led.put(dot(u, yv) if prover else None) for yv in ys)
    if prover:
        led.prove_dot(u, dot(row_w, row_blinds), ys, [i_q, i_z, i_beta])
    else:
        led.check_dot(f"{name}/bits-opening", bit_rows, row_w, ys, [i_q, i_z, i_beta])
    i_yr = com_y.open_at(f"{name}/output-opening", rho)
    i_h = com_h.open_at(f"{name}/lookup-opening", rho)
    q_lin = Lin.var(i_q) - (1 << (BITS - 1 - f))
    l_lin = (q_lin + Lin.var(i_yr) * gamma) * (P - 1) + beta
    i_l = led.put(led.value(l_lin) if prover else None)
    led.relate(f"{name}/lookup", Lin.var(i_l) - l_lin)
    i_hl = led.put(led.values[i_h] * led.values[i_l] if prover else None)
    i_b2 = led.put(led.values[i_beta] ** 2 if prover else None)
    expect = (Lin.var(i_hl) * (lam * INV32 % P * eq_eval(r_h, rho) % P)
              + (Lin.var(i_beta) - Lin.var(i_b2)) * eq_eval(r_bool, point))
    led.relate(f"{name}/bits-final", final - expect)
    led.product(f"{name}/lookup-product", i_h, i_l, i_hl)
    led.product(f"{name}/bit-square", i_beta, i_beta, i_b2)

    # 5-6. the table side, T public, and sum h = sum g
    lookup_table_side(led, name, lookup, com_m, mult if prover else None)
    return rho, Lin.var(i_z) - (1 << (BITS - 1))
