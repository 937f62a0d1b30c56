"""Choosing the next token: greedy, temperature, nucleus (top-p, Holtzman et al. 2020, sec. 3.1).

A `Sampler` owns a seeded CPU `torch.Generator`, so a requester can reproduce a generation
exactly. `generate` drives any step function, local or distributed, with the same sampling.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from p2pinfer.models.errors import ModelError


@dataclass(frozen=True)
class SamplingParams:
    """temperature 0 means greedy (argmax); top_p 1.0 keeps the whole distribution."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ModelError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ModelError(f"top_p must lie in (0, 1], got {self.top_p}")


class Sampler:
    def __init__(self, params: SamplingParams | None = None) -> None:
        self.params = params or SamplingParams()
        self.generator = torch.Generator(device="cpu")
        if self.params.seed is not None:
            self.generator.manual_seed(self.params.seed)
        else:
            self.generator.seed()

    def __call__(self, logits: torch.Tensor) -> int:
        """Next token id from logits [V], [1, V] or [1, T, V] (the last position is used)."""
        if not isinstance(logits, torch.Tensor) or logits.dim() not in (1, 2, 3):
            raise ModelError("logits must be a tensor [V], [1, V] or [1, T, V]")
        row = logits.reshape(-1, logits.shape[-1])[-1].float()
        if self.params.temperature == 0:
            return int(torch.argmax(row))
        probs = torch.softmax(row / self.params.temperature, dim=-1)
        if self.params.top_p < 1:
            sorted_probs, order = torch.sort(probs, descending=True)
            before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
            sorted_probs[before >= self.params.top_p] = 0  # keep the smallest set reaching p
            probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
        return int(torch.multinomial(probs, 1, generator=self.generator))


StepFn = Callable[[Sequence[int], int], torch.Tensor]


def generate(
    step: StepFn,
    prompt: Sequence[int],
    max_new_tokens: int,
    sampler: Sampler | None = None,
    stop_ids: Sequence[int] = (),
) -> list[int]:
    """Autoregressive loop: `step(new_tokens, start_pos)` returns logits for the last position.

    The first call is the prompt prefill at position 0, then one token per call. Returns the
    generated ids (without the prompt), stopping after a token in `stop_ids`.
    """
    if not prompt:
        raise ModelError("the prompt needs at least one token")
    sampler = sampler or Sampler()
    out: list[int] = []
    pending, pos = list(prompt), 0
    for _ in range(max_new_tokens):
        logits = step(pending, pos)
        pos += len(pending)
        token = sampler(logits)
        out.append(token)
        if token in stop_ids:
            break
        pending = [token]
    return out
