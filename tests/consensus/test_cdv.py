"""Distribution checks: honest streams pass, shifted, scaled, noised or substituted ones do not."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pinfer.consensus import (
    DistributionDrift,
    DriftMonitor,
    ProfileBuilder,
    RunningMoments,
    jensen_shannon,
)
from p2pinfer.consensus.errors import ConsensusError

TOKENS = 12


def _outputs(model: torch.nn.Module, seed: int, count: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 256, (count, TOKENS), generator=gen)
    with torch.no_grad():
        out = model(ids).float()
    return [out[i:i + 1] for i in range(count)]


@pytest.fixture(scope="module")
def honest(stages) -> dict[str, list[torch.Tensor]]:
    model = stages[1]["f32"]
    return {"reference": _outputs(model, 10, 96), "stream": _outputs(model, 11, 120),
            "skipped": _outputs(stages[1]["skipped"], 12, 40)}


@pytest.fixture(scope="module")
def profile(honest):
    builder = ProfileBuilder("tiny-llama", 1, bins=32, window=4)
    for activation in honest["reference"]:
        builder.add(activation)
    return builder.build()


def _flagged(profile, stream) -> bool:
    monitor = DriftMonitor(profile, k=4.0)
    reports = [monitor.observe("peer", a) for a in stream]
    return any(r.flagged for r in reports)


def test_honest_stream_is_not_flagged(profile, honest):
    monitor = DriftMonitor(profile, k=4.0)
    reports = [monitor.observe(f"peer-{i % 3}", a) for i, a in enumerate(honest["stream"])]
    assert not any(r.flagged for r in reports)
    assert monitor.flagged_peers() == ()


def test_shifted_stream_is_flagged(profile, honest):
    std = profile.std
    assert _flagged(profile, [a + 0.3 * std for a in honest["stream"][:12]])


def test_scaled_stream_is_flagged(profile, honest):
    assert _flagged(profile, [a * 1.3 for a in honest["stream"][:12]])


def test_noised_stream_is_flagged(profile, honest):
    gen = torch.Generator().manual_seed(3)
    noisy = [a + 0.75 * profile.std * torch.randn(a.shape, generator=gen)
             for a in honest["stream"][:12]]
    assert _flagged(profile, noisy)


def test_stage_with_a_skipped_layer_is_flagged(profile, honest):
    assert _flagged(profile, honest["skipped"][:12])


def test_only_the_drifting_peer_is_flagged(profile, honest):
    monitor = DriftMonitor(profile)
    for a in honest["stream"][:20]:
        monitor.observe("honest", a)
        report = monitor.observe("cheat", a * 1.5)
    assert monitor.flagged_peers() == ("cheat",)
    with pytest.raises(DistributionDrift) as caught:
        report.raise_if_flagged()
    assert caught.value.peer == "cheat"
    monitor.clear("cheat")
    assert monitor.flagged_peers() == ()


def test_nothing_is_flagged_before_a_full_window(profile, honest):
    monitor = DriftMonitor(profile)
    reports = [monitor.observe("p", a * 3.0) for a in honest["stream"][:3]]
    assert not any(r.flagged for r in reports)
    assert monitor.observe("p", honest["stream"][3] * 3.0).flagged


def test_non_finite_output_is_flagged_at_once(profile):
    monitor = DriftMonitor(profile)
    assert monitor.observe("p", torch.full((1, TOKENS, 128), float("nan"))).flagged


def test_threshold_adapts_to_honest_windows(profile, honest):
    monitor = DriftMonitor(profile, history=16)
    before = monitor.threshold
    for a in honest["stream"][:40]:
        monitor.observe("p", a)
    assert monitor.threshold != before
    assert np.isfinite(monitor.threshold)


def test_profile_records_reference_moments(profile, honest):
    values = torch.cat([a.flatten() for a in honest["reference"]]).double().numpy()
    assert profile.mean == pytest.approx(values.mean(), rel=1e-6, abs=1e-9)
    assert profile.std == pytest.approx(values.std(), rel=1e-6)
    assert sum(profile.probabilities) == pytest.approx(1.0)


def test_running_moments_match_numpy_batch_by_batch():
    rng = np.random.default_rng(0)
    data = rng.gamma(2.0, size=5000)
    moments = RunningMoments()
    for chunk in np.array_split(data, 7):
        moments.update(chunk)
    centred = data - data.mean()
    assert moments.mean == pytest.approx(data.mean())
    assert moments.variance == pytest.approx(data.var())
    assert moments.skewness == pytest.approx((centred**3).mean() / data.std() ** 3)
    assert moments.kurtosis == pytest.approx((centred**4).mean() / data.var() ** 2 - 3.0)


def test_jensen_shannon_bounds():
    assert jensen_shannon(np.array([1.0, 1.0]), np.array([2.0, 2.0])) == 0.0
    assert jensen_shannon(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == pytest.approx(1.0)
    with pytest.raises(ConsensusError):
        jensen_shannon(np.array([1.0]), np.array([1.0, 1.0]))


def test_profile_needs_enough_observations(honest):
    builder = ProfileBuilder("m", 0, window=4)
    for a in honest["reference"][:10]:
        builder.add(a)
    with pytest.raises(ConsensusError):
        builder.build()


@pytest.mark.parametrize("bins", [1, 5000])
def test_bad_bin_count_is_refused(bins):
    with pytest.raises(ConsensusError):
        ProfileBuilder("m", 0, bins=bins)


@settings(deadline=None, max_examples=60)
@given(st.lists(st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=40), min_size=1,
                max_size=6))
def test_merged_moments_equal_the_moments_of_the_whole(chunks):
    moments = RunningMoments()
    for chunk in chunks:
        moments.update(np.array(chunk))
    data = np.concatenate([np.array(c) for c in chunks])
    assert moments.count == data.size
    assert moments.mean == pytest.approx(data.mean(), abs=1e-6)
    assert moments.variance == pytest.approx(data.var(), rel=1e-6, abs=1e-6)
