"""KV caches: bookkeeping, erasure, replay, and mismatches caught as typed errors."""

from __future__ import annotations

import pytest
import torch

from p2pinfer.models import CacheError, ClientHead, ClientTail, KVCache, LayerSpan, LocalModel
from tests.models.tiny_checkpoints import random_ids


def test_cache_length_and_nbytes_follow_the_sequence(checkpoints):
    span = LayerSpan.load(checkpoints["llama"][0], 0, 2)
    cache = span.new_cache()
    assert cache.length == 0 and cache.nbytes == 0
    span.forward(torch.randn(1, 3, 64), cache, 0)
    assert cache.length == 3
    # 2 layers x (keys + values) x [1, 2 kv heads, 64 slots, 16] float32
    assert cache.nbytes == 2 * 2 * 2 * 64 * 16 * 4
    span.forward(torch.randn(1, 70, 64), cache, 3)
    assert cache.length == 73 and cache.nbytes == 2 * 2 * 2 * 128 * 16 * 4


def test_erase_zeroes_then_frees_the_tensors(checkpoints):
    span = LayerSpan.load(checkpoints["llama"][0], 0, 2)
    cache = span.new_cache()
    span.forward(torch.randn(1, 4, 64), cache, 0)
    held = list(cache._keys) + list(cache._values)
    cache.erase()
    assert all(int(t.count_nonzero()) == 0 for t in held)
    assert cache.length == 0 and cache.nbytes == 0
    span.forward(torch.randn(1, 2, 64), cache, 0)  # reusable afterwards
    assert cache.length == 2


def test_truncate_then_replay_reproduces_the_logits(checkpoints):
    path, _ = checkpoints["mistral"]
    model = LocalModel.load(path)
    cache = model.new_cache()
    ids = random_ids(10, seed=11)
    first = model.forward(ids, cache, 0)
    cache.truncate(6)
    assert cache.length == 6
    replay = model.forward(ids[:, 6:], cache, 6)
    assert torch.allclose(replay, first[:, 6:], atol=1e-5, rtol=0)
    cache.reset()
    again = model.forward(ids, cache, 0)
    assert torch.allclose(again, first, atol=1e-6, rtol=0)


def test_start_pos_out_of_step_with_the_cache_is_a_cache_error(checkpoints):
    span = LayerSpan.load(checkpoints["llama"][0], 0, 1)
    cache = span.new_cache()
    span.forward(torch.randn(1, 3, 64), cache, 0)
    with pytest.raises(CacheError, match="does not follow"):
        span.forward(torch.randn(1, 1, 64), cache, 5)
    assert cache.length == 3


def test_start_pos_without_a_cache_is_a_cache_error(checkpoints):
    span = LayerSpan.load(checkpoints["gpt2"][0], 0, 1)
    with pytest.raises(CacheError):
        span.forward(torch.randn(1, 1, 64), None, 3)


def test_cache_of_another_span_is_a_cache_error(checkpoints):
    path = checkpoints["llama"][0]
    a, b = LayerSpan.load(path, 0, 1), LayerSpan.load(path, 1, 3)
    with pytest.raises(CacheError, match="different span"):
        b.forward(torch.randn(1, 2, 64), a.new_cache(), 0)
    with pytest.raises(CacheError):
        b.forward(torch.randn(1, 2, 64), object(), 0)


def test_sequence_past_the_model_maximum_is_rejected(checkpoints):
    head = ClientHead.load(checkpoints["gpt2"][0], 1)  # 128 positions
    cache = head.new_cache()
    head.forward(random_ids(120), cache, 0)
    with pytest.raises(CacheError):
        cache.reserve(129)
    from p2pinfer.models import SpanInputError

    with pytest.raises(SpanInputError, match="exceed"):
        head.forward(random_ids(9), cache, 120)


def test_truncate_beyond_the_length_is_a_cache_error():
    cache = KVCache(1, 1, 4, 16)
    with pytest.raises(CacheError):
        cache.truncate(1)


def test_encoders_have_no_cache(checkpoints):
    tail = ClientTail.load(checkpoints["bert"][0], 1)
    assert tail.new_cache() is None


def test_cache_repr_shows_no_contents(checkpoints):
    span = LayerSpan.load(checkpoints["llama"][0], 0, 1)
    cache = span.new_cache()
    span.forward(torch.full((1, 2, 64), 0.123), cache, 0)
    assert "0.123" not in repr(cache) and "tensor" not in repr(cache)


def test_layer_views_hold_the_committed_positions(checkpoints):
    span = LayerSpan.load(checkpoints["llama"][0], 0, 2)
    cache = span.new_cache()
    keys, values = cache.layer(1)
    assert keys.shape == (1, 2, 0, 16)
    span.forward(torch.randn(1, 3, 64), cache, 0)
    keys, values = cache.layer(1)
    assert keys.shape == values.shape == (1, 2, 3, 16)
    with pytest.raises(CacheError):
        cache.layer(2)
