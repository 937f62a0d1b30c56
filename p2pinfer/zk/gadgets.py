"""Building blocks shared by the layer arguments of a shard proof (proof.py, attention_proof.py).

Every function here is written once for both sides: `led` is a ProverLedger or a
VerifierLedger, and prover-only inputs (witness tables) are None on the verifier. Pieces:

* sum-check oracles: `TripleOracle`, `ProductOracle`, `TableOracle` and the general
  `ProductSum` (round messages of sums of products of multilinear tables);
* committed tables: `Committed` (small integers or field elements, Hyrax rows, openings at eq
  points) and `BitTable` (0/1 tables of 32 columns with their booleanity sum-check);
* `bits_head`: a rescale floor(z / 2**f), optionally with ReLU, proven by the 32-bit
  decomposition of z (zkDL section 4), ending in a claim on z;
* `matmul_tail`: z = a W + b by Thaler's linear-time sum-check, W and b opened against the
  manifest's row commitments, ending in a claim on a.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .booleanity import BooleanityProver
from .errors import RelationError
from .field import (
    P,
    bind_first,
    dot,
    eq_eval,
    eq_table,
    int_matvec,
    int_mle_eval,
    int_vecmat,
    inv,
)
from .ledger import Lin, sumcheck
from .shard import BITS, LayerCommitment, _layer_matrix, hyrax_split, part_rows, weight_parts

Claim = tuple[list[int], Lin, int]
"""(point, claimed value, live tokens): sum over live tokens of eq(point, i) out_i = value."""
INV32 = inv(BITS)
SIGN_BIT = [0] * (BITS - 1) + [1]
POWERS = [1 << j for j in range(BITS)]


def triple_sums(e: list[int], s: list[int], m: list[int]) -> tuple[int, int, int]:
    """sum over the half-tables of e_t s_t m_t for t = 0, 2, 3."""
    h = len(e) // 2
    a0 = a2 = a3 = 0
    for e0, e1, s0, s1, m0, m1 in zip(e[:h], e[h:], s[:h], s[h:], m[:h], m[h:]):
        de, ds, dm = e1 - e0, s1 - s0, m1 - m0
        e2, s2, m2 = e1 + de, s1 + ds, m1 + dm
        a0 += e0 * s0 % P * m0
        a2 += e2 * s2 % P * m2
        a3 += (e2 + de) * (s2 + ds) % P * (m2 + dm)
    return a0 % P, a2 % P, a3 % P


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
        h = len(self.a) // 2
        a, w = self.a, self.w
        g0 = sum(x * y for x, y in zip(a[:h], w[:h])) % P
        g2 = sum((2 * x1 - x0) * (2 * y1 - y0)
                 for x0, x1, y0, y1 in zip(a[:h], a[h:], w[:h], w[h:])) % P
        return [g0, (claim - g0) % P, g2]

    def bind(self, r: int) -> None:
        self.a = bind_first(self.a, r)
        self.w = bind_first(self.w, r)


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
            e1 = [(u + w * v) % P for u, v in zip(e1, masked_eq(p, live, nt))]
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


def matmul_tail(led, lc: LayerCommitment, nt: int, nk: int, rho: list[int], z_lin: Lin,
                below: list[Claim], x: np.ndarray | None, wit: Witness | None, name: str,
                rows: dict | None, part: int = 0) -> list[Claim]:
    """4. z~(rho) = b~(rho_out) + sum_k a~(rho_tok, k) W~(k, rho_out): the claim on a~ (or the
    check against the public x) goes to the layer below. `part` picks one separately committed
    part of the weight (the q, k or v projection of an attention layer; shard.weight_parts)."""
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


def act_split(ni: int, nt: int) -> tuple[int, int]:
    """Hyrax (row, column) variables of an activation table: every token variable is a row
    variable, so a token mask is a mask on row weights."""
    cols = min((ni + 1) // 2, ni - nt)
    return ni - cols, cols


def field_vecmat(w: Sequence[int], rows: Sequence[Sequence[int]]) -> list[int]:
    out = [0] * len(rows[0])
    for wr, row in zip(w, rows):
        if wr:
            out = [(o + wr * v) % P for o, v in zip(out, row)]
    return out


def batch_inv(values: list[int]) -> list[int]:
    """Inverses of nonzero field elements with one exponentiation (Montgomery's trick)."""
    prefix, acc = [], 1
    for v in values:
        prefix.append(acc)
        acc = acc * v % P
    inv_acc = inv(acc)
    out = [0] * len(values)
    for k in range(len(values) - 1, -1, -1):
        out[k] = inv_acc * prefix[k] % P
        inv_acc = inv_acc * values[k] % P
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


class TableOracle:
    """Round messages of sum_t e(t) (g(t) T(t) - m(t)) (degree 3)."""

    def __init__(self, e: list[int], g: list[int], t: list[int], m: list[int]) -> None:
        self.e, self.g, self.t, self.m = e, g, t, m

    def evals(self, claim: int) -> list[int]:
        h = len(self.e) // 2
        acc = [0, 0, 0]
        for k in range(h):
            e0, e1 = self.e[k], self.e[k + h]
            g0, g1 = self.g[k], self.g[k + h]
            t0, t1 = self.t[k], self.t[k + h]
            m0, m1 = self.m[k], self.m[k + h]
            for slot, x in ((0, 0), (1, 2), (2, 3)):
                ex, gx = e0 + x * (e1 - e0), g0 + x * (g1 - g0)
                tx, mx = t0 + x * (t1 - t0), m0 + x * (m1 - m0)
                acc[slot] += ex * (gx * tx - mx)
        g0 = acc[0] % P
        return [g0, (claim - g0) % P, acc[1] % P, acc[2] % P]

    def bind(self, r: int) -> None:
        self.e = bind_first(self.e, r)
        self.g = bind_first(self.g, r)
        self.t = bind_first(self.t, r)
        self.m = bind_first(self.m, r)


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


def open_vector(led, check: str, point: list[int], values: np.ndarray | None,
                blinds: list[int] | None, pts: list | None) -> int:
    """Commit v = values~(point) and open it against Hyrax row commitments (`pts`, decoded,
    on the verifier; the values and row blindings on the prover)."""
    n = len(point)
    rows_n, _ = hyrax_split(n)
    row_w = eq_table(point[:rows_n])
    y = eq_table(point[rows_n:])
    if values is not None:
        mat = _layer_matrix(np.asarray(values).reshape(-1))
        u = int_vecmat(row_w, mat)
        idx = led.put(dot(u, y))
        led.prove_dot(u, dot(row_w, blinds), [y], [idx])
    else:
        idx = led.put()
        led.check_dot(check, pts, row_w, [y], [idx])
    return idx


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
        h = len(next(iter(self.tables.values()))) // 2
        xs = [0, *range(2, self.degree + 1)]
        at: dict[str, list[list[int]]] = {}  # at[name][slot]: the table's half at xs[slot]
        for name, t in self.tables.items():
            lo, hi = t[:h], t[h:]
            diff = [b - a for a, b in zip(lo, hi)]
            at[name] = [lo if x == 0 else [a + x * dv for a, dv in zip(lo, diff)] for x in xs]
        out = []
        for slot in range(len(xs)):
            total = 0
            for coef, names in self.terms:
                cols = [at[n][slot] for n in names]
                if len(cols) == 1:
                    s = sum(cols[0])
                elif len(cols) == 2:
                    s = sum(a * b for a, b in zip(*cols))
                elif len(cols) == 3:
                    s = sum(a * b % P * c for a, b, c in zip(*cols))
                else:
                    s = 0
                    for vals in zip(*cols):
                        acc = 1
                        for v in vals:
                            acc = acc * v % P
                        s += acc
                total += coef * (s % P)
            out.append(total % P)
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


def columns(offset: int, width: int, size: int = BITS) -> list[int]:
    """A column pattern of `size` entries: 2**(j - offset) for j in [offset, offset + width),
    0 elsewhere (the value of a bit field of a committed bit row)."""
    col = [0] * size
    col[offset:offset + width] = [1 << j for j in range(width)]
    return col


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

