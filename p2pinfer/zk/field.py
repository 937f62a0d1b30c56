"""Arithmetic in the scalar field of BLS12-381 and multilinear extensions over it.

Field elements are Python ints in [0, P). A table of 2**m values is read as a multilinear
polynomial in m variables, most significant index bit first: entry x = sum_k x_k 2**(m-k) is
the value at the boolean point (x_1, ..., x_m) (Thaler, "Proofs, Arguments and Zero-Knowledge",
section 3.5). Binding the first variable to r maps T to T[:h] + r (T[h:] - T[:h]).

Products of an integer matrix with a vector of field elements are done exactly in float64 on
16-bit limbs of the field elements (each partial sum stays below 2**53), then recombined.

The loops over whole tables (eq tables, binding, dot products, multilinear evaluation, the
sum-check round sums) run in the compiled module `_native` (built with the package) when it is
there. The pure-Python functions below stay the reference and the specification (`reference`
names them); P2PINFER_ZK_REFERENCE=1 in the environment selects them for the whole process.
Both give identical results (canonical ints in [0, P)). A table that goes from kernel to kernel
(the booleanity prover's) can stay packed between them: `pack`, the *_packed functions and
`unpack` (bytes on the native side, plain lists on the reference), which every kernel accepts. P2PINFER_ZK_WORKERS sets the threads a
large native kernel uses (default: the CPUs this process may run on, at most 16); results do
not depend on it.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from functools import lru_cache
from types import SimpleNamespace

import numpy as np

P = 0x73EDA753299D7D483339D80809A1D80553BDA402FFFE5BFEFFFFFFFF00000001
"""Order of the BLS12-381 groups (the scalar field modulus)."""

_LIMB_BITS = 16
_LIMBS = 16  # 16 limbs of 16 bits cover 255-bit field elements
_EXACT = 1 << 53


def inv(a: int) -> int:
    return pow(a, P - 2, P)


def _py_eq_table(point: Sequence[int]) -> list[int]:
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


def _py_bind_first(table: list[int], r: int) -> list[int]:
    """Fix the first (most significant) variable of a multilinear table to r."""
    h = len(table) // 2
    return [(a + r * (b - a)) % P for a, b in zip(table[:h], table[h:])]


def _py_dot(a: Sequence[int], b: Sequence[int]) -> int:
    return sum(x * y for x, y in zip(a, b, strict=True)) % P


def _py_mle_eval(table: Sequence[int], point: Sequence[int]) -> int:
    """Value of the multilinear extension of `table` at `point`."""
    return _py_dot(_py_eq_table(point), table)


def _py_half_sum(table: Sequence[int]) -> list[int]:
    """t[:h] + t[h:] entrywise (an eq table with its first variable summed out)."""
    h = len(table) // 2
    return [(a + c) % P for a, c in zip(table[:h], table[h:])]


def _py_axpy(y: Sequence[int], a: int, x: Sequence[int]) -> list[int]:
    """y + a x entrywise."""
    return [(u + a * v) % P for u, v in zip(y, x)]


def _py_batch_inv(values: Sequence[int]) -> list[int]:
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


def _py_bool_round(bits: Sequence[int], weights: Sequence[int]) -> tuple[int, int]:
    """(sum_i w_i h(b_i), sum_i w_i h(2 b_{h+i} - b_i)) with h(b) = b (1 - b), over the halves of
    `bits`: a booleanity round at t = 0 and t = 2."""
    h = len(bits) // 2
    q0 = q2 = 0
    for w, b0, b1 in zip(weights, bits[:h], bits[h:]):
        b2 = 2 * b1 - b0
        q0 += w * (b0 * (1 - b0) % P)
        q2 += w * (b2 * (1 - b2) % P)
    return q0 % P, q2 % P


def _py_product_sum(tables: Sequence[Sequence[int]], terms: Sequence[tuple[int, Sequence[int]]],
                    degree: int) -> list[int]:
    """Round sums of sum_x sum_k c_k prod_{m in term k} T_m(x) with the first variable at
    0, 2, 3, ..., degree: each table is lo + x (hi - lo) over its halves. Terms are
    (coefficient, [table index, ...])."""
    h = len(tables[0]) // 2
    xs = [0, *range(2, degree + 1)]
    at = []
    for t in tables:
        lo, hi = t[:h], t[h:]
        diff = [b - a for a, b in zip(lo, hi)]
        at.append([lo if x == 0 else [a + x * dv for a, dv in zip(lo, diff)] for x in xs])
    out = []
    for slot in range(len(xs)):
        total = 0
        for coef, idx in terms:
            cols = [at[i][slot] for i in idx]
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
    return out


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


# -- backend selection ----------------------------------------------------------------------

reference = SimpleNamespace(
    eq_table=_py_eq_table, bind_first=_py_bind_first, dot=_py_dot, mle_eval=_py_mle_eval,
    half_sum=_py_half_sum, bool_round=_py_bool_round, product_sum=_py_product_sum,
    axpy=_py_axpy, batch_inv=_py_batch_inv,
)
"""The pure-Python kernels, whatever the backend."""


def _load_native():
    if os.environ.get("P2PINFER_ZK_REFERENCE", "") not in ("", "0"):
        return None
    try:
        from . import _native
    except ImportError:
        warnings.warn("p2pinfer.zk: the native field kernels are not built (reinstall the "
                      "package with pip); proving runs on the slow pure-Python reference",
                      RuntimeWarning, stacklevel=2)
        return None
    return _native


_native = _load_native()
NATIVE = _native
"""The compiled kernels' module (also G1 row sums for group.py), or None on the reference."""
BACKEND = "reference" if _native is None else "native"
"""Which kernels this process runs: "native" or "reference"."""

if _native is None:
    eq_table, bind_first, dot, mle_eval = _py_eq_table, _py_bind_first, _py_dot, _py_mle_eval
    half_sum, bool_round, product_sum = _py_half_sum, _py_bool_round, _py_product_sum
    axpy, batch_inv = _py_axpy, _py_batch_inv
    pack, unpack = list, list
    eq_table_packed, bind_first_packed, half_sum_packed = eq_table, bind_first, half_sum

    def set_workers(n: int) -> int:
        """Threads per large kernel (the reference has one); returns the previous count."""
        if not 1 <= n <= 16:
            raise ValueError("workers must be between 1 and 16")
        return 1
else:
    eq_table, bind_first, dot = _native.eq_table, _native.bind_first, _native.dot
    mle_eval, half_sum, bool_round = _native.mle_eval, _native.half_sum, _native.bool_round
    axpy, batch_inv = _native.axpy, _native.batch_inv
    pack, unpack = _native.pack, _native.unpack

    def eq_table_packed(point: Sequence[int]) -> bytes:
        return _native.eq_table(point, True)

    def bind_first_packed(table: bytes | Sequence[int], r: int) -> bytes:
        return _native.bind_first(table, r, True)

    def half_sum_packed(table: bytes | Sequence[int]) -> bytes:
        return _native.half_sum(table, True)

    def product_sum(tables: Sequence[Sequence[int]],
                    terms: Sequence[tuple[int, Sequence[int]]], degree: int) -> list[int]:
        """_py_product_sum in compiled code, within its limits (32 tables, 32 terms, degree
        8); beyond them the reference computes it."""
        if len(tables) <= 32 and len(terms) <= 32 and 1 <= degree <= 8:
            return _native.product_sum(tables, terms, degree)
        return _py_product_sum(tables, terms, degree)
    set_workers = _native.set_workers
    _workers = os.environ.get("P2PINFER_ZK_WORKERS")
    if _workers:
        try:
            set_workers(int(_workers))
        except ValueError as exc:
            raise ValueError(f"P2PINFER_ZK_WORKERS={_workers!r}: {exc}") from None
    else:
        set_workers(max(1, min(16, len(os.sched_getaffinity(0)))))
