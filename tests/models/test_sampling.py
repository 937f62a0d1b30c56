"""Next-token choice: greedy, temperature and nucleus sampling with a seeded generator."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pinfer.models import ModelError, Sampler, SamplingParams, generate


def test_greedy_picks_the_argmax_of_the_last_position():
    logits = torch.zeros(1, 3, 10)
    logits[0, -1, 7] = 5.0
    logits[0, 0, 2] = 9.0  # an earlier position does not count
    assert Sampler()(logits) == 7


def test_same_seed_same_samples():
    logits = torch.randn(50)
    params = SamplingParams(temperature=1.0, seed=42)
    a, b = Sampler(params), Sampler(params)
    assert [a(logits) for _ in range(20)] == [b(logits) for _ in range(20)]


def test_tiny_top_p_keeps_only_the_most_likely_token():
    logits = torch.randn(50, generator=torch.Generator().manual_seed(1))
    sampler = Sampler(SamplingParams(temperature=2.0, top_p=1e-6, seed=3))
    assert {sampler(logits) for _ in range(30)} == {int(logits.argmax())}


def test_top_p_never_samples_outside_the_nucleus():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    sampler = Sampler(SamplingParams(temperature=1.0, top_p=0.8, seed=5))
    seen = {sampler(probs.log()) for _ in range(300)}
    assert seen == {0, 1}


@settings(deadline=None, max_examples=25)
@given(st.integers(min_value=2, max_value=40), st.integers(min_value=0, max_value=2**31))
def test_temperature_sampling_returns_a_valid_token(vocab, seed):
    logits = torch.randn(vocab, generator=torch.Generator().manual_seed(seed))
    token = Sampler(SamplingParams(temperature=0.7, top_p=0.9, seed=seed))(logits)
    assert 0 <= token < vocab


@pytest.mark.parametrize(
    "kwargs", [{"temperature": -1.0}, {"temperature": float("nan")}, {"top_p": 0.0}, {"top_p": 1.5}]
)
def test_bad_sampling_parameters_are_a_model_error(kwargs):
    with pytest.raises(ModelError):
        SamplingParams(**kwargs)


def test_generate_stops_after_a_stop_token():
    calls = []

    def step(tokens, pos):
        calls.append((list(tokens), pos))
        logits = torch.zeros(5)
        logits[len(calls) % 5] = 1.0
        return logits

    out = generate(step, [4, 4], 10, stop_ids=[3])
    assert out == [1, 2, 3]
    assert calls == [([4, 4], 0), ([1], 2), ([2], 3)]


def test_generate_needs_a_prompt():
    with pytest.raises(ModelError):
        generate(lambda t, p: torch.zeros(3), [], 3)
