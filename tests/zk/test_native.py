"""The native field kernels give the reference's results bit for bit, for any worker count, and
proofs made on one backend verify on the other."""

from __future__ import annotations

import os
import random
import secrets
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from py_arkworks_bls12381 import G1Point

from p2pinfer.zk import ProofBinding, ShardProof, booleanity, commit_shard, prove, verify
from p2pinfer.zk import field as F
from p2pinfer.zk.field import P, reference
from p2pinfer.zk.group import pedersen_params

from .conftest import make_input, make_shard

try:
    from p2pinfer.zk import _native
except ImportError:  # pragma: no cover - only when the package was not built
    _native = None

pytestmark = pytest.mark.skipif(_native is None, reason="native kernels not built "
                                "(pip install -e . builds them)")

# canonical elements, the edges of the field, and ints a caller may pass unreduced
canonical = st.integers(0, P - 1)
edge = st.sampled_from([0, 1, 2, P - 2, P - 1])
unreduced = st.integers(-(1 << 300), 1 << 300)
felt = st.one_of(canonical, edge, unreduced)


def tables(m: int):
    return st.lists(felt, min_size=1 << m, max_size=1 << m)


@settings(deadline=None, max_examples=1000)
@given(st.lists(felt, min_size=0, max_size=6))
def test_eq_table_is_the_reference(point):
    assert _native.eq_table(point) == reference.eq_table(point)


@settings(deadline=None, max_examples=1000)
@given(st.integers(0, 64).flatmap(lambda n: st.lists(felt, min_size=n, max_size=n)), felt)
def test_bind_first_is_the_reference_for_any_length(table, r):
    assert _native.bind_first(table, r) == reference.bind_first(table, r)


@settings(deadline=None, max_examples=1000)
@given(st.integers(0, 40).flatmap(
    lambda n: st.tuples(st.lists(felt, min_size=n, max_size=n),
                        st.lists(felt, min_size=n, max_size=n))))
def test_dot_is_the_reference(case):
    a, b = case
    assert _native.dot(a, b) == reference.dot(a, b)


@settings(deadline=None, max_examples=500)
@given(st.integers(0, 5).flatmap(lambda m: st.tuples(tables(m), st.lists(felt, min_size=m,
                                                                        max_size=m))))
def test_mle_eval_is_the_reference(case):
    table, point = case
    assert _native.mle_eval(table, point) == reference.mle_eval(table, point)


@settings(deadline=None, max_examples=500)
@given(st.integers(0, 5).flatmap(
    lambda m: st.tuples(st.lists(st.one_of(st.integers(0, 1), felt), min_size=2 << m,
                                 max_size=2 << m),
                        tables(m))))
def test_booleanity_round_and_half_sum_are_the_reference(case):
    bits, weights = case
    assert _native.bool_round(bits, weights) == reference.bool_round(bits, weights)
    assert _native.half_sum(weights + bits) == reference.half_sum(weights + bits)


@settings(deadline=None, max_examples=1000)
@given(st.data())
def test_product_sum_is_the_reference(data):
    m = data.draw(st.integers(1, 4))
    ntab = data.draw(st.integers(1, 5))
    degree = data.draw(st.integers(1, 6))
    tabs = [data.draw(tables(m)) for _ in range(ntab)]
    terms = data.draw(st.lists(
        st.tuples(felt, st.lists(st.integers(0, ntab - 1), min_size=1, max_size=degree)),
        min_size=1, max_size=4))
    assert _native.product_sum(tabs, terms, degree) == reference.product_sum(tabs, terms, degree)


def test_bad_input_gets_a_typed_error_and_changes_nothing():
    table = [1, 2, 3, 4]
    with pytest.raises(TypeError):
        _native.bind_first([1, "2"], 3)
    with pytest.raises(TypeError):
        _native.eq_table([1.5])
    with pytest.raises(ValueError):
        _native.dot([1, 2], [1])
    with pytest.raises(ValueError):
        _native.mle_eval(table, [1])
    with pytest.raises(ValueError):
        _native.product_sum([table], [(1, [0, 0, 0])], 2)  # product longer than the degree
    with pytest.raises(ValueError):
        _native.product_sum([table], [(1, [1])], 2)  # no table 1
    with pytest.raises(ValueError):
        _native.product_sum([table, [1, 2]], [(1, [0])], 2)  # lengths differ
    with pytest.raises(ValueError):
        _native.set_workers(0)
    assert table == [1, 2, 3, 4]
    assert _native.eq_table([np.int64(5)]) == reference.eq_table([5])  # __index__ accepted


@pytest.mark.parametrize("size", [1 << 13, (1 << 14) + 2])
def test_large_kernels_give_the_same_results_on_one_and_two_workers(size):
    rng = random.Random(size)
    a = [rng.randrange(P) for _ in range(size)]
    b = [rng.randrange(P) for _ in range(size)]
    point = [rng.randrange(P) for _ in range(13)]
    r = rng.randrange(P)
    outs = []
    old = _native.set_workers(1)
    try:
        for workers in (1, 2):
            _native.set_workers(workers)
            outs.append((_native.dot(a, b), _native.bind_first(a, r), _native.eq_table(point),
                         _native.bool_round(a, b[: size // 2]),
                         _native.product_sum([a, b], [(3, [0, 1, 1]), (5, [0])], 3)))
    finally:
        _native.set_workers(old)
    assert outs[0] == outs[1]
    assert outs[0][0] == reference.dot(a, b)
    assert outs[0][4] == reference.product_sum([a, b], [(3, [0, 1, 1]), (5, [0])], 3)


def _seeded_randomness(monkeypatch, seed: int) -> None:
    rng = random.Random(seed)
    monkeypatch.setattr(secrets, "randbelow", lambda n: rng.randrange(n))
    monkeypatch.setattr(secrets, "randbits", lambda k: rng.getrandbits(k))


def test_a_proof_is_the_same_bytes_with_one_and_two_workers(monkeypatch):
    """Blindings drawn from a seeded generator, so only the worker count differs (booleanity
    tables of 2**16 bits, folded past the size where kernels split across threads)."""
    if F.BACKEND != "native":
        pytest.skip("the reference backend has no workers")
    shard = make_shard([128, 128, 128], seed=3)
    binding = ProofBinding(b"task-workers", b"\x02" * 32)
    x = make_input(16, 128, seed=5)
    proofs = []
    old = F.set_workers(1)
    try:
        for workers in (1, 2):
            F.set_workers(workers)
            _seeded_randomness(monkeypatch, 11)
            committed = commit_shard(shard, blinding_key=b"k" * 32)
            proofs.append(prove(committed, x, committed.forward_fixed(x), binding).to_bytes())
    finally:
        F.set_workers(old)
    assert proofs[0] == proofs[1]


_PROVE_IN_CHILD = """
import sys
from p2pinfer.zk import ProofBinding, commit_shard, prove, verify, ShardProof
from p2pinfer.zk import field
from tests.zk.conftest import make_input, make_shard
shard = make_shard([16, 16, 16], seed=4)
committed = commit_shard(shard, blinding_key=b"c" * 32)
x = make_input(2, 16, seed=6)
y = committed.forward_fixed(x)
binding = ProofBinding(b"task-cross", b"\\x03" * 32)
if sys.argv[1] == "prove":
    sys.stdout.buffer.write(field.BACKEND.encode() + b"\\n"
                            + prove(committed, x, y, binding).to_bytes().hex().encode())
else:
    proof = ShardProof.from_bytes(bytes.fromhex(sys.stdin.read()))
    verify(committed.commitment, x, y, proof, binding)
    print(field.BACKEND, "verified")
"""


def _child(mode: str, stdin: str = "") -> str:
    env = dict(os.environ, P2PINFER_ZK_REFERENCE="1")
    root = Path(__file__).resolve().parents[2]
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-c", _PROVE_IN_CHILD, mode], input=stdin, check=False,
                          capture_output=True, text=True, env=env, cwd=root, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_a_reference_proof_verifies_natively_and_a_native_one_on_the_reference():
    if F.BACKEND != "native":
        pytest.skip("this process runs the reference already")
    shard = make_shard([16, 16, 16], seed=4)
    committed = commit_shard(shard, blinding_key=b"c" * 32)
    x = make_input(2, 16, seed=6)
    y = committed.forward_fixed(x)
    binding = ProofBinding(b"task-cross", b"\x03" * 32)

    backend, proof_hex = _child("prove").split("\n", 1)
    assert backend == "reference"
    verify(committed.commitment, x, y, ShardProof.from_bytes(bytes.fromhex(proof_hex)), binding)

    native_proof = prove(committed, x, y, binding).to_bytes().hex()
    assert _child("verify", native_proof).strip() == "reference verified"


def test_native_bit_row_commitments_are_the_group_sums_with_additions_fixed_by_shape():
    """Row sums in compiled code equal the generators' sums computed by arkworks, for random,
    all-zero and all-one rows, and take one addition per byte whatever the bits."""
    pp = pedersen_params(96)
    rng = np.random.default_rng(9)
    gens = [bytes(p.to_xy_bytes_le()) for p in pp.g_vec[:96]]
    table = _native.g1_byte_tables(gens)
    counts = []
    for rows in (rng.integers(0, 2, (6, 96)), np.zeros((6, 96), int), np.ones((6, 96), int)):
        packed = np.packbits(rows.astype(np.uint8), axis=1, bitorder="little")
        sums, adds = _native.g1_sum_rows(table, packed.tobytes(), packed.shape[1])
        counts.append(adds)
        for enc, row in zip(sums, rows):
            want = pp.commit_vec(row.tolist(), 0) - pp.blind_only(0)
            assert G1Point.from_xy_bytes_unchecked_le(enc) == want
    assert counts == [6 * 12] * 3
    # a point added to itself (doubling) and to its negative (the identity)
    g = pp.g_vec[0]
    pair = _native.g1_byte_tables([bytes(g.to_xy_bytes_le())] * 8 + [bytes(
        (G1Point.identity() - g).to_xy_bytes_le())] * 8)
    (twice,), _ = _native.g1_sum_rows(pair[: len(pair) // 2] * 2, bytes([1, 1]), 2)
    (zero,), _ = _native.g1_sum_rows(pair, bytes([1, 1]), 2)
    assert G1Point.from_xy_bytes_unchecked_le(twice) == g + g
    assert zero == bytes(96)
    with pytest.raises(ValueError):
        _native.g1_sum_rows(table, bytes(5), 12)  # rows do not match the groups
    with pytest.raises(ValueError):
        _native.g1_byte_tables([b"\x00" * 95] * 8)


@settings(deadline=None, max_examples=200)
@given(st.integers(0, 5), st.sampled_from([1, 2, 3]), st.integers(0, 2**32 - 1))
def test_booleanity_pattern_weights_are_the_reference(rows_log, level, seed):
    rng = np.random.default_rng(seed)
    ncodes = 1 << (1 << level)
    codes = rng.integers(0, ncodes, size=(1 << rows_log, 32))
    eq_i = [int(v) for v in rng.integers(0, 2**62, 1 << rows_log)]
    eq_j = [P - 1 - int(v) for v in rng.integers(0, 2**62, 32)]
    native = booleanity._pattern_weights(codes, eq_i, eq_j, ncodes)
    saved, booleanity.NATIVE = booleanity.NATIVE, None
    try:
        ref = booleanity._pattern_weights(codes, eq_i, eq_j, ncodes)
    finally:
        booleanity.NATIVE = saved
    assert native == ref
    with pytest.raises(ValueError):
        _native.pattern_weights(eq_i, bytes(codes.size - 1), eq_j)


@settings(deadline=None, max_examples=1000)
@given(st.lists(felt, max_size=20), felt, st.lists(felt, max_size=20))
def test_axpy_and_batch_inverse_are_the_reference(y, a, x):
    assert _native.axpy(y, a, x) == reference.axpy(y, a, x)
    assert _native.batch_inv(x) == reference.batch_inv(x)  # zeros included
    nonzero = [v % P or 1 for v in x]
    assert all(v * w % P == 1 for v, w in zip(nonzero, _native.batch_inv(nonzero)))


def test_product_sums_beyond_the_native_limits_fall_back_to_the_reference():
    rng = random.Random(5)
    tabs = [[rng.randrange(P) for _ in range(8)] for _ in range(40)]
    terms = [(k + 1, [k, (k + 1) % 40]) for k in range(40)]
    with pytest.raises(ValueError):
        _native.product_sum(tabs, terms, 2)
    assert F.product_sum(tabs, terms, 2) == reference.product_sum(tabs, terms, 2)


@settings(deadline=None, max_examples=300)
@given(st.integers(0, 5).flatmap(lambda m: st.tuples(tables(m), st.lists(felt, min_size=m,
                                                                        max_size=m))), felt)
def test_packed_tables_give_the_same_results_as_lists(case, r):
    table, point = case
    packed = _native.pack(table)
    assert _native.unpack(packed) == [v % P for v in table]
    assert _native.unpack(_native.bind_first(packed, r, True)) == reference.bind_first(table, r)
    assert _native.unpack(_native.half_sum(packed, True)) == reference.half_sum(table)
    assert _native.unpack(_native.eq_table(point, True)) == reference.eq_table(point)
    assert _native.bool_round(packed, packed) == reference.bool_round(table, table)
    with pytest.raises(ValueError):
        _native.unpack(packed + b"\x01")
