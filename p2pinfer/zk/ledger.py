"""Committed values and the zero-knowledge arguments about them (Hyrax, Wahby et al. 2018).

Every private scalar of a proof (sum-check round coefficients, evaluations of witnesses) is sent
only as a Pedersen commitment C = v g + s h. The verifier accumulates three kinds of claims:

* linear relations sum_i c_i v_i + c_0 = 0, batched per named group with powers of a challenge
  gamma; the prover reveals tau = sum_i c_i s_i of the batch and the verifier checks
  sum_i c_i C_i + c_0 g - tau h = 0 (one MSM per group);
* products v_c = v_a v_b, by the proof-of-product sigma protocol (Hyrax section 4, fig. 5);
* openings <u, y_k> = v_k of a Hyrax matrix commitment (rows committed one by one, u the
  eq-weighted combination of rows) by the proof-of-dot-product sigma protocol (Hyrax fig. 6;
  paper Algorithm 1): the prover sends z = c u + d for a random mask d, never u itself.

`ProverLedger` and `VerifierLedger` have the same shape so the sum-check driver is written once.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from py_arkworks_bls12381 import G1Point

from .errors import (
    OpeningError,
    ProductError,
    ProofError,
    RelationError,
    ShapeMismatch,
)
from .field import P, dot, interpolate
from .group import (
    PedersenParams,
    decode_point,
    encode_point,
    msm,
    random_scalar,
    scalar,
)
from .transcript import Transcript


class Lin:
    """A linear form sum_i coef_i * value[i] + const over committed values (by index)."""

    __slots__ = ("const", "terms")

    def __init__(self, terms: dict[int, int] | None = None, const: int = 0) -> None:
        self.terms = terms or {}
        self.const = const % P

    @staticmethod
    def var(i: int) -> Lin:
        return Lin({i: 1})

    def __add__(self, other: Lin | int) -> Lin:
        if isinstance(other, int):
            return Lin(dict(self.terms), self.const + other)
        terms = dict(self.terms)
        for k, v in other.terms.items():
            terms[k] = (terms.get(k, 0) + v) % P
        return Lin(terms, self.const + other.const)

    def __sub__(self, other: Lin | int) -> Lin:
        return self + (other * (P - 1) if isinstance(other, Lin) else -other)

    def __mul__(self, k: int) -> Lin:
        return Lin({i: v * k % P for i, v in self.terms.items()}, self.const * k)

    __rmul__ = __mul__


@dataclass
class ProductProof:
    alpha: bytes
    beta: bytes
    delta: bytes
    z: list[int]  # z1..z5


@dataclass
class DotProof:
    delta: bytes
    betas: list[bytes]
    z: list[int]
    z_delta: int
    z_betas: list[int]


@dataclass
class LedgerRecord:
    """What a ledger puts in a proof, in transcript order."""

    commits: list[bytes] = field(default_factory=list)
    matrices: list[list[bytes]] = field(default_factory=list)
    products: list[ProductProof] = field(default_factory=list)
    dots: list[DotProof] = field(default_factory=list)
    taus: list[int] = field(default_factory=list)


class ProverLedger:
    def __init__(self, params: PedersenParams, transcript: Transcript) -> None:
        self.params = params
        self.t = transcript
        self.record = LedgerRecord()
        self.values: list[int] = []
        self.blinds: list[int] = []
        self._groups: dict[str, list[Lin]] = {}

    # -- committed scalars ------------------------------------------------------------------
    def put(self, value: int | None) -> int:
        assert value is not None
        value %= P
        s = random_scalar()
        enc = encode_point(self.params.commit(value, s))
        self.t.absorb(b"commit", enc)
        self.record.commits.append(enc)
        self.values.append(value)
        self.blinds.append(s)
        return len(self.values) - 1

    def value(self, lin: Lin) -> int:
        return (sum(c * self.values[i] for i, c in lin.terms.items()) + lin.const) % P

    def relate(self, group: str, lin: Lin) -> None:
        """Claim lin == 0 (a false claim here means the witness is wrong: the proof will fail)."""
        self._groups.setdefault(group, []).append(lin)

    def challenge(self, label: bytes) -> int:
        return self.t.challenge(label)

    # -- committed matrices -------------------------------------------------------------------
    def put_bit_matrix(self, rows: np.ndarray) -> list[int]:
        """Commit rows of a 0/1 matrix; returns the row blindings."""
        blinds = [random_scalar() for _ in range(len(rows))]
        encs = [encode_point(c) for c in self.params.commit_bit_rows(rows, blinds)]
        for e in encs:
            self.t.absorb(b"matrix-row", e)
        self.record.matrices.append(encs)
        return blinds

    def put_int_matrix(self, rows: np.ndarray, bits: int) -> list[int]:
        """Commit rows of a small-integer matrix (|v| < 2**bits, a public bound, so the time
        taken depends on it, not on the values); returns the row blindings."""
        blinds = [random_scalar() for _ in range(len(rows))]
        return self._put_rows([self.params.commit_small_ints(r, b, bits)
                               for r, b in zip(rows, blinds)], blinds)

    def put_field_matrix(self, rows: Sequence[Sequence[int]]) -> list[int]:
        """Commit rows of a matrix of field elements; returns the row blindings."""
        blinds = [random_scalar() for _ in range(len(rows))]
        return self._put_rows([self.params.commit_vec(r, b) for r, b in zip(rows, blinds)],
                              blinds)

    def _put_rows(self, points: list[G1Point], blinds: list[int]) -> list[int]:
        encs = [encode_point(c) for c in points]
        for e in encs:
            self.t.absorb(b"matrix-row", e)
        self.record.matrices.append(encs)
        return blinds

    def next_matrix(self) -> list[G1Point]:
        raise NotImplementedError  # verifier-only

    # -- products ------------------------------------------------------------------------------
    def product(self, check: str, a: int, b: int, c: int) -> None:
        """v_c = v_a v_b: proven here, checked (as `check`) by the verifier's `product`."""
        self.prove_product(a, b, c)

    def prove_product(self, a: int, b: int, c: int) -> None:
        """Committed values a, b, c (indices) with v_c = v_a v_b."""
        pp = self.params
        va, vb = self.values[a], self.values[b]
        sa, sb, sc = self.blinds[a], self.blinds[b], self.blinds[c]
        assert va * vb % P == self.values[c]
        b1, b2, b3, b4, b5 = (random_scalar() for _ in range(5))
        cb = pp.commit(vb, sb)
        alpha = encode_point(pp.commit(b1, b2))
        beta = encode_point(pp.commit(b3, b4))
        delta = encode_point(cb * scalar(b1) + pp.blind_only(b5))
        for x in (alpha, beta, delta):
            self.t.absorb(b"product", x)
        ch = self.t.challenge(b"product")
        z = [
            (b1 + ch * va) % P,
            (b2 + ch * sa) % P,
            (b3 + ch * vb) % P,
            (b4 + ch * sb) % P,
            (b5 + ch * (sc - sb * va)) % P,
        ]
        self.record.products.append(ProductProof(alpha, beta, delta, z))

    # -- openings ------------------------------------------------------------------------------
    def prove_dot(
        self,
        u: Sequence[int],
        blind_u: int,
        ys: Sequence[Sequence[int]],
        results: Sequence[int],
    ) -> None:
        """Prove <u, ys[k]> = v_results[k] where u is committed (implicitly) with blind_u."""
        pp = self.params
        d = [random_scalar() for _ in u]
        r_delta = random_scalar()
        r_betas = [random_scalar() for _ in ys]
        delta = encode_point(pp.commit_vec(d, r_delta))
        betas = [encode_point(pp.commit(dot(d, y), rb)) for y, rb in zip(ys, r_betas)]
        self.t.absorb(b"dot", delta)
        for b in betas:
            self.t.absorb(b"dot", b)
        ch = self.t.challenge(b"dot")
        z = [(ch * ui + di) % P for ui, di in zip(u, d)]
        z_delta = (ch * blind_u + r_delta) % P
        z_betas = [(ch * self.blinds[k] + rb) % P for k, rb in zip(results, r_betas)]
        self.record.dots.append(DotProof(delta, betas, z, z_delta, z_betas))

    # -- end -----------------------------------------------------------------------------------
    def finish(self) -> LedgerRecord:
        for name, lins in self._groups.items():
            gamma = self.t.challenge(b"relations/" + name.encode())
            tau, w = 0, 1
            for lin in lins:
                for i, c in lin.terms.items():
                    tau += w * c * self.blinds[i]
                w = w * gamma % P
            self.record.taus.append(tau % P)
        return self.record


class VerifierLedger:
    def __init__(
        self, params: PedersenParams, transcript: Transcript, record: LedgerRecord
    ) -> None:
        self.params = params
        self.t = transcript
        self.record = record
        self.points: list[G1Point] = []
        self._groups: dict[str, list[Lin]] = {}
        self._products = 0
        self._dots = 0
        self._matrices = 0
        # Group equations sum coeffs * points == 0, checked together at the end.
        self._equations: list[tuple[type[ProofError], str, list[G1Point], list[int]]] = []

    def _defer(self, kind: type[ProofError], check: str, pts: list[G1Point],
               coeffs: list[int]) -> None:
        self._equations.append((kind, check, pts, coeffs))

    def _check_all(self) -> None:
        """One random linear combination of every deferred equation; on failure, find it."""
        merged: dict[int, list] = {}
        for _, _, p, c in self._equations:
            w = secrets.randbits(128) | 1
            for pt, x in zip(p, c):
                slot = merged.get(id(pt))
                if slot is None:
                    merged[id(pt)] = [pt, w * x]
                else:
                    slot[1] += w * x
        if msm([s[0] for s in merged.values()], [s[1] % P for s in merged.values()]) == _ID:
            return
        for kind, check, p, c in self._equations:
            if msm(p, c) != _ID:
                raise kind(check)
        raise RelationError("batch", "combined check failed")

    def put(self, value: int | None = None) -> int:
        i = len(self.points)
        if i >= len(self.record.commits):
            raise ShapeMismatch("commitments", "the proof has too few committed values")
        enc = self.record.commits[i]
        self.points.append(decode_point(enc))
        self.t.absorb(b"commit", enc)
        return i

    def relate(self, group: str, lin: Lin) -> None:
        self._groups.setdefault(group, []).append(lin)

    def challenge(self, label: bytes) -> int:
        return self.t.challenge(label)

    def next_matrix(self, rows: int) -> list[G1Point]:
        if self._matrices >= len(self.record.matrices):
            raise ShapeMismatch("bit-matrices", "the proof has too few committed matrices")
        encs = self.record.matrices[self._matrices]
        self._matrices += 1
        if len(encs) != rows:
            raise ShapeMismatch("bit-matrices", "a committed matrix has the wrong row count")
        pts = [decode_point(e) for e in encs]
        for e in encs:
            self.t.absorb(b"matrix-row", e)
        return pts

    def product(self, check: str, a: int, b: int, c: int) -> None:
        """The next product proof shows v_c = v_a v_b (see the prover's `product`)."""
        self.check_product(check, a, b, c)

    def check_product(self, check: str, a: int, b: int, c: int) -> None:
        if self._products >= len(self.record.products):
            raise ShapeMismatch("products", "the proof has too few product proofs")
        pr = self.record.products[self._products]
        self._products += 1
        pp = self.params
        alpha, beta, delta = (decode_point(x) for x in (pr.alpha, pr.beta, pr.delta))
        for x in (pr.alpha, pr.beta, pr.delta):
            self.t.absorb(b"product", x)
        ch = self.t.challenge(b"product")
        z1, z2, z3, z4, z5 = pr.z
        ca, cb, cc = self.points[a], self.points[b], self.points[c]
        self._defer(ProductError, check, [alpha, ca, pp.g, pp.h], [1, ch, P - z1, P - z2])
        self._defer(ProductError, check, [beta, cb, pp.g, pp.h], [1, ch, P - z3, P - z4])
        self._defer(ProductError, check, [delta, cc, cb, pp.h], [1, ch, P - z1, P - z5])

    def check_dot(
        self,
        check: str,
        rows: Sequence[G1Point],
        row_weights: Sequence[int],
        ys: Sequence[Sequence[int]],
        results: Sequence[int],
    ) -> None:
        if self._dots >= len(self.record.dots):
            raise ShapeMismatch("openings", "the proof has too few openings")
        dp = self.record.dots[self._dots]
        self._dots += 1
        pp = self.params
        ncols = len(ys[0])
        if len(dp.z) != ncols or len(dp.betas) != len(ys) or len(dp.z_betas) != len(ys):
            raise ShapeMismatch(check, "an opening has the wrong length")
        if ncols > pp.size:
            raise ShapeMismatch(check, "an opening is longer than the commitment key")
        delta = decode_point(dp.delta)
        betas = [decode_point(b) for b in dp.betas]
        self.t.absorb(b"dot", dp.delta)
        for b in dp.betas:
            self.t.absorb(b"dot", b)
        ch = self.t.challenge(b"dot")
        # c * T + delta == Com_vec(z; z_delta), with T = sum_r w_r rows_r.
        pts = list(rows) + list(pp.g_vec[:ncols]) + [pp.h, delta]
        coeffs = [ch * w % P for w in row_weights] + [P - zi for zi in dp.z] + [P - dp.z_delta, 1]
        self._defer(OpeningError, check, pts, coeffs)
        for y, k, beta, zb in zip(ys, results, betas, dp.z_betas):
            self._defer(OpeningError, check, [self.points[k], beta, pp.g, pp.h],
                        [ch, 1, P - dot(dp.z, y), P - zb])

    def finish(self) -> None:
        if len(self.record.taus) != len(self._groups):
            raise ShapeMismatch("relations", "wrong number of relation batches")
        if (
            self._products != len(self.record.products)
            or self._dots != len(self.record.dots)
            or self._matrices != len(self.record.matrices)
            or len(self.points) != len(self.record.commits)
        ):
            raise ShapeMismatch("proof-shape", "the proof carries unused parts")
        pp = self.params
        for (name, lins), tau in zip(self._groups.items(), self.record.taus):
            gamma = self.t.challenge(b"relations/" + name.encode())
            coeffs: dict[int, int] = {}
            const, w = 0, 1
            for lin in lins:
                for i, c in lin.terms.items():
                    coeffs[i] = (coeffs.get(i, 0) + w * c) % P
                const += w * lin.const
                w = w * gamma % P
            idx = list(coeffs)
            pts = [self.points[i] for i in idx] + [pp.g, pp.h]
            self._defer(RelationError, name, pts, [coeffs[i] for i in idx] + [const % P, P - tau])
        self._check_all()


_ID = G1Point.identity()


def sumcheck(
    ledger: ProverLedger | VerifierLedger,
    group: str,
    claim: Lin,
    num_vars: int,
    degree: int,
    oracle: object | None = None,
) -> tuple[list[int], Lin]:
    """Sum-check with committed round polynomials; returns (challenge point, final claim).

    `oracle` (prover only) has `evals(claim_value) -> [g(0..degree)]` and `bind(r)`. Each round
    commits the coefficients c_1..c_d of g_i; c_0 is not sent but fixed by the running claim,
    c_0 = (claim - c_1 - ... - c_d) / 2, so g_i(0) + g_i(1) = claim holds by construction and the
    new claim g_i(r_i) is a linear form in the commitments (checked at the end of the layer).
    """
    point: list[int] = []
    for rnd in range(num_vars):
        if oracle is not None:
            coeffs = interpolate(oracle.evals(ledger.value(claim)))  # type: ignore[attr-defined]
            idx = [ledger.put(c) for c in coeffs[1:]]
        else:
            idx = [ledger.put() for _ in range(degree)]  # type: ignore[call-arg]
        c0 = (claim - Lin({i: 1 for i in idx})) * _INV2
        r = ledger.challenge(b"sumcheck/" + group.encode() + b"/%d" % rnd)
        if oracle is not None:
            oracle.bind(r)  # type: ignore[attr-defined]
        terms, rk = {}, 1
        for i in idx:
            rk = rk * r % P
            terms[i] = rk
        claim = c0 + Lin(terms)
        point.append(r)
    return point, claim


_INV2 = (P + 1) // 2


__all__ = [
    "DotProof",
    "LedgerRecord",
    "Lin",
    "ProductProof",
    "ProverLedger",
    "VerifierLedger",
    "sumcheck",
]
