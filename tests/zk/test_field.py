"""Field helpers: multilinear extensions, exact integer-by-field products, interpolation."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pinfer.zk.field import (
    P,
    bind_first,
    dot,
    eq_eval,
    eq_table,
    int_matvec,
    int_mle_eval,
    int_vecmat,
    interpolate,
    mle_eval,
    poly_eval,
)

felt = st.integers(min_value=0, max_value=P - 1)


def naive_mle(table: list[int], point: list[int]) -> int:
    m = len(point)
    acc = 0
    for x, v in enumerate(table):
        w = 1
        for k, p in enumerate(point):
            bit = (x >> (m - 1 - k)) & 1
            w = w * (p if bit else 1 - p) % P
        acc += w * v
    return acc % P


@settings(deadline=None, max_examples=150)
@given(st.integers(0, 4).flatmap(
    lambda m: st.tuples(st.lists(felt, min_size=1 << m, max_size=1 << m),
                        st.lists(felt, min_size=m, max_size=m))))
def test_mle_matches_the_definition_msb_first(case):
    table, point = case
    assert mle_eval(table, point) == naive_mle(table, point)


@settings(deadline=None, max_examples=100)
@given(st.lists(felt, min_size=1, max_size=5), st.data())
def test_eq_table_agrees_with_eq_eval_on_boolean_points(point, data):
    x = data.draw(st.integers(0, (1 << len(point)) - 1))
    bits = [(x >> (len(point) - 1 - k)) & 1 for k in range(len(point))]
    assert eq_table(point)[x] == eq_eval(point, bits)


@settings(deadline=None, max_examples=100)
@given(st.integers(1, 4).flatmap(
    lambda m: st.tuples(st.lists(felt, min_size=1 << m, max_size=1 << m),
                        st.lists(felt, min_size=m, max_size=m))))
def test_binding_the_first_variable_preserves_the_extension(case):
    table, point = case
    assert mle_eval(bind_first(table, point[0]), point[1:]) == mle_eval(table, point)


@settings(deadline=None, max_examples=150)
@given(
    st.integers(1, 6), st.integers(1, 40), st.sampled_from([1, 1 << 8, 1 << 15, 1 << 31, 1 << 40]),
    st.integers(0, 2**32),
)
def test_integer_matrix_times_field_vector_is_exact(rows, cols, bound, seed):
    rng = np.random.default_rng(seed)
    m = rng.integers(-bound, bound, size=(rows, cols), dtype=np.int64)
    v = [int(x) for x in rng.integers(0, 2**62, size=cols)]
    v = [(x * 0x1234567 + 99) ** 4 % P for x in v]
    want = [sum(int(a) * b for a, b in zip(row, v)) % P for row in m]
    assert int_matvec(m, v) == want
    w = [(x * 7 + 1) % P for x in range(rows)]
    assert int_vecmat(w, m) == [dot(w, [int(a) for a in m[:, c]]) for c in range(cols)]


def test_integer_mle_agrees_with_the_field_mle():
    t = np.arange(-8, 8).reshape(4, 4)
    point = [3, 5, 7, 11]
    assert int_mle_eval(t, point) == mle_eval([int(x) % P for x in t.reshape(-1)], point)


@settings(deadline=None, max_examples=100)
@given(st.lists(felt, min_size=2, max_size=4), felt)
def test_interpolation_recovers_the_values(evals, x):
    coeffs = interpolate(evals)
    assert [poly_eval(coeffs, t) for t in range(len(evals))] == evals
    assert len(coeffs) == len(evals)
