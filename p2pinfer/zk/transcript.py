"""Fiat-Shamir transcript (BLAKE2b-512, domain-separated, length-prefixed absorbs).

Every absorb is `len(label) || label || len(data) || data` (8-byte little-endian lengths) fed
to one running BLAKE2b-512 state personalised with PERSON. A challenge squeezes
BLAKE2b(state || "challenge" || label), reduces its 64 bytes mod P (bias below 2**-250) and
absorbs the result back, so later challenges depend on earlier ones. Layout: protocols/zk-proof.md.
"""

from __future__ import annotations

import hashlib

import numpy as np

from .field import P

PERSON = b"p2pinfer-zk-v1"  # BLAKE2b personalisation (at most 16 bytes)


def _frame(label: bytes, data: bytes) -> bytes:
    return len(label).to_bytes(8, "little") + label + len(data).to_bytes(8, "little") + data


class Transcript:
    def __init__(self, domain: bytes) -> None:
        self._state = hashlib.blake2b(person=PERSON)
        self.absorb(b"domain", domain)

    def absorb(self, label: bytes, data: bytes) -> None:
        self._state.update(_frame(label, data))

    def challenge(self, label: bytes) -> int:
        fork = self._state.copy()
        fork.update(_frame(b"challenge", label))
        c = int.from_bytes(fork.digest(), "little") % P
        self.absorb(b"challenge-value", c.to_bytes(32, "little"))
        return c

    def challenges(self, label: bytes, n: int) -> list[int]:
        return [self.challenge(label + b"/%d" % i) for i in range(n)]


def tensor_digest(values: object) -> bytes:
    """SHA-256 over dtype, shape and raw little-endian bytes of an integer tensor."""
    arr = np.ascontiguousarray(np.asarray(values, dtype="<i8"))
    h = hashlib.sha256(b"p2pinfer-zk-v1/tensor")
    h.update(len(arr.shape).to_bytes(8, "little"))
    for d in arr.shape:
        h.update(int(d).to_bytes(8, "little"))
    h.update(arr.tobytes())
    return h.digest()
