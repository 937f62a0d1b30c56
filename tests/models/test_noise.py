"""Clipped Gaussian noise on boundary activations and its analytic (epsilon, delta)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pinfer.models import (
    BoundaryNoise,
    ModelError,
    clip_rows,
    gaussian_delta,
    gaussian_epsilon,
    gaussian_sigma,
)


def test_delta_at_known_point():
    # 1-GDP at epsilon = 1: Phi(-0.5) - e * Phi(-1.5) = 0.3085375 - 2.7182818 * 0.0668072
    assert gaussian_delta(1.0, sigma=1.0, sensitivity=1.0) == pytest.approx(0.1269363, abs=1e-6)


def test_delta_at_epsilon_zero_is_total_variation():
    # delta(0) = 2 Phi(D / 2 sigma) - 1; D / 2 sigma = 1 gives 0.6826895 (the 1-sigma rule).
    assert gaussian_delta(0.0, sigma=1.0, sensitivity=2.0) == pytest.approx(0.6826895, abs=1e-6)


@pytest.mark.parametrize("eps0, delta", [(0.1, 1e-5), (0.5, 1e-6), (0.9, 1e-3)])
def test_analytic_epsilon_beats_the_classical_calibration(eps0, delta):
    # Dwork & Roth Thm A.1: sigma = D sqrt(2 ln(1.25/delta)) / eps suffices for eps < 1.
    sigma = math.sqrt(2 * math.log(1.25 / delta)) / eps0
    eps = gaussian_epsilon(sigma, 1.0, delta)
    assert 0.5 * eps0 < eps < eps0


def test_epsilon_round_trips_through_delta():
    eps = gaussian_epsilon(sigma=3.0, sensitivity=2.0, delta=1e-5)
    assert gaussian_delta(eps, 3.0, 2.0) == pytest.approx(1e-5, rel=1e-6)
    assert gaussian_delta(eps * 0.99, 3.0, 2.0) > 1e-5


def test_sigma_calibration_inverts_epsilon():
    sigma = gaussian_sigma(epsilon=1.0, delta=1e-5, sensitivity=2.0)
    assert gaussian_epsilon(sigma, 2.0, 1e-5) == pytest.approx(1.0, rel=1e-6)


@settings(deadline=None, max_examples=40)
@given(
    st.floats(min_value=0.05, max_value=50.0),
    st.floats(min_value=1.05, max_value=4.0),
    st.sampled_from([1e-3, 1e-5, 1e-9]),
)
def test_epsilon_decreases_as_sigma_grows(sigma, factor, delta):
    assert gaussian_epsilon(sigma * factor, 1.0, delta) <= gaussian_epsilon(sigma, 1.0, delta)


def test_tail_is_finite_for_small_sigma():
    eps = gaussian_epsilon(sigma=0.01, sensitivity=1.0, delta=1e-10)
    assert math.isfinite(eps) and eps > 1000


def test_no_noise_means_no_privacy():
    assert gaussian_epsilon(0.0, 1.0, 1e-5) == math.inf
    assert BoundaryNoise(clip_norm=1.0, sigma=0.0).cost(4).epsilon == math.inf


def test_huge_noise_means_epsilon_zero():
    assert gaussian_epsilon(1e6, 1.0, 1e-5) == 0.0


@settings(deadline=None, max_examples=30)
@given(st.floats(min_value=0.01, max_value=100.0), st.integers(min_value=0, max_value=2**31))
def test_clipped_rows_have_norm_at_most_c(clip, seed):
    x = 10 * torch.randn(1, 5, 16, generator=torch.Generator().manual_seed(seed))
    norms = torch.linalg.vector_norm(clip_rows(x, clip), dim=-1)
    assert bool((norms <= clip * (1 + 1e-5)).all())


def test_rows_under_the_clip_norm_are_unchanged():
    x = torch.full((1, 2, 4), 0.1)
    assert torch.equal(clip_rows(x, 1.0), x)


def test_noise_has_the_requested_scale_and_cost():
    noise = BoundaryNoise(clip_norm=1.0, sigma=0.5, delta=1e-5)
    x = torch.zeros(1, 64, 256)
    noisy, cost = noise.apply(x, torch.Generator().manual_seed(0))
    assert noisy.shape == x.shape and noisy.dtype == x.dtype
    assert float(noisy.std()) == pytest.approx(0.5, rel=0.02)
    assert cost.sensitivity == 2.0 and cost.num_tokens == 64
    assert cost.epsilon == pytest.approx(gaussian_epsilon(0.5, 2.0, 1e-5))
    assert cost.epsilon_sequence == pytest.approx(gaussian_epsilon(0.5, 16.0, 1e-5))
    assert cost.epsilon_sequence > cost.epsilon


def test_default_noise_comes_from_the_os_and_differs_per_call():
    noise = BoundaryNoise(clip_norm=1.0, sigma=1.0)
    x = torch.zeros(1, 8, 64)
    a, _ = noise.apply(x)
    b, _ = noise.apply(x)
    assert not torch.equal(a, b)
    assert float(a.std()) == pytest.approx(1.0, rel=0.15)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"clip_norm": 0.0, "sigma": 1.0},
        {"clip_norm": 1.0, "sigma": -1.0},
        {"clip_norm": 1.0, "sigma": 1.0, "delta": 0.0},
        {"clip_norm": math.inf, "sigma": 1.0},
    ],
)
def test_bad_noise_parameters_are_a_model_error(kwargs):
    with pytest.raises(ModelError):
        BoundaryNoise(**kwargs)
