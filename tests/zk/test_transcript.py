"""Fiat-Shamir transcript: deterministic, domain-separated, order- and length-sensitive."""

from __future__ import annotations

from p2pinfer.zk.field import P
from p2pinfer.zk.transcript import Transcript, tensor_digest


def run(domain: bytes, *items: tuple[bytes, bytes]) -> int:
    t = Transcript(domain)
    for label, data in items:
        t.absorb(label, data)
    return t.challenge(b"c")


def test_same_inputs_give_the_same_challenge():
    assert run(b"d", (b"a", b"1")) == run(b"d", (b"a", b"1"))


def test_domain_label_and_framing_all_change_the_challenge():
    base = run(b"d", (b"a", b"12"))
    assert run(b"e", (b"a", b"12")) != base
    assert run(b"d", (b"b", b"12")) != base
    assert run(b"d", (b"a1", b"2")) != base  # length prefixes separate label from data
    assert run(b"d", (b"a", b"1"), (b"a", b"2")) != base


def test_successive_challenges_differ_and_are_reduced():
    t = Transcript(b"d")
    cs = t.challenges(b"x", 8)
    assert len(set(cs)) == 8 and all(0 <= c < P for c in cs)


def test_tensor_digest_depends_on_shape_and_values():
    import numpy as np

    a = np.arange(8).reshape(2, 4)
    assert tensor_digest(a) != tensor_digest(a.reshape(4, 2))
    b = a.copy()
    b[1, 3] += 1
    assert tensor_digest(a) != tensor_digest(b)
