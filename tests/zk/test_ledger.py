"""Committed-value arguments: products, Hyrax dot-product openings, committed sum-check."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pinfer.zk.errors import OpeningError, ProductError, RelationError, ShapeMismatch
from p2pinfer.zk.field import P, dot, eq_table, mle_eval
from p2pinfer.zk.group import encode_point, pedersen_params
from p2pinfer.zk.ledger import Lin, ProverLedger, VerifierLedger, sumcheck
from p2pinfer.zk.transcript import Transcript

felt = st.integers(min_value=0, max_value=P - 1)


@pytest.fixture(scope="module")
def pp():
    return pedersen_params(8)


def pair(pp):
    return ProverLedger(pp, Transcript(b"t")), lambda rec: VerifierLedger(pp, Transcript(b"t"), rec)


@settings(deadline=None, max_examples=25)
@given(felt, felt)
def test_product_proof_accepts_a_true_product(pp, a, b):
    prover, verifier_for = pair(pp)
    ia, ib, ic = prover.put(a), prover.put(b), prover.put(a * b)
    prover.prove_product(ia, ib, ic)
    v = verifier_for(prover.finish())
    i, j, k = v.put(), v.put(), v.put()
    v.check_product("prod", i, j, k)
    v.finish()


def test_product_proof_rejects_a_wrong_product(pp):
    prover, verifier_for = pair(pp)
    ia, ib, ic = prover.put(3), prover.put(5), prover.put(15)
    prover.prove_product(ia, ib, ic)
    rec = prover.finish()
    rec.commits[2] = encode_point(pp.commit(16, prover.blinds[2]))
    v = verifier_for(rec)
    i, j, k = v.put(), v.put(), v.put()
    v.check_product("prod", i, j, k)
    with pytest.raises(ProductError) as exc:
        v.finish()
    assert exc.value.check == "prod"


def _opening(pp, u, tamper: bool):
    rows_blind = [11, 22]
    mat = [u[:4], u[4:]]
    rows = [pp.commit_vec(r, b) for r, b in zip(mat, rows_blind)]
    row_w = eq_table([5])
    combo = [(row_w[0] * a + row_w[1] * b) % P for a, b in zip(*mat)]
    y = eq_table([7, 9])
    prover, verifier_for = pair(pp)
    value = dot(combo, y)
    k = prover.put(value + (1 if tamper else 0))
    prover.prove_dot(combo, dot(row_w, rows_blind), [y], [k])
    v = verifier_for(prover.finish())
    kv = v.put()
    v.check_dot("open", rows, row_w, [y], [kv])
    v.finish()
    return mle_eval(u, [5, 7, 9]) == value


def test_dot_product_opening_proves_the_matrix_evaluation(pp):
    assert _opening(pp, list(range(1, 9)), tamper=False)


def test_dot_product_opening_rejects_a_wrong_value(pp):
    with pytest.raises(OpeningError):
        _opening(pp, list(range(1, 9)), tamper=True)


class _Oracle:
    def __init__(self, a, b):
        self.a, self.b = a, b

    def evals(self, claim):
        h = len(self.a) // 2
        out = []
        for t in range(3):
            at = [(x + t * (y - x)) % P for x, y in zip(self.a[:h], self.a[h:])]
            bt = [(x + t * (y - x)) % P for x, y in zip(self.b[:h], self.b[h:])]
            out.append(dot(at, bt))
        return out

    def bind(self, r):
        from p2pinfer.zk.field import bind_first

        self.a, self.b = bind_first(self.a, r), bind_first(self.b, r)


@settings(deadline=None, max_examples=15)
@given(st.lists(st.integers(0, 1000), min_size=8, max_size=8),
       st.lists(st.integers(0, 1000), min_size=8, max_size=8))
def test_committed_sumcheck_reduces_an_inner_product_to_one_point(pp, a, b):
    prover, verifier_for = pair(pp)
    claim = Lin(const=dot(a, b))
    oracle = _Oracle(a, b)
    point, final = sumcheck(prover, "ip", claim, 3, 2, oracle)
    assert prover.value(final) == mle_eval(a, point) * mle_eval(b, point) % P
    prover.relate("end", final - mle_eval(a, point) * mle_eval(b, point))
    v = verifier_for(prover.finish())
    vpoint, vfinal = sumcheck(v, "ip", claim, 3, 2)
    assert vpoint == point
    v.relate("end", vfinal - mle_eval(a, vpoint) * mle_eval(b, vpoint))
    v.finish()


def test_committed_sumcheck_rejects_a_false_sum(pp):
    a, b = [1, 2, 3, 4], [5, 6, 7, 8]
    prover, verifier_for = pair(pp)
    true = Lin(const=dot(a, b))
    point, final = sumcheck(prover, "ip", true, 2, 2, _Oracle(a, b))
    prover.relate("end", final - mle_eval(a, point) * mle_eval(b, point))
    v = verifier_for(prover.finish())
    vpoint, vfinal = sumcheck(v, "ip", Lin(const=dot(a, b) + 1), 2, 2)
    v.relate("end", vfinal - mle_eval(a, vpoint) * mle_eval(b, vpoint))
    with pytest.raises(RelationError):
        v.finish()


def test_verifier_refuses_a_record_with_missing_parts(pp):
    prover, verifier_for = pair(pp)
    v = verifier_for(prover.finish())
    with pytest.raises(ShapeMismatch):
        v.put()
