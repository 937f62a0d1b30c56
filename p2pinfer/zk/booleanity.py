"""Prover side of the sum-check that a committed table holds only bits.

Claim: sum_x eq(r', x) B(x) (1 - B(x)) = 0 over x in {0,1}^nb, x = (i, j) with the 5 variables
of j (bit position) last. Round k sends g_k(t) = C_k eq1(r'_k, t) Q_k(t) where C_k is the eq
factor of the bound variables and Q_k(t) = sum_y eq(r'_{>k}, y) h(B(r_{<k}, t, y)), h(b) = b(1-b)
(the eq factor is split off as in Gruen, "Some improvements for the PIOP for ZeroCheck", 2024).

In the first three rounds B still depends on 2, 4 or 8 raw bits per entry, so h takes at most
256 distinct values: Q is sum_c h_t(c) W(c), where W(c) adds the eq weights of the entries with bit
pattern c. Since eq(r'_{>k}, (i, j)) = eq_I(i) eq_J(j), W(c) is an integer-matrix-times-field-
vector product (exact in float64 limb sums, numpy bincount) followed by 32 multiplications: the
three largest rounds cost O(entries / 32) field operations instead of O(entries).
"""

from __future__ import annotations

import numpy as np

from .field import (
    NATIVE,
    P,
    bind_first_packed,
    bool_round,
    dot,
    eq_table,
    eq_table_packed,
    field_limbs,
    half_sum_packed,
    inv,
    pack,
    recombine_limbs,
)

_J = 5  # variables of the bit position
_INV2 = (P + 1) // 2
_PATTERN_ROUNDS = 3  # 2**(2**3) = 256 patterns of raw bits in the third round


def _eq1(a: int, t: int) -> int:
    return (a * t + (1 - a) * (1 - t)) % P


class BooleanityProver:
    def __init__(self, bits: np.ndarray, r_bool: list[int], ni: int,
                 patterns: bool | None = None) -> None:
        self.r = r_bool
        self.nb = len(r_bool)
        self.ni = ni
        self.k = 0
        self.prefix = 1
        self.claim = 0  # running claim of this term alone
        self.q = (0, 0, 0)
        self.bound: list[int] = []
        self.bits = np.asarray(bits, dtype=np.int64).reshape(-1)
        # Pattern rounds pay numpy overhead per bit pattern: worth it on large tables only.
        # Pattern rounds cost about 32 field operations per bit pattern (4, 16, 256 of them)
        # against about 4 per entry pair in a direct round: worth it on large tables only.
        if patterns is None:
            self.levels = 3 if self.nb >= 15 else 2 if self.nb >= 10 else 0
        else:
            self.levels = _PATTERN_ROUNDS if patterns else 0
        if ni < self.levels:
            self.levels = 0
        # the direct rounds' tables, packed between kernels (field.pack)
        self.b: bytes | list[int] | None = None
        self.t: bytes | list[int] | None = None
        if not self.levels:
            self.b = pack(self.bits.tolist())
            self.t = eq_table_packed(self.r[1:])

    # -- messages -----------------------------------------------------------------------------
    def evals(self) -> tuple[int, int, int]:
        """g_k(0), g_k(2), g_k(3) of the booleanity term.

        Q_k has degree 2 and g_k(0) + g_k(1) equals the running claim, so Q_k(0) and Q_k(2)
        fix Q_k(1) and hence everything else.
        """
        rk = self.r[self.k]
        if self.b is None:
            q0, q2 = self._by_patterns(self.k + 1)
        else:
            q0, q2 = self._direct()
        # claim = C ((1 - r'_k) Q(0) + r'_k Q(1))
        if self.prefix == 0 or rk == 0:
            raise ArithmeticError("degenerate challenge")  # probability ~2**-250
        q1 = (self.claim * inv(self.prefix) - (1 - rk) * q0) % P * inv(rk) % P
        q3 = (q0 - 3 * q1 + 3 * q2) % P
        self.q = (q0, q1, q2)
        return tuple(self.prefix * _eq1(rk, t) % P * qt % P for t, qt in zip((0, 2, 3),
                                                                           (q0, q2, q3)))

    def _direct(self) -> tuple[int, int]:
        return bool_round(self.b, self.t)

    def _patterns(self, level: int) -> np.ndarray:
        """Code of the 2**level raw bits behind each entry of the level-bound table."""
        view = self.bits.reshape(1 << level, -1)
        code = np.zeros(view.shape[1], dtype=np.int64)
        for x in range(1 << level):
            code = (code << 1) | view[x]
        return code

    def _pattern_value(self, code: int, level: int, eq_bound: list[int], t: int | None) -> int:
        """B for an entry whose raw bits are `code`, at the bound challenges (eq_bound is their
        eq table) and, if t is given, t for the current variable."""
        n = 1 << level
        if t is None:
            return sum(w for x, w in enumerate(eq_bound) if (code >> (n - 1 - x)) & 1) % P
        b0 = b1 = 0
        for xp, w in enumerate(eq_bound):
            if (code >> (n - 1 - 2 * xp)) & 1:
                b0 += w
            if (code >> (n - 2 - 2 * xp)) & 1:
                b1 += w
        return (b0 + t * (b1 - b0)) % P

    def _by_patterns(self, level: int) -> tuple[int, int]:
        codes = self._patterns(level).reshape(-1, 1 << _J)  # rows: i after `level` vars
        eq_i = eq_table(self.r[level:self.ni])
        eq_j = eq_table(self.r[self.ni:])
        present, weights = _pattern_weights(codes, eq_i, eq_j, 1 << (1 << level))
        eq_bound = eq_table(self.bound[: level - 1])
        q = [0, 0]
        for c, weight in zip(present, weights):
            hs = []
            for t in (0, 2):
                b = self._pattern_value(c, level, eq_bound, t)
                hs.append(b * (1 - b) % P)
            if not any(hs):
                continue
            q[0] += hs[0] * weight
            q[1] += hs[1] * weight
        return q[0] % P, q[1] % P

    # -- binding ------------------------------------------------------------------------------
    def bind(self, r: int) -> None:
        q0, q1, q2 = self.q
        q_r = (q0 * (r - 1) * (r - 2) * _INV2 - q1 * r * (r - 2) + q2 * r * (r - 1) * _INV2) % P
        self.claim = self.prefix * _eq1(self.r[self.k], r) % P * q_r % P
        self.prefix = self.prefix * _eq1(self.r[self.k], r) % P
        self.bound.append(r)
        self.k += 1
        if self.b is not None:
            self.b = bind_first_packed(self.b, r)
            self.t = half_sum_packed(self.t)
        elif self.k == self.levels:
            codes = self._patterns(self.k)
            eq_bound = eq_table(self.bound)
            values = {c: self._pattern_value(c, self.k, eq_bound, None)
                      for c in np.unique(codes).tolist()}
            self.b = pack([values[c] for c in codes.tolist()])
            self.t = eq_table_packed(self.r[self.k + 1:])



def _pattern_weights(codes: np.ndarray, eq_i: list[int], eq_j: list[int],
                     ncodes: int) -> tuple[list[int], list[int]]:
    """The codes present in `codes` (rows i, columns j) and for each its weight
    W(c) = sum_{i, j} eq_i[i] eq_j[j] [codes[i, j] == c]."""
    present = np.flatnonzero(np.bincount(codes.reshape(-1), minlength=ncodes)).tolist()
    if NATIVE is not None and ncodes <= 256:
        weights = NATIVE.pattern_weights(eq_i, codes.astype(np.uint8).tobytes(), eq_j, ncodes)
        return present, [weights[c] for c in present]
    # weight[c, j] = sum_i eq_i[i] [codes[i, j] == c], limb by limb with bincount (exact:
    # each sum of 16-bit limbs stays far below 2**53).
    slot = (codes * (1 << _J) + np.arange(1 << _J)).reshape(-1)
    lim = field_limbs(eq_i)  # (rows, 16)
    sums = np.empty((ncodes << _J, lim.shape[1]), dtype=np.int64)
    for k in range(lim.shape[1]):
        w = np.repeat(lim[:, k], 1 << _J)
        sums[:, k] = np.bincount(slot, weights=w, minlength=ncodes << _J).astype(np.int64)
    rows = np.concatenate([np.arange(c << _J, (c + 1) << _J) for c in present])
    flat = recombine_limbs(sums[rows])
    return present, [dot(flat[n << _J:(n + 1) << _J], eq_j) for n in range(len(present))]
