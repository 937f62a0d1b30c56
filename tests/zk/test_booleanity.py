"""The fast booleanity prover sends the same round messages as the textbook computation."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pinfer.zk.booleanity import BooleanityProver
from p2pinfer.zk.field import P, bind_first, eq_table


def naive_rounds(bits: list[int], r_bool: list[int], rs: list[int]) -> list[tuple[int, ...]]:
    e, b = eq_table(r_bool), list(bits)
    out = []
    for r in rs:
        h = len(b) // 2
        g = []
        for t in (0, 2, 3):
            acc = 0
            for k in range(h):
                et = e[k] + t * (e[h + k] - e[k])
                bt = b[k] + t * (b[h + k] - b[k])
                acc += et * bt * (1 - bt)
            g.append(acc % P)
        out.append(tuple(g))
        e, b = bind_first(e, r), bind_first(b, r)
    return out


@settings(deadline=None, max_examples=40)
@given(st.integers(0, 4), st.integers(0, 2**32), st.booleans())
def test_round_messages_match_the_definition(ni, seed, patterns):
    rng = np.random.default_rng(seed)
    nb = ni + 5
    bits = rng.integers(0, 2, size=1 << nb)
    r_bool = [int(v) for v in rng.integers(1, 2**62, size=nb)]
    rs = [int(v) * 7919 % P for v in rng.integers(1, 2**62, size=nb)]
    prover = BooleanityProver(bits, r_bool, ni, patterns=patterns)
    got = []
    for r in rs:
        got.append(prover.evals())
        prover.bind(r)
    assert got == naive_rounds(bits.tolist(), r_bool, rs)
