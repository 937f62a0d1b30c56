"""The pure helpers of the calibration, privacy and benchmark tools (the tools themselves run
real models for minutes and stay out of the suite)."""

from __future__ import annotations

import importlib.util
import sys
from itertools import pairwise
from pathlib import Path

import pytest
import torch

TOOLS = Path(__file__).resolve().parents[1] / "tools"


def _tool(name: str):
    spec = importlib.util.spec_from_file_location(f"_tool_{name}", TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def calibrate():
    return _tool("calibrate_fingerprints")


def test_int8_requantize_per_channel_lies_on_the_grid(calibrate):
    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(1))
    q = calibrate.requantize(w, 8, None)
    assert q.shape == w.shape and q.dtype == w.dtype
    scale = w.abs().amax(dim=1, keepdim=True) / 127
    steps = q / scale
    assert torch.allclose(steps, steps.round(), atol=1e-3)
    assert (q - w).abs().le(scale / 2 + 1e-6).all()
    assert not torch.equal(q, w)


def test_4bit_requantize_per_block_has_at_most_16_levels(calibrate):
    w = torch.randn(8, 128, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    q = calibrate.requantize(w, 4, 32)
    assert q.dtype == torch.bfloat16 and q.shape == w.shape
    for block in q.float().reshape(-1, 32):
        assert len(torch.unique(block)) <= 16
    err = (q.float() - w.float()).abs().max()
    assert 0 < err <= w.float().abs().max() / 7


def test_per_token_noise_scales_with_each_token(calibrate):
    x = torch.randn(1, 5, 256, generator=torch.Generator().manual_seed(3))
    x[0, 0] *= 1000  # an outlier token must not set the noise of the others
    gen = torch.Generator().manual_seed(4)
    noisy = calibrate.per_token_noise(x, 0.1, gen)
    rel = (noisy - x).norm(dim=-1) / x.norm(dim=-1)
    assert torch.allclose(rel, torch.full_like(rel, 0.1), rtol=0.2)
    one = calibrate.per_token_noise(x, 0.1, gen, token=2)
    changed = (one != x).any(dim=-1)[0].tolist()
    assert changed == [False, False, True, False, False]


def test_plain_word_pieces():
    audit = _tool("privacy_audit")
    assert audit.plain_word("river") and audit.plain_word("\u0120river")
    assert audit.plain_word("\u2581river")
    for piece in ("##ing", "\u0120,", "\u0120River", "an", "\u0120caf\u00e9", "<|im_end|>"):
        assert not audit.plain_word(piece), piece


@pytest.mark.parametrize("layers", [6, 7, 12, 30, 32])
def test_bench_spans_cover_the_middle_layers(layers):
    spans = _tool("bench_inference").spans_for(layers)
    assert len(spans) == 4 and spans[0][0] == 1 and spans[-1][1] == layers - 1
    assert all(a < b for a, b in spans)
    assert all(left[1] == right[0] for left, right in pairwise(spans))
    if layers == 12:  # the random 108M model keeps its historical split
        assert spans == [[1, 4], [4, 6], [6, 9], [9, 11]]


def test_side_by_side_judges_pairs_at_their_class_tolerance():
    compare = _tool("fingerprint_compare")
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(1, 6, 64, generator=gen)

    def moved(scale: float) -> torch.Tensor:
        d = torch.randn(x.shape, generator=gen)
        return x + scale * d / d.norm(dim=-1, keepdim=True) * x.norm(dim=-1, keepdim=True)

    pairs = [
        compare.Pair("float32: honest", True, x, moved(1e-7), "float32", "float32"),
        compare.Pair("float32: int8-like", False, x, moved(3e-2), "float32", "float32"),
        compare.Pair("mixed: int8-like", False, x, moved(3e-2), "float32", "bfloat16"),
        compare.Pair("float32: copied", False, x, x, "float32", "float32", other_task=True),
    ]
    verdicts = compare.judge_ours(pairs, seed=1)
    assert verdicts["float32: honest"].accepted == [True]
    assert verdicts["float32: int8-like"].accepted == [False]
    assert verdicts["mixed: int8-like"].accepted == [True]  # within bfloat16 rounding
    assert verdicts["float32: copied"].accepted == [False]
    assert compare._rate(verdicts["float32: honest"], True) == "FR 0%"
    assert compare._rate(verdicts["mixed: int8-like"], False) == "FA 100%"
