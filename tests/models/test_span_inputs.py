"""Inputs a peer may send a span: wrong shape, dtype, values or positions are typed errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from p2pinfer.models import ClientHead, ClientTail, LayerSpan, SpanInputError


@pytest.fixture(scope="module")
def span(checkpoints):
    return LayerSpan.load(checkpoints["qwen2"][0], 1, 3)


@pytest.mark.parametrize(
    "hidden",
    [
        torch.randn(64),
        torch.randn(3, 64),
        torch.randn(2, 3, 64),
        torch.randn(1, 3, 32),
        torch.randn(1, 0, 64),
        torch.randn(1, 3, 64, 1),
    ],
    ids=["1d", "2d", "batch2", "hidden32", "empty", "4d"],
)
def test_wrong_shape_is_a_span_input_error(span, hidden):
    with pytest.raises(SpanInputError, match="shape"):
        span.forward(hidden)


def test_wrong_dtype_is_a_span_input_error(span):
    with pytest.raises(SpanInputError, match="float32"):
        span.forward(torch.randn(1, 3, 64, dtype=torch.float64))
    with pytest.raises(SpanInputError):
        span.forward(torch.ones(1, 3, 64, dtype=torch.int64))


def test_non_tensor_is_a_span_input_error(span):
    with pytest.raises(SpanInputError, match="tensor"):
        span.forward(np.zeros((1, 3, 64), dtype=np.float32))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_values_are_a_span_input_error(span, bad):
    hidden = torch.randn(1, 3, 64)
    hidden[0, 1, 5] = bad
    with pytest.raises(SpanInputError, match="NaN"):
        span.forward(hidden)


@pytest.mark.parametrize("pos", [-1, 1.5, True, "0"])
def test_bad_start_pos_is_a_span_input_error(span, pos):
    with pytest.raises(SpanInputError, match="start_pos"):
        span.forward(torch.randn(1, 1, 64), span.new_cache(), pos)


@pytest.mark.parametrize(
    "tokens",
    [[], [128], [-1], [1.0], "abc", torch.tensor([1, 2]), torch.tensor([[1.0]]), [[1, 2]]],
    ids=["empty", "past-vocab", "negative", "float", "str", "1d", "float-tensor", "nested"],
)
def test_bad_tokens_are_a_span_input_error(checkpoints, tokens):
    head = ClientHead.load(checkpoints["llama"][0], 1)
    with pytest.raises(SpanInputError):
        head.forward(tokens)


def test_encoder_refuses_cached_or_offset_input(checkpoints):
    path = checkpoints["bert"][0]
    span = LayerSpan.load(path, 0, 2)
    with pytest.raises(SpanInputError, match="whole sequence"):
        span.forward(torch.randn(1, 3, 64), None, 2)
    tail = ClientTail.load(path, 1)
    assert tail.forward(torch.randn(1, 3, 64)).shape == (1, 64)
