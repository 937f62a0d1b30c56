"""Decode steps over a committed KV cache: each token's step commits its key and value rows
and is proven against the rows earlier steps of the same session committed."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from p2pinfer.zk import (
    BindingMismatch,
    CacheMismatch,
    ModelManifest,
    OpeningError,
    ProofBinding,
    ProofFormatError,
    ProvableMlp,
    ShapeMismatch,
    commit_shard,
)
from p2pinfer.zk.attention import AttentionShape
from p2pinfer.zk.kvcache import (
    CacheCommitments,
    KvCache,
    StepProof,
    attention_step,
    prove_step,
    verify_step,
)

from .conftest import assert_values_not_in_proof

SHAPE = AttentionShape(16, 4, 2, 10000)


def block(seed: int = 0) -> ProvableMlp:
    """RMSNorm, attention, the output projection with the block's residual: a Llama half."""
    rng = np.random.default_rng(seed)
    d, kv = SHAPE.d, SHAPE.kv_width

    def w(cols):
        return rng.normal(0, 1 / np.sqrt(d), (d, cols))

    layers = [(rng.normal(1, 0.1, (1, d)), None),
              (w(d), None, w(kv), None, w(kv), rng.normal(0, 0.1, kv), SHAPE),
              (w(d), None)]
    return ProvableMlp.from_float(layers, activations=["rmsnorm", "attention", "identity"],
                                  residual=[False, False, True], skip=[0, 0, 2])


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    shard = block()
    owner = commit_shard(shard, tmp_path_factory.mktemp("kv"))
    manifest = ModelManifest.from_shards("kv-test", [owner])
    entry = manifest.shard(0, 3)
    x = shard.quantize(np.random.default_rng(5).normal(0, 1, (6, SHAPE.d)))
    return owner.bind_to(entry), entry, ProofBinding(b"task", manifest.digest(), b"net/0"), x


def run(setup, steps: int, session: bytes = b"session-1"):
    prover, entry, binding, x = setup
    cache = KvCache.open(prover, session)
    seen = CacheCommitments.open(entry, session)
    out = []
    for t in range(steps):
        y, step = prove_step(prover, cache, x[t:t + 1], binding)
        verify_step(entry, seen, x[t:t + 1], y, step, binding)
        out.append((y, step))
    return cache, seen, out


def test_steps_equal_the_full_forward_and_verify(setup):
    prover, _, _, x = setup
    cache, seen, out = run(setup, 5)
    full = prover.shard.forward_fixed(x[:5])
    assert np.array_equal(np.concatenate([y for y, _ in out]), full)
    assert cache.position == seen.position == 5
    assert seen.digest == cache.commitments.digest
    assert seen.keys == cache.commitments.keys and len(seen.keys[0]) == 5
    # one row's proof per step: its size grows with log T only
    sizes = [len(step.to_bytes()) for _, step in out]
    assert max(sizes) < 1.2 * min(sizes)


def test_the_fixed_point_step_is_row_t_of_full_attention():
    from p2pinfer.zk.attention import attention_fixed

    rng = np.random.default_rng(2)
    d, kv = SHAPE.d, SHAPE.kv_width
    weight = np.rint(rng.normal(0, 1 / np.sqrt(d), (d, d + 2 * kv)) * 256).astype(np.int64)
    a = np.rint(rng.normal(0, 1, (7, d)) * 256).astype(np.int64)
    full = attention_fixed(a, weight, None, SHAPE, 8)
    keys = np.zeros((0, kv), dtype=np.int64)
    values = np.zeros((0, kv), dtype=np.int64)
    for t in range(7):
        step = attention_step(a[t:t + 1], weight, None, SHAPE, 8, keys, values)
        assert np.array_equal(step["out"], full["out"][t:t + 1])
        keys = np.concatenate([keys, step["rk"]])
        values = np.concatenate([values, step["v"]])
    assert np.array_equal(keys, full["rk"]) and np.array_equal(values, full["v"])


def test_a_step_proof_round_trips_and_hides_the_cache(setup):
    cache, _, out = run(setup, 3)
    blob = out[-1][1].to_bytes()
    back = StepProof.from_bytes(blob)
    assert back.position == 2 and back.to_bytes() == blob
    assert_values_not_in_proof(blob, cache.keys[0], 8)
    assert_values_not_in_proof(blob, cache.values[0], 8)


def test_a_tampered_cached_row_is_rejected(setup):
    prover, entry, binding, x = setup
    cache, seen, _ = run(setup, 3)
    cache.keys[0][1, 0] += 1  # the stage changes a row after it was committed
    y, step = prove_step(prover, cache, x[3:4], binding)
    before = (seen.position, seen.digest)
    with pytest.raises(OpeningError) as err:
        verify_step(entry, seen, x[3:4], y, step, binding)
    assert "cache-keys-opening" in err.value.check
    assert (seen.position, seen.digest) == before  # nothing was added


def test_a_tampered_cached_value_is_rejected(setup):
    prover, entry, binding, x = setup
    cache, seen, _ = run(setup, 2)
    cache.values[0][0, 3] -= 5
    y, step = prove_step(prover, cache, x[2:3], binding)
    with pytest.raises(OpeningError):
        verify_step(entry, seen, x[2:3], y, step, binding)


def test_a_row_that_was_not_committed_is_rejected(setup):
    prover, entry, binding, x = setup
    cache, seen, _ = run(setup, 2)
    # a step the verifier never accepted: its rows are in the prover's cache only
    prove_step(prover, cache, x[2:3], binding)
    y, step = prove_step(prover, cache, x[3:4], binding)
    with pytest.raises(CacheMismatch):
        verify_step(entry, seen, x[3:4], y, step, binding)
    # claiming the verifier's position does not help: the rows it was proven over differ
    with pytest.raises(CacheMismatch):
        verify_step(entry, seen, x[3:4], y, dataclasses.replace(step, position=2), binding)
    # nor does claiming the verifier's digest: the proof's binding names the other rows
    forged = dataclasses.replace(step, position=2, cache_digest=seen.digest)
    with pytest.raises(BindingMismatch):
        verify_step(entry, seen, x[3:4], y, forged, binding)
    assert seen.position == 2


def test_a_step_proven_against_another_sessions_cache_is_rejected(setup):
    prover, entry, binding, x = setup
    theirs, _, _ = run(setup, 2, session=b"session-a")
    _, mine, _ = run(setup, 2, session=b"session-b")
    y, step = prove_step(prover, theirs, x[2:3], binding)
    with pytest.raises(CacheMismatch):
        verify_step(entry, mine, x[2:3], y, step, binding)
    # with the digest field rewritten to ours, the proof's binding still names theirs
    forged = dataclasses.replace(step, cache_digest=mine.digest)
    with pytest.raises(BindingMismatch):
        verify_step(entry, mine, x[2:3], y, forged, binding)


def test_a_changed_output_or_input_is_rejected(setup):
    prover, entry, binding, x = setup
    cache = KvCache.open(prover, b"s")
    seen = CacheCommitments.open(entry, b"s")
    y, step = prove_step(prover, cache, x[0:1], binding)
    with pytest.raises(BindingMismatch):
        verify_step(entry, seen, x[0:1], y + 1, step, binding)
    with pytest.raises(BindingMismatch):
        verify_step(entry, seen, x[1:2], y, step, binding)
    verify_step(entry, seen, x[0:1], y, step, binding)
    assert seen.position == 1


def test_bad_input_gets_typed_errors(setup):
    prover, entry, binding, x = setup
    cache = KvCache.open(prover, b"s")
    seen = CacheCommitments.open(entry, b"s")
    with pytest.raises(ShapeMismatch):
        prove_step(prover, cache, x[0:2], binding)  # one token per step
    y, step = prove_step(prover, cache, x[0:1], binding)
    with pytest.raises(ShapeMismatch):
        verify_step(entry, seen, x[0:1], y[:, :4], step, binding)
    for blob in (b"", b"\x80", step.to_bytes()[:-3], b"\x81\xa1v\x02"):
        with pytest.raises(ProofFormatError):
            StepProof.from_bytes(blob)
    with pytest.raises(ProofFormatError):
        StepProof.from_bytes(step.to_bytes(), max_size=1000)
    with pytest.raises(ValueError):
        KvCache.open(prover, b"")
    assert seen.position == 0 and cache.position == 1


def test_closing_the_cache_erases_rows_and_blindings(setup):
    cache, _, _ = run(setup, 2)
    rows = cache.keys[0]
    cache.close()
    assert not rows.any() and cache.keys[0].size == 0
    assert cache.key_blinds == [[]] and cache.commitments.keys == [[]]
