"""Fingerprints: honest variation matches, substitution does not, bad input is refused."""

from __future__ import annotations

import hashlib
import math

import msgpack
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pinfer.consensus import (
    TOLERANCE_BFLOAT16,
    TOLERANCE_FLOAT32,
    Fingerprint,
    FingerprintContext,
    FingerprintError,
    FingerprintMismatch,
    check_tensor,
    distance,
    fingerprint,
    match,
    tolerance_for,
)
from p2pinfer.consensus.fingerprint import projection_matrix
from tests.consensus.conftest import NETWORK, run_decode, run_prefill

SEEDS = (1, 2, 3)


def _ids(seed: int, batch: int = 1, tokens: int = 12) -> torch.Tensor:
    return torch.randint(0, 256, (batch, tokens), generator=torch.Generator().manual_seed(seed))


def _context(seed: int) -> FingerprintContext:
    return FingerprintContext(NETWORK, hashlib.sha256(bytes([seed])).digest()[:16], 2, seed)


def _fp(activation: torch.Tensor, seed: int) -> Fingerprint:
    return fingerprint(activation, _context(seed))


@pytest.mark.parametrize("seed", SEEDS)
def test_thread_count_does_not_change_the_match(stages, seed):
    ids = _ids(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    single = run_prefill(stages[seed]["f32"], ids)
    torch.set_num_threads(2)
    try:
        double = run_prefill(stages[seed]["f32"], ids)
    finally:
        torch.set_num_threads(threads)
    assert match(_fp(single, seed), _fp(double, seed), TOLERANCE_FLOAT32)


@pytest.mark.parametrize("seed", SEEDS)
def test_batched_and_single_paths_match(stages, seed):
    ids = _ids(seed, batch=3)
    batched = run_prefill(stages[seed]["f32"], ids)
    single = run_prefill(stages[seed]["f32"], ids[:1])
    assert match(_fp(batched, seed), _fp(single, seed), TOLERANCE_FLOAT32)


@pytest.mark.parametrize("seed", SEEDS)
def test_kv_cache_decode_matches_prefill(stages, seed):
    ids = _ids(seed)
    decoded = run_decode(stages[seed]["f32"], ids)
    assert match(_fp(decoded, seed), _fp(run_prefill(stages[seed]["f32"], ids), seed),
                 TOLERANCE_FLOAT32)


@pytest.mark.parametrize("seed", SEEDS)
def test_bfloat16_replica_matches_float32_under_the_bfloat16_tolerance(stages, seed):
    ids = _ids(seed)
    bf16 = run_prefill(stages[seed]["bf16"], ids)
    f32 = run_prefill(stages[seed]["f32"], ids)
    assert match(_fp(bf16, seed), _fp(f32, seed), tolerance_for({"float32", "bfloat16"}))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("substitute", ["other", "skipped", "half"])
def test_substituted_computation_never_matches(stages, seed, substitute):
    ids = _ids(seed)
    honest = _fp(run_prefill(stages[seed]["f32"], ids), seed)
    cheat = _fp(run_prefill(stages[seed][substitute], ids), seed)
    assert not match(honest, cheat, TOLERANCE_BFLOAT16)
    assert not match(honest, cheat, TOLERANCE_FLOAT32)


@pytest.mark.parametrize("seed", SEEDS)
def test_int8_weights_do_not_match_float32_replicas(stages, seed):
    ids = _ids(seed)
    honest = _fp(run_prefill(stages[seed]["f32"], ids), seed)
    cheat = _fp(run_prefill(stages[seed]["int8"], ids), seed)
    assert not match(honest, cheat, TOLERANCE_FLOAT32)


@pytest.mark.parametrize("seed", SEEDS)
def test_changed_input_token_never_matches(stages, seed):
    ids = _ids(seed)
    changed = ids.clone()
    changed[0, 7] = (changed[0, 7] + 1) % 256
    honest = _fp(run_prefill(stages[seed]["f32"], ids), seed)
    cheat = _fp(run_prefill(stages[seed]["f32"], changed), seed)
    assert not match(honest, cheat, TOLERANCE_BFLOAT16)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("scale", "tolerance"), [(3e-1, TOLERANCE_BFLOAT16),
                                                   (1e-2, TOLERANCE_FLOAT32)])
def test_additive_noise_above_the_tolerance_never_matches(stages, seed, scale, tolerance):
    honest = run_prefill(stages[seed]["f32"], _ids(seed))
    noise = torch.randn(honest.shape, generator=torch.Generator().manual_seed(seed))
    noisy = honest + noise * honest.pow(2).mean().sqrt() * scale
    assert not match(_fp(honest, seed), _fp(noisy, seed), tolerance)


def test_noise_on_a_single_token_is_caught():
    x = torch.randn(1, 64, 128, generator=torch.Generator().manual_seed(5))
    y = x.clone()
    y[0, 40] += 0.1 * torch.randn(128, generator=torch.Generator().manual_seed(6))
    assert not match(_fp(x, 1), _fp(y, 1), TOLERANCE_FLOAT32)


def test_fingerprint_is_compact():
    fp = _fp(torch.randn(1, 10, 4096), 1)
    assert len(fp.values) / fp.tokens == 128


def test_projection_changes_with_every_context_field():
    base = FingerprintContext(NETWORK, b"task", 1, 1)
    others = [FingerprintContext("other", b"task", 1, 1),
              FingerprintContext(NETWORK, b"t2", 1, 1),
              FingerprintContext(NETWORK, b"task", 2, 1),
              FingerprintContext(NETWORK, b"task", 1, 2)]
    assert len({c.seed() for c in [base, *others]}) == 5


def test_projection_matrix_follows_the_spec():
    context = FingerprintContext("testnet", b"\x01" * 16, 3, 7)
    material = msgpack.packb(["testnet", b"\x01" * 16, 3, 7], use_bin_type=True)
    seed = hashlib.sha256(b"p2pinfer/fingerprint/rp-v1\x00" + material).digest()
    assert context.seed() == seed
    first = hashlib.shake_256(seed).digest(1)[0]
    matrix = projection_matrix(seed, 2, 8)
    assert matrix[0].tolist() == [-1.0 if first >> i & 1 else 1.0 for i in range(8)]


def test_identical_activations_have_distance_zero():
    x = torch.randn(1, 5, 64)
    assert distance(_fp(x, 1), _fp(x, 1)) == 0.0


def test_all_zero_activations_match_each_other():
    assert distance(_fp(torch.zeros(1, 3, 64), 1), _fp(torch.zeros(1, 3, 64), 1)) == 0.0


def test_zero_output_does_not_match_a_real_one():
    assert not match(_fp(torch.randn(1, 3, 64), 1), _fp(torch.zeros(1, 3, 64), 1),
                     TOLERANCE_BFLOAT16)


def test_fingerprints_of_different_shapes_are_incomparable():
    assert distance(_fp(torch.randn(1, 3, 64), 1), _fp(torch.randn(1, 4, 64), 1)) == math.inf
    assert distance(_fp(torch.randn(1, 3, 64), 1), _fp(torch.randn(1, 3, 32), 1)) == math.inf


def test_check_tensor_accepts_honest_and_raises_on_substitute():
    x = torch.randn(1, 6, 64)
    expected = _fp(x, 2)
    assert check_tensor(x + 1e-7, expected, _context(2), TOLERANCE_FLOAT32) < TOLERANCE_FLOAT32
    with pytest.raises(FingerprintMismatch):
        check_tensor(x * 1.1, expected, _context(2), TOLERANCE_FLOAT32)


@pytest.mark.parametrize("bad", [torch.randn(2, 3, 8), torch.randn(1, 1, 3, 8), torch.randn(8),
                                 torch.zeros(1, 3, 8, dtype=torch.int64),
                                 torch.full((1, 3, 8), math.nan), torch.full((1, 3, 8), math.inf)])
def test_bad_activations_are_refused(bad):
    with pytest.raises(FingerprintError):
        fingerprint(bad, _context(1))


def test_fingerprint_record_checks_its_size_and_values():
    with pytest.raises(FingerprintError):
        Fingerprint(hidden=8, tokens=2, rank=4, values=b"\x00" * 31)
    with pytest.raises(FingerprintError):
        Fingerprint(hidden=8, tokens=1, rank=1, values=np.array([np.nan], "<f4").tobytes())


def test_unknown_precision_has_no_tolerance():
    with pytest.raises(FingerprintError):
        tolerance_for({"int4"})
    assert tolerance_for({"float32"}) == TOLERANCE_FLOAT32


@settings(deadline=None, max_examples=60)
@given(st.integers(1, 8), st.integers(1, 96), st.integers(0, 2**32 - 1),
       st.floats(0.5, 2.0))
def test_distance_is_symmetric_zero_on_self_and_measures_relative_scale(tokens, hidden, seed,
                                                                        factor):
    x = torch.randn(1, tokens, hidden, generator=torch.Generator().manual_seed(seed)) + 0.1
    a, b = _fp(x, 1), _fp(x * factor, 1)
    assert distance(a, a) == 0.0
    assert distance(a, b) == pytest.approx(distance(b, a))
    assert distance(a, b) == pytest.approx(abs(1 - factor) / max(1.0, factor), rel=1e-3,
                                           abs=1e-6)
