"""Gaussian noise on the split-learning boundary activation, with its (epsilon, delta) cost.

Each token's row of the outgoing activation [1, T, H] is clipped to L2 norm <= C, then
N(0, sigma^2) noise is added to every coordinate. Privacy accounting uses the analytic Gaussian
mechanism (Balle & Wang 2018, "Improving the Gaussian Mechanism for Differential Privacy",
Theorem 8): with L2 sensitivity D the mechanism is (epsilon, delta)-DP iff

    Phi(D / (2 sigma) - epsilon sigma / D) - e^epsilon Phi(-D / (2 sigma) - epsilon sigma / D) <= delta.

Sensitivity assumed (`epsilon`): neighbouring inputs differ by replacing one token, which changes
at most one clipped row, so D = 2C. That is exact for k = 0 (the embedding layer is per token);
after k >= 1 attention layers a replaced token also moves the rows after it, and the sound bound
is D = 2C sqrt(T) (`epsilon_sequence`). Costs are per forward pass (one query); T decode steps
compose (sum of epsilons is a simple, loose bound). Noise here is a weak, utility-costly
protection: prefer TEE channels when the data matters. Floating-point noise sampling is also
known to leak in theory (Mironov 2012); we sample from the OS CSPRNG by default.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import torch

from p2pinfer.models.errors import ModelError

_SQRT2 = math.sqrt(2.0)
_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)
_MAX_EPSILON = 1e6


def _log_phi(x: float) -> float:
    """log of the standard normal CDF, accurate far into the lower tail."""
    if x > -35.0:
        return math.log(0.5 * math.erfc(-x / _SQRT2))
    x2 = x * x  # asymptotic series: Phi(x) ~ phi(x)/|x| (1 - 1/x^2 + 3/x^4 - 15/x^6)
    return -x2 / 2 - math.log(-x) - _LOG_SQRT_2PI + math.log1p(-1 / x2 + 3 / x2**2 - 15 / x2**3)


def _check(sigma: float, sensitivity: float) -> None:
    if not (math.isfinite(sigma) and sigma >= 0):
        raise ModelError(f"sigma must be a finite number >= 0, got {sigma}")
    if not (math.isfinite(sensitivity) and sensitivity > 0):
        raise ModelError(f"sensitivity must be > 0, got {sensitivity}")


def gaussian_delta(epsilon: float, sigma: float, sensitivity: float) -> float:
    """Smallest delta for which N(0, sigma^2) noise at L2 `sensitivity` is (epsilon, delta)-DP."""
    _check(sigma, sensitivity)
    if sigma == 0:
        return 1.0
    a, b = sensitivity / (2 * sigma), epsilon * sigma / sensitivity
    first = 0.5 * math.erfc(-(a - b) / _SQRT2)
    second = math.exp(epsilon + _log_phi(-a - b))
    return max(0.0, first - second)


def gaussian_epsilon(sigma: float, sensitivity: float, delta: float) -> float:
    """Smallest epsilon (to 1e-9 relative) with (epsilon, delta)-DP; inf without noise."""
    _check(sigma, sensitivity)
    if not 0 < delta < 1:
        raise ModelError(f"delta must lie in (0, 1), got {delta}")
    if sigma == 0:
        return math.inf
    if gaussian_delta(0.0, sigma, sensitivity) <= delta:
        return 0.0
    lo, hi = 0.0, 1.0
    while gaussian_delta(hi, sigma, sensitivity) > delta:
        lo, hi = hi, hi * 2
        if hi > _MAX_EPSILON:
            return math.inf
    while hi - lo > 1e-9 * hi:
        mid = (lo + hi) / 2
        if gaussian_delta(mid, sigma, sensitivity) > delta:
            lo = mid
        else:
            hi = mid
    return hi


def gaussian_sigma(epsilon: float, delta: float, sensitivity: float) -> float:
    """Smallest sigma making the Gaussian mechanism (epsilon, delta)-DP (analytic calibration)."""
    if not (math.isfinite(epsilon) and epsilon > 0) or not 0 < delta < 1:
        raise ModelError("calibration needs epsilon > 0 and delta in (0, 1)")
    lo, hi = 0.0, sensitivity
    while gaussian_delta(epsilon, hi, sensitivity) > delta:
        lo, hi = hi, hi * 2
    while hi - lo > 1e-9 * hi:
        mid = (lo + hi) / 2
        if gaussian_delta(epsilon, mid, sensitivity) > delta:
            lo = mid
        else:
            hi = mid
    return hi


@dataclass(frozen=True)
class PrivacyCost:
    """(epsilon, delta) of one noisy boundary activation of `num_tokens` rows."""

    epsilon: float
    epsilon_sequence: float
    delta: float
    sensitivity: float
    sigma: float
    num_tokens: int


def clip_rows(hidden: torch.Tensor, clip_norm: float) -> torch.Tensor:
    """Scale each row (last dimension) down to L2 norm <= clip_norm."""
    norms = torch.linalg.vector_norm(hidden.float(), dim=-1, keepdim=True)
    scale = torch.clamp(clip_norm / torch.clamp(norms, min=1e-12), max=1.0)
    return (hidden.float() * scale).to(hidden.dtype)


def _os_gaussian(shape: tuple[int, ...]) -> torch.Tensor:
    """Standard normal samples from os.urandom (Box-Muller on 53-bit uniforms), float64."""
    n = math.prod(shape)
    raw = np.frombuffer(os.urandom(16 * n), dtype="<u8").reshape(2, n) >> np.uint64(11)
    u1 = (raw[0].astype(np.float64) + 1.0) * 2.0**-53  # (0, 1]
    u2 = raw[1].astype(np.float64) * 2.0**-53  # [0, 1)
    z = np.sqrt(-2.0 * np.log(u1)) * np.cos(2 * np.pi * u2)
    return torch.from_numpy(z.reshape(shape))


@dataclass(frozen=True)
class BoundaryNoise:
    """Clip each token row to `clip_norm`, add N(0, sigma^2) per coordinate.

    `sigma` is in activation units; the privacy cost depends on sigma / clip_norm.
    """

    clip_norm: float
    sigma: float
    delta: float = 1e-5

    def __post_init__(self) -> None:
        if not (math.isfinite(self.clip_norm) and self.clip_norm > 0):
            raise ModelError(f"clip_norm must be > 0, got {self.clip_norm}")
        _check(self.sigma, 2 * self.clip_norm)
        if not 0 < self.delta < 1:
            raise ModelError(f"delta must lie in (0, 1), got {self.delta}")

    def cost(self, num_tokens: int) -> PrivacyCost:
        row = 2 * self.clip_norm
        return PrivacyCost(
            epsilon=gaussian_epsilon(self.sigma, row, self.delta),
            epsilon_sequence=gaussian_epsilon(self.sigma, row * math.sqrt(num_tokens), self.delta),
            delta=self.delta,
            sensitivity=row,
            sigma=self.sigma,
            num_tokens=num_tokens,
        )

    def apply(
        self, hidden: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, PrivacyCost]:
        """Noisy copy of `hidden` [1, T, H] and its cost. Without `generator` the noise comes
        from the OS CSPRNG; pass a seeded generator only for reproducible experiments."""
        if not isinstance(hidden, torch.Tensor) or hidden.dim() != 3:
            raise ModelError("boundary activation must be a tensor [1, T, H]")
        clipped = clip_rows(hidden, self.clip_norm)
        if self.sigma > 0:
            shape = tuple(hidden.shape)
            if generator is None:
                noise = _os_gaussian(shape)
            else:
                noise = torch.randn(shape, generator=generator, dtype=torch.float64)
            clipped = (clipped.double() + self.sigma * noise).to(hidden.dtype)
        return clipped, self.cost(hidden.shape[1])
