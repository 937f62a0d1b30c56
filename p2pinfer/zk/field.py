"""Arithmetic in the scalar field of BLS12-381 and multilinear extensions over it.

Field elements are Python ints in [0, P). A table of 2**m values is read as a multilinear
polynomial in m variables, most significant index bit first: entry x = sum_k x_k 2**(m-k) is
the value at the boolean point (x_1, ..., x_m) (Thaler, "Proofs, Arguments and Zero-Knowledge",
section 3.5). Binding the first variable to r maps T to T[:h] + r (T[h:] - T[:h]).

Products of an integer matrix with a vector of field elements are done exactly in float64 on
16-bit limbs of the field elements (each partial sum stays below 2**53), then recombined.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np

P = 0x73EDA753299D7D483339D80809A1D80553BDA402FFFE5BFEFFFFFFFF00000001
"""Order of the BLS12-381 groups (the scalar field modulus)."""

_LIMB_BITS = 16
_LIMBS = 16  # 16 limbs of 16 bits cover 255-bit field elements
_EXACT = 1 << 53


def inv(a: int) -> int:
    return pow(a, P - 2, P)


def eq_table(point: Sequence[int]) -> list[int]:
    """All 2**m values of eq(point, x) for boolean x, index MSB-first."""
    table = [1]
    for p in point:
        high = [t * p % P for t in table]
        out = [0] * (2 * len(table))
        out[1::2] = high
        out[0::2] = [t - h if t >= h else t - h + P for t, h in zip(table, high)]
        table = out
    return table


def eq_eval(a: Sequence[int], b: Sequence[int]) -> int:
    """eq(a, b) = prod_k (a_k b_k + (1 - a_k)(1 - b_k))."""
    acc = 1
    for x, y in zip(a, b, strict=True):
        acc = acc * ((2 * x * y - x - y + 1) % P) % P
    return acc


def bind_first(table: list[int], r: int) -> list[int]:
    """Fix the first (most significant) variable of a multilinear table to r."""
    h = len(table) // 2
    return [(a + r * (b - a)) % P for a, b in zip(table[:h], table[h:])]


def dot(a: Sequence[int], b: Sequence[int]) -> int:
    return sum(x * y for x, y in zip(a, b, strict=True)) % P


def mle_eval(table: Sequence[int], point: Sequence[int]) -> int:
    """Value of the multilinear extension of `table` at `point`."""
    return dot(eq_table(point), table)


def poly_eval(coeffs: Sequence[int], x: int) -> int:
    acc = 0
    for c in reversed(coeffs):
        acc = (acc * x + c) % P
    return acc


def interpolate(evals: Sequence[int]) -> list[int]:
    """Coefficients (low degree first) of the polynomial taking evals[t] at t = 0, 1, ..."""
    basis = _lagrange_basis(len(evals))
    return [sum(b[k] * y for b, y in zip(basis, evals)) % P for k in range(len(evals))]


@lru_cache(maxsize=16)
def _lagrange_basis(n: int) -> tuple[tuple[int, ...], ...]:
    """Coefficient vectors of the Lagrange basis polynomials on the nodes 0..n-1."""
    out = []
    for i in range(n):
        basis = [1]
        denom = 1
        for j in range(n):
            if j == i:
                continue
            basis = [((basis[k - 1] if k > 0 else 0) - j * (basis[k] if k < len(basis) else 0)) % P
                     for k in range(len(basis) + 1)]
            denom = denom * (i - j) % P
        scale = inv(denom)
        out.append(tuple(b * scale % P for b in basis))
    return tuple(out)


def _limbs(vec: Sequence[int]) -> np.ndarray:
    """(len, 16) float64 array of the 16-bit limbs of field elements."""
    raw = b"".join(int(v).to_bytes(32, "little") for v in vec)
    limbs = np.frombuffer(raw, dtype="<u2").reshape(len(vec), _LIMBS)
    return limbs.astype(np.float64)


def field_limbs(vec: Sequence[int]) -> np.ndarray:
    """16-bit limbs of field elements, to reuse across several int_matvec calls."""
    return _limbs(vec)


def int_matvec(matrix: np.ndarray, vec: Sequence[int], limbs: np.ndarray | None = None) -> list[int]:
    """matrix @ vec mod P for an integer matrix (rows, cols) and field vector of length cols."""
    m = np.asarray(matrix)
    cols = m.shape[1]
    bound = int(np.abs(m).max(initial=0)) * ((1 << _LIMB_BITS) - 1) * cols
    if bound >= _EXACT:
        # Split the matrix itself into a high and a low half so each product stays exact.
        shift = (int(np.abs(m).max()).bit_length() + 1) // 2
        low = np.sign(m) * (np.abs(m) & ((1 << shift) - 1))
        high = m - low
        lo = int_matvec(low, vec, limbs)
        hi = int_matvec(high >> shift, vec, limbs)
        return [(a + (b << shift)) % P for a, b in zip(lo, hi)]
    lim = _limbs(vec) if limbs is None else limbs
    # einsum, not BLAS: exact all the same, and it does not stall when other processes hold
    # the cores (multithreaded BLAS on small products can be 100x slower then).
    partial = np.einsum("ij,jk->ik", m.astype(np.float64), lim).astype(np.int64)
    return _recombine(partial)


def recombine_limbs(partial: np.ndarray) -> list[int]:
    """Field elements from rows of (signed, exact) sums of 16-bit limbs."""
    return _recombine(partial)


def _recombine(partial: np.ndarray) -> list[int]:
    """Rows of signed 16-bit-limb sums -> field elements, carrying limbs in numpy."""
    rows = partial.shape[0]
    limbs = np.zeros((rows, _LIMBS + 4), dtype=np.int64)
    limbs[:, :_LIMBS] = partial
    for k in range(_LIMBS + 3):
        carry = limbs[:, k] >> _LIMB_BITS  # floor, also for negative sums
        limbs[:, k] &= 0xFFFF
        limbs[:, k + 1] += carry
    top = limbs[:, _LIMBS + 3].tolist()  # may be negative: the sign of the whole sum
    limbs[:, _LIMBS + 3] = 0
    raw = limbs.astype("<u2").tobytes()
    width = 2 * (_LIMBS + 4)
    shift = _LIMB_BITS * (_LIMBS + 3)
    return [
        (int.from_bytes(raw[r * width:(r + 1) * width], "little") + (top[r] << shift)) % P
        for r in range(rows)
    ]


def int_vecmat(vec: Sequence[int], matrix: np.ndarray,
               limbs: np.ndarray | None = None) -> list[int]:
    """vec @ matrix mod P for a field vector of length rows and an integer matrix."""
    return int_matvec(np.asarray(matrix).T, vec, limbs)


def int_mle_eval(values: np.ndarray, point: Sequence[int]) -> int:
    """MLE of an integer tensor (flattened, length 2**len(point)) at a field point."""
    flat = np.asarray(values).reshape(-1)
    m = len(point)
    if flat.size != 1 << m:
        raise ValueError("table size does not match the point")
    split = m // 2
    mat = flat.reshape(1 << split, 1 << (m - split))
    inner = int_matvec(mat, eq_table(point[split:]))
    return dot(eq_table(point[:split]), inner)
