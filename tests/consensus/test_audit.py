"""Adaptive random audits: analytic detection probability, simulation, reputation-driven rate."""

from __future__ import annotations

import pytest

from p2pinfer.consensus import AuditPolicy, detection_probability, simulate_detection
from p2pinfer.consensus.errors import ConsensusError


def test_detection_probability_formula():
    assert detection_probability(0.1, 0.5, 10) == pytest.approx(1 - 0.95**10)
    assert detection_probability(0.0, 1.0, 100) == 0.0
    assert detection_probability(1.0, 1.0, 1) == 1.0


@pytest.mark.parametrize(("a", "f", "n"), [(0.1, 0.5, 10), (0.05, 1.0, 20), (0.3, 0.2, 5)])
def test_simulation_measures_the_analytic_probability(a, f, n):
    measured = simulate_detection(a, f, n, runs=5000, seed=1)
    assert measured == pytest.approx(detection_probability(a, f, n), abs=0.03)


def test_simulation_is_deterministic_for_a_seed():
    assert simulate_detection(0.2, 0.3, 10, 500, 9) == simulate_detection(0.2, 0.3, 10, 500, 9)


@pytest.mark.parametrize(("a", "f", "n"), [(-0.1, 0.5, 1), (0.1, 1.5, 1), (0.1, 0.5, -1)])
def test_out_of_range_arguments_are_refused(a, f, n):
    with pytest.raises(ConsensusError):
        detection_probability(a, f, n)


def test_low_reputation_raises_and_trust_lowers_the_rate():
    policy = AuditPolicy(base_rate=0.1, min_rate=0.02, max_rate=0.5)
    assert policy.rate(0.5) == pytest.approx(0.1)
    assert policy.rate(0.0) == pytest.approx(0.5)
    assert policy.rate(1.0) == pytest.approx(0.02)
    assert policy.rate(0.25) > policy.rate(0.5) > policy.rate(0.75)


def test_audit_decisions_follow_the_rate_and_are_reproducible():
    policy = AuditPolicy(base_rate=0.1, min_rate=0.02, max_rate=0.5)
    key = b"k" * 32

    def fraction(score: float) -> float:
        picks = [policy.should_audit(key, "net", b"task", s, step, "peer", score)
                 for s in range(4) for step in range(500)]
        return sum(picks) / len(picks)

    assert fraction(0.0) == pytest.approx(0.5, abs=0.05)
    assert fraction(1.0) == pytest.approx(0.02, abs=0.015)
    assert policy.should_audit(key, "net", b"t", 1, 2, "p", 0.5) == \
        policy.should_audit(key, "net", b"t", 1, 2, "p", 0.5)


def test_short_audit_key_is_refused():
    with pytest.raises(ConsensusError):
        AuditPolicy().should_audit(b"short", "net", b"t", 0, 0, "p", 0.5)


def test_inconsistent_rates_are_refused():
    with pytest.raises(ConsensusError):
        AuditPolicy(base_rate=0.6, min_rate=0.02, max_rate=0.5)
