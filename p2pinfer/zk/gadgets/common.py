"""What every layer argument shares: claims, witnesses, sum-check oracles, committed tables,
the residual split and the matrix product every linear layer ends in.

Spec: protocols/zk-proof.md, "Per-layer argument" (the matrix product by Thaler's linear-time
sum-check, "Time-optimal interactive proofs for circuit evaluation", 2013; W and b opened
against the manifest's row commitments) and "Tables and Hyrax layout" (committed tables).
Every function is written once for both sides: `led` is a ProverLedger or a VerifierLedger,
and prover-only inputs are None on the verifier.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..booleanity import BooleanityProver
from ..field import (
    P,
    axpy,
    bind_first,
    dot,
    eq_eval,
    eq_table,
    int_matvec,
    int_mle_eval,
    int_vecmat,
    inv,
    product_sum,
)
from ..fixed import BITS
from ..layout import hyrax_matrix, hyrax_split, part_rows, weight_parts
from ..ledger import Lin, sumcheck
from ..manifest import LayerCommitment

Claim = tuple[list[int], Lin, int]
"""(point, claimed value, live tokens): sum over live tokens of eq(point, i) out_i = value."""
INV32 = inv(BITS)
SIGN_BIT = [0] * (BITS - 1) + [1]
POWERS = [1 << j for j in range(BITS)]


def triple_sums(e: list[int], s: list[int], m: list[int]) -> tuple[int, int, int]:
    """sum over the half-tables of e_t s_t m_t for t = 0, 2, 3."""
    a0, a2, a3 = product_sum([e, s, m], [(1, (0, 1, 2))], 3)
    return a0, a2, a3


class TripleOracle:
    """Round messages of sum_i e(i) s(i) m(i) (degree 3)."""

    def __init__(self, e: list[int], s: list[int], m: list[int]) -> None:
        self.e, self.s, self.m = e, s, m

    def evals(self, claim: int) -> list[int]:
        t0, t2, t3 = triple_sums(self.e, self.s, self.m)
        return [t0, (claim - t0) % P, t2, t3]

    def bind(self, r: int) -> None:
        self.e = bind_first(self.e, r)
        self.s = bind_first(self.s, r)
        self.m = bind_first(self.m, r)


class ProductOracle:
    def __init__(self, a: list[int], w: list[int]) -> None:
        self.a, self.w = a, w

    def evals(self, claim: int) -> list[int]:
        g0, g2 = product_sum([self.a, self.w], [(1, (0, 1))], 2)
        return [g0, (claim - g0) % P, g2]

    def bind(self, r: int) -> None:
        self.a = bind_first(self.a, r)
        self.w = bind_first(self.w, r)


class TableOracle:
    """Round messages of sum_t e(t) (g(t) T(t) - m(t)) (degree 3)."""

    def __init__(self, e: list[int], g: list[int], t: list[int], m: list[int]) -> None:
        self.e, self.g, self.t, self.m = e, g, t, m

    def evals(self, claim: int) -> list[int]:
        g0, g2, g3 = product_sum([self.e, self.g, self.t, self.m],
                                 [(1, (0, 1, 2)), (P - 1, (0, 3))], 3)
        return [g0, (claim - g0) % P, g2, g3]

    def bind(self, r: int) -> None:
        self.e = bind_first(self.e, r)
        self.g = bind_first(self.g, r)
        self.t = bind_first(self.t, r)
        self.m = bind_first(self.m, r)


class ProductSum:
    """Round messages of sum_x sum_k c_k prod_m T_km(x) over named multilinear tables (each
    bound once per round however many terms use it). `degree` is what the verifier expects:
    at least the longest product. After the last round `value(name)` is T(point)."""

    def __init__(self, tables: dict[str, list[int]],
                 terms: Sequence[tuple[int, Sequence[str]]], degree: int) -> None:
        self.tables = dict(tables)
        self.terms = [(coef % P, list(names)) for coef, names in terms]
        if not self.terms or max(len(n) for _, n in self.terms) > degree:
            raise ValueError("a product is longer than the sum-check's degree")
        self.degree = degree

    def evals(self, claim: int) -> list[int]:
        names = list(self.tables)
        index = {name: k for k, name in enumerate(names)}
        out = product_sum([self.tables[n] for n in names],
                          [(coef, [index[n] for n in term]) for coef, term in self.terms],
                          self.degree)
        return [out[0], (claim - out[0]) % P, *out[1:]]

    def bind(self, r: int) -> None:
        self.tables = {name: bind_first(t, r) for name, t in self.tables.items()}

    def value(self, name: str) -> int:
        return self.tables[name][0] % P


class BooleanOracle:
    """Round messages of sum_x eq(r', x) B(x) (1 - B(x)) alone (claimed sum 0)."""

    def __init__(self, boolean: BooleanityProver) -> None:
        self.boolean = boolean

    def evals(self, claim: int) -> list[int]:
        b0, b2, b3 = self.boolean.evals()
        return [b0, (claim - b0) % P, b2, b3]

    def bind(self, r: int) -> None:
        self.boolean.bind(r)


@dataclass
class Witness:
    weight: np.ndarray
    bias: np.ndarray | None
    a: np.ndarray
    z: np.ndarray
    weight_blinds: list[int]
    bias_blinds: list[int] | None
    zw: np.ndarray | None = None  # a gated layer's matrix product [z_u | z_g]


def kron(lo: list[int], w: list[int]) -> list[int]:
    return [a * b % P for a in lo for b in w]


def act_split(ni: int, nt: int) -> tuple[int, int]:
    """Hyrax (row, column) variables of an activation table: every token variable is a row
    variable, so a token mask is a mask on row weights."""
    cols = min((ni + 1) // 2, ni - nt)
    return ni - cols, cols


def field_vecmat(w: Sequence[int], rows: Sequence[Sequence[int]]) -> list[int]:
    out = [0] * len(rows[0])
    for wr, row in zip(w, rows):
        if wr:
            out = axpy(out, wr, row)
    return out


class Committed:
    """A committed table on the prover side (values and Hyrax row blindings) or the verifier
    side (row commitments), with openings at eq points or against arbitrary weights."""

    def __init__(self, led, split: tuple[int, int], *, ints: np.ndarray | None = None,
                 field: list[int] | None = None, bits: int = 62) -> None:
        self.led, (self.nr, self.nc) = led, split
        self.ints, self.field = ints, field
        if ints is not None:  # |ints| < 2**bits, a public bound
            self.blinds = led.put_int_matrix(ints.reshape(1 << self.nr, 1 << self.nc), bits)
        elif field is not None:
            w = 1 << self.nc
            self.rows = [field[r * w:(r + 1) * w] for r in range(1 << self.nr)]
            self.blinds = led.put_field_matrix(self.rows)
        else:
            self.points = led.next_matrix(1 << self.nr)

    def open(self, check: str, row_w: list[int], col: list[int]) -> int:
        """Commit <row_w^T M, col> and prove it against the row commitments."""
        return self.open_many(check, row_w, [col])[0]

    def open_many(self, check: str, row_w: list[int], cols: list[list[int]]) -> list[int]:
        """Commit <row_w^T M, c> for each column vector c, with one proof for all of them."""
        led = self.led
        if self.ints is not None:
            u = int_vecmat(row_w, self.ints.reshape(1 << self.nr, 1 << self.nc))
        elif self.field is not None:
            u = field_vecmat(row_w, self.rows)
        else:
            idx = [led.put() for _ in cols]
            led.check_dot(check, self.points, row_w, cols, idx)
            return idx
        idx = [led.put(dot(u, col)) for col in cols]
        led.prove_dot(u, dot(row_w, self.blinds), cols, idx)
        return idx

    def open_at(self, check: str, point: list[int]) -> int:
        return self.open(check, eq_table(point[:self.nr]), eq_table(point[self.nr:]))

    def open_sum(self, check: str) -> int:
        return self.open(check, [1] * (1 << self.nr), [1] * (1 << self.nc))


def bit_decomposition(z: np.ndarray) -> np.ndarray:
    """(elements, 32) bits of z + 2**31, least significant first."""
    zz = (z.reshape(-1) + (1 << (BITS - 1))).astype(np.uint64)
    return ((zz[:, None] >> np.arange(BITS, dtype=np.uint64)) & 1).astype(np.int64)


def masked_eq(p: list[int], live: int, nt: int) -> list[int]:
    """eq(p, i) for i = (token, feature), zero on the padding tokens (token >= live)."""
    table = eq_table(p)
    if live < 1 << nt:
        cut = live * (len(table) >> nt)
        table[cut:] = [0] * (len(table) - cut)
    return table


def masked_eq_eval(p: list[int], q: list[int], live: int, nt: int) -> int:
    """sum over live tokens and all features of eq(p, i) eq(q, i)."""
    if live == 1 << nt:
        return eq_eval(p, q)
    tok = dot(eq_table(p[:nt])[:live], eq_table(q[:nt])[:live])
    return tok * eq_eval(p[nt:], q[nt:]) % P


def flat(a: np.ndarray) -> list[int]:
    return [int(v) % P for v in a.reshape(-1)]


def columns(offset: int, width: int, size: int = BITS) -> list[int]:
    """A column pattern of `size` entries: 2**(j - offset) for j in [offset, offset + width),
    0 elsewhere (the value of a bit field of a committed bit row)."""
    col = [0] * size
    col[offset:offset + width] = [1 << j for j in range(width)]
    return col


def open_vector(led, check: str, point: list[int], values: np.ndarray | None,
                blinds: list[int] | None, pts: list | None) -> int:
    """Commit v = values~(point) and open it against Hyrax row commitments (`pts`, decoded,
    on the verifier; the values and row blindings on the prover)."""
    n = len(point)
    rows_n, _ = hyrax_split(n)
    row_w = eq_table(point[:rows_n])
    y = eq_table(point[rows_n:])
    if values is not None:
        mat = hyrax_matrix(np.asarray(values).reshape(-1))
        u = int_vecmat(row_w, mat)
        idx = led.put(dot(u, y))
        led.prove_dot(u, dot(row_w, blinds), [y], [idx])
    else:
        idx = led.put()
        led.check_dot(check, pts, row_w, [y], [idx])
    return idx


def residual_claims(led, residual: bool, nt: int, claims: list[Claim], x: np.ndarray | None,
                     a: np.ndarray | None, prover: bool) -> list[Claim]:
    """For a residual layer, a~(p_k) at each claim's point, a being the residual source
    (committed, or computed from x by the verifier when the source is the shard's input): split
    off the output claims, passed on as claims on a."""
    below: list[Claim] = []
    if residual:
        for p, _, live in claims:
            if x is not None:  # the padded rows of x are zero: no mask needed
                lin = Lin(const=int_mle_eval(x, p))
            else:
                v = dot(masked_eq(p, live, nt), flat(a)) if prover else None
                lin = Lin.var(led.put(v))
            below.append((p, lin, live))
    return below


def matmul_tail(led, lc: LayerCommitment, nt: int, nk: int, rho: list[int], z_lin: Lin,
                below: list[Claim], x: np.ndarray | None, wit: Witness | None, name: str,
                rows: dict | None, part: int = 0) -> list[Claim]:
    """4. z~(rho) = b~(rho_out) + sum_k a~(rho_tok, k) W~(k, rho_out): the claim on a~ (or the
    check against the public x) goes to the layer below. `part` picks one separately committed
    part of the weight (the q, k or v projection of an attention layer; layout.weight_parts)."""
    prover = wit is not None
    rho_tok, rho_out = rho[:nt], rho[nt:]
    col0, width = weight_parts(lc)[part]
    w_rows, b_rows = part_rows(lc)[part]
    weight = wit.weight[:, col0:col0 + width] if prover else None
    if lc.bias_rows is not None:
        i_bias = open_vector(led, f"{name}/bias-opening", rho_out,
                             wit.bias[col0:col0 + width] if prover else None,
                             wit.bias_blinds[b_rows] if prover else None,
                             None if prover else rows[("b", id(lc.bias_rows))][b_rows])
        z_lin = z_lin - Lin.var(i_bias)
    oracle2 = None
    if prover:
        oracle2 = ProductOracle(int_vecmat(eq_table(rho_tok), wit.a),
                                int_matvec(weight, eq_table(rho_out)))
    kappa, final = sumcheck(led, f"{name}/matmul", z_lin, nk, 2, oracle2)
    i_w = open_vector(led, f"{name}/weight-opening", kappa + rho_out, weight,
                      wit.weight_blinds[w_rows] if prover else None,
                      None if prover else rows[("w", id(lc.weight_rows))][w_rows])
    a_point = rho_tok + kappa
    if x is not None:
        a_val = int_mle_eval(x, a_point)
        led.relate(f"{name}/matmul-final", final - Lin.var(i_w) * a_val)
        return []
    i_a = led.put(oracle2.a[0] if prover else None)
    i_p = led.put(oracle2.a[0] * oracle2.w[0] if prover else None)
    led.relate(f"{name}/matmul-final", final - Lin.var(i_p))
    led.product(f"{name}/matmul-product", i_a, i_w, i_p)
    return [*below, (a_point, Lin.var(i_a), 1 << nt)]
