"""Pedersen commitments in the prime-order group G1 of BLS12-381 (arkworks, native MSM).

Every generator comes from hash-to-curve (RFC 9380, BLS12381G1_XMD:SHA-256_SSWU_RO_) under our
own domain tag and a public seed, so nobody knows a discrete-log relation between any two of
them. `g` commits to single values, `g_vec[i]` to entry i of a vector, `h` carries blinding.
Points travel as 48-byte compressed encodings; decoding checks subgroup membership.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from py_arkworks_bls12381 import G1Point, Scalar

from .errors import ProofFormatError
from .field import NATIVE, P

POINT_BYTES = 48
SCALAR_BYTES = 32
GENERATOR_DST = b"p2pinfer-zk-v1:BLS12381G1_XMD:SHA-256_SSWU_RO_"
DEFAULT_SEED = b"p2pinfer-zk-generators-v1"



def scalar(v: int) -> Scalar:
    return Scalar.from_le_bytes((v % P).to_bytes(32, "little"))


def scalars(vs: Sequence[int]) -> list[Scalar]:
    return [Scalar.from_le_bytes((v % P).to_bytes(32, "little")) for v in vs]


def random_scalar() -> int:
    return secrets.randbelow(P)


def encode_point(p: G1Point) -> bytes:
    return bytes(p.to_compressed_bytes())


def decode_point(b: object) -> G1Point:
    if not isinstance(b, bytes) or len(b) != POINT_BYTES:
        raise ProofFormatError("a group element is not 48 bytes")
    try:
        p = G1Point.from_compressed_bytes(b)
    except Exception as exc:  # arkworks raises plain exceptions on bad encodings
        raise ProofFormatError("a group element does not decode") from exc
    return p


def encode_scalar(v: int) -> bytes:
    return (v % P).to_bytes(32, "little")


def decode_scalar(b: object) -> int:
    if not isinstance(b, bytes) or len(b) != SCALAR_BYTES:
        raise ProofFormatError("a scalar is not 32 bytes")
    v = int.from_bytes(b, "little")
    if v >= P:
        raise ProofFormatError("a scalar is not reduced")
    return v


class _FixedBase:
    """Multiples of one base point by 8-bit windows: a fixed-base product costs 32 additions."""

    def __init__(self, base: G1Point) -> None:
        self.windows: list[list[G1Point]] = []
        point = base
        for _ in range(32):
            row = [G1Point.identity(), point]
            for _ in range(254):
                row.append(row[-1] + point)
            self.windows.append(row)
            point = row[-1] + point  # 256 * point
        self._identity = G1Point.identity()

    def mul(self, v: int) -> G1Point:
        acc = self._identity
        for window, byte in zip(self.windows, (v % P).to_bytes(32, "little")):
            if byte:
                acc = acc + window[byte]
        return acc


@dataclass(frozen=True)
class PedersenParams:
    """Public commitment key derived from `seed`."""

    seed: bytes
    size: int
    g: G1Point = field(repr=False)
    h: G1Point = field(repr=False)
    g_vec: tuple[G1Point, ...] = field(repr=False)
    _g_table: _FixedBase = field(repr=False, compare=False)
    _h_table: _FixedBase = field(repr=False, compare=False)
    _key: _SeedKey = field(repr=False, compare=False)

    def commit(self, value: int, blind: int) -> G1Point:
        """value * g + blind * h."""
        return self._g_table.mul(value) + self._h_table.mul(blind)

    def blind_only(self, blind: int) -> G1Point:
        return self._h_table.mul(blind)

    def value_only(self, value: int) -> G1Point:
        return self._g_table.mul(value)

    def commit_vec(self, values: Sequence[int], blind: int) -> G1Point:
        """sum_i values[i] * g_vec[i] + blind * h, for field-element values."""
        if len(values) > self.size:
            raise ValueError("vector longer than the commitment key")
        acc = G1Point.multiexp_unchecked(list(self.g_vec[: len(values)]), scalars(values))
        return acc + self._h_table.mul(blind)

    def commit_small_ints(self, values: Sequence[int] | np.ndarray, blind: int,
                          bits: int | None = None) -> G1Point:
        """Vector commitment of small signed integers (|v| < 2**62).

        With o = 2**k > max |v|, sum_i v_i g_i = sum_b 2**b (sum of g_i over bit b of v_i + o)
        - o sum_i g_i: one addition per byte of each bit plane (byte tables), Horner over the
        planes, and a cached multiple of the generators' sum.

        `bits`, a public bound (|v| < 2**bits), makes the work depend on it and the length
        only: k = bits and every byte is added, zero bytes too (the identity), so the time
        does not reveal the values' magnitudes (witness commitments pass it; the point
        arithmetic itself is not constant-time). Without it k follows max |v|.
        """
        v = np.asarray(values, dtype=np.int64).reshape(-1)
        if v.size > self.size:
            raise ValueError("vector longer than the commitment key")
        acc = self._h_table.mul(blind)
        top = int(np.abs(v).max(initial=0))
        if bits is not None:
            if not 1 <= bits <= 62 or top >= 1 << bits:
                raise ValueError(f"a value is outside the public bound 2**{bits}")
            k = bits
        elif top == 0:
            return acc
        else:
            k = top.bit_length()
        u = (v + (1 << k)).astype(np.uint64)  # in [0, 2**(k+1))
        planes = ((u[None, :] >> np.arange(k, -1, -1, dtype=np.uint64)[:, None]) & 1)
        packed = np.packbits(planes.astype(np.uint8), axis=1, bitorder="little").tolist()
        tables = self._key.byte_tables(len(packed[0]))
        total = G1Point.identity()
        for plane in packed:
            total = total + total
            if bits is None:
                for table, byte in zip(tables, plane):
                    if byte:
                        total = total + table[byte]
            else:
                for table, byte in zip(tables, plane):
                    total = total + table[byte]
        return acc + total - self._key.offset_sum(v.size, k)

    def commit_bit_rows(self, rows: np.ndarray, blinds: Sequence[int]) -> list[G1Point]:
        """Vector commitments of the rows of a 0/1 matrix: one addition per byte of bits,
        from tables of the 256 subset sums of each group of 8 generators. Zero bytes are
        added too (the identity), so the number of additions depends on the shape only.
        With the native kernels the row sums run in compiled code, on all workers."""
        rows = np.asarray(rows, dtype=np.uint8)
        if rows.shape[1] > self.size:
            raise ValueError("rows longer than the commitment key")
        packed = np.packbits(rows, axis=1, bitorder="little")
        if NATIVE is not None and packed.shape[1] > 0:
            table = self._key.native_byte_tables(packed.shape[1])
            sums, _ = NATIVE.g1_sum_rows(table, np.ascontiguousarray(packed).tobytes(),
                                         packed.shape[1])
            return [self._h_table.mul(blind) + G1Point.from_xy_bytes_unchecked_le(s)
                    for s, blind in zip(sums, blinds)]
        tables = self._key.byte_tables(packed.shape[1])
        out = []
        for row, blind in zip(packed.tolist(), blinds):
            acc = self._h_table.mul(blind)
            for table, byte in zip(tables, row):
                acc = acc + table[byte]
            out.append(acc)
        return out

    def commit_bits(self, bits: Sequence[int], blind: int) -> G1Point:
        """Vector commitment of one 0/1 vector."""
        return self.commit_bit_rows(np.asarray([bits]), [blind])[0]


def msm(points: Sequence[G1Point], coeffs: Sequence[int]) -> G1Point:
    if not points:
        return G1Point.identity()
    return G1Point.multiexp_unchecked(list(points), scalars(coeffs))


class _SeedKey:
    """Generators of one seed, derived lazily and extended on demand."""

    def __init__(self, seed: bytes) -> None:
        self.seed = seed
        self.lock = threading.RLock()  # the lazily grown tables are shared across threads
        self.g = self.derive(b"g")
        self.h = self.derive(b"h")
        self.g_table = _FixedBase(self.g)
        self.h_table = _FixedBase(self.h)
        self.g_vec: list[G1Point] = []

    def derive(self, label: bytes) -> G1Point:
        return G1Point.hash_to_curve(self.seed + b"/" + label, GENERATOR_DST)

    def extend(self, size: int) -> None:
        with self.lock:
            while len(self.g_vec) < size:
                self.g_vec.append(self.derive(b"v%d" % len(self.g_vec)))

    def offset_sum(self, size: int, k: int) -> G1Point:
        """2**k times the sum of the first `size` vector generators (memoised)."""
        cache = self.__dict__.setdefault("_offset_sum_cache", {})
        with self.lock:
            return self._offset_sum(cache, size, k)

    def _offset_sum(self, cache: dict, size: int, k: int) -> G1Point:
        if (size, k) not in cache:
            self.extend(size)
            total = G1Point.identity()
            for g in self.g_vec[:size]:
                total = total + g
            for _ in range(k):
                total = total + total
            cache[(size, k)] = total
        return cache[(size, k)]

    def byte_tables(self, groups: int) -> list[list[G1Point]]:
        """For each group of 8 vector generators, the sums of all 256 subsets (by bit mask)."""
        with self.lock:
            return self._byte_tables(groups)

    def _byte_tables(self, groups: int) -> list[list[G1Point]]:
        tables = self.__dict__.setdefault("_byte_table_cache", [])
        self.extend(8 * groups)
        while len(tables) < groups:
            gens = self.g_vec[8 * len(tables): 8 * len(tables) + 8]
            table = [G1Point.identity()]
            for mask in range(1, 256):
                low = (mask & -mask).bit_length() - 1
                table.append(table[mask & (mask - 1)] + gens[low])
            tables.append(table)
        return tables[:groups]


    def native_byte_tables(self, groups: int) -> memoryview:
        """byte_tables(groups) as one native point table (built by NATIVE.g1_byte_tables from
        the generators themselves), grown on demand."""
        with self.lock:
            done = self.__dict__.get("_native_groups", 0)
            if done < groups:
                self.extend(8 * groups)
                gens = [bytes(p.to_xy_bytes_le()) for p in self.g_vec[8 * done:8 * groups]]
                blob = NATIVE.g1_byte_tables(gens)
                self._native_table = self.__dict__.get("_native_table", b"") + blob
                self._native_groups = groups
            per_group = len(self._native_table) // self._native_groups
            return memoryview(self._native_table)[: groups * per_group]


@lru_cache(maxsize=4)
def _seed_key(seed: bytes) -> _SeedKey:
    return _SeedKey(seed)


def pedersen_params(size: int, seed: bytes = DEFAULT_SEED) -> PedersenParams:
    """Commitment key with `size` vector generators (memoised per seed: a pure function)."""
    key = _seed_key(seed)
    key.extend(size)
    return PedersenParams(seed, size, key.g, key.h, tuple(key.g_vec[:size]), key.g_table,
                          key.h_table, key)
