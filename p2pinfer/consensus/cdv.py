"""Distribution checks on stage outputs (CDV), usable even when a stage has one replica.

Paper, section "Consensus-based verification" (distribution-based checks): a peer that
substitutes a cheaper computation shifts the statistical distribution of its outputs. For each
(model, stage) a `ReferenceProfile` holds moments (Welford-style running mean, variance,
skewness, kurtosis; Pebay's pairwise update formulas) and a fixed-bin histogram of honest
outputs, with bin edges at quantiles of honest values so every bin is equally likely. A
`DriftMonitor` sums each peer's last few output histograms and measures the Jensen-Shannon
divergence (bits) to the reference. The threshold adapts: mean + k * std of recent honest
window divergences, seeded from held-out honest observations of the profile and refreshed
with windows that were not flagged.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np
import torch

from p2pinfer.consensus.errors import ConsensusError, DistributionDrift

MAX_BINS = 1024


@dataclass
class RunningMoments:
    """Count, mean and central moment sums M2..M4 of a stream, merged batch by batch."""

    count: int = 0
    mean: float = 0.0
    m2: float = 0.0
    m3: float = 0.0
    m4: float = 0.0

    def update(self, values: np.ndarray) -> None:
        """Fold a batch of values in."""
        x = np.asarray(values, dtype=np.float64).ravel()
        if x.size == 0:
            return
        d = x - x.mean()
        self.merge(RunningMoments(x.size, float(x.mean()), float((d**2).sum()),
                                  float((d**3).sum()), float((d**4).sum())))

    def merge(self, other: RunningMoments) -> None:
        """Fold another stream's moments in (pairwise combination formulas)."""
        if other.count == 0:
            return
        na, nb = self.count, other.count
        n = na + nb
        delta = other.mean - self.mean
        m2 = self.m2 + other.m2 + delta**2 * na * nb / n
        m3 = (self.m3 + other.m3 + delta**3 * na * nb * (na - nb) / n**2
              + 3.0 * delta * (na * other.m2 - nb * self.m2) / n)
        m4 = (self.m4 + other.m4 + delta**4 * na * nb * (na * na - na * nb + nb * nb) / n**3
              + 6.0 * delta**2 * (na * na * other.m2 + nb * nb * self.m2) / n**2
              + 4.0 * delta * (na * other.m3 - nb * self.m3) / n)
        self.count, self.mean = n, self.mean + delta * nb / n
        self.m2, self.m3, self.m4 = m2, m3, m4

    @property
    def variance(self) -> float:
        return self.m2 / self.count if self.count else 0.0

    @property
    def std(self) -> float:
        return math.sqrt(self.variance)

    @property
    def skewness(self) -> float:
        if self.count == 0 or self.m2 == 0.0:
            return 0.0
        return math.sqrt(self.count) * self.m3 / self.m2**1.5

    @property
    def kurtosis(self) -> float:
        """Excess kurtosis (0 for a normal distribution)."""
        if self.count == 0 or self.m2 == 0.0:
            return 0.0
        return self.count * self.m4 / self.m2**2 - 3.0


@dataclass(frozen=True)
class ReferenceProfile:
    """Honest output distribution of one (model, stage)."""

    model: str
    stage: int
    edges: tuple[float, ...]
    probabilities: tuple[float, ...]
    mean: float
    std: float
    skewness: float
    kurtosis: float
    window: int
    honest_divergences: tuple[float, ...]

    def histogram(self, activation: torch.Tensor) -> np.ndarray:
        """Counts of the activation's values in the profile's bins (len(edges) + 1 bins)."""
        return _histogram(activation, self.edges)


def jensen_shannon(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence in bits between two histograms (normalised here), in [0, 1]."""
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    if p.shape != q.shape or p.sum() <= 0 or q.sum() <= 0:
        raise ConsensusError("histograms to compare must have one shape and positive mass")
    p, q = p / p.sum(), q / q.sum()
    m = 0.5 * (p + q)
    return float(0.5 * (_kl(p, m) + _kl(q, m)))


class ProfileBuilder:
    """Collects honest outputs of one (model, stage) and builds its ReferenceProfile.

    Observations alternate between building the histogram and measuring the honest window
    divergences that seed the threshold, so the threshold is not learned on the data that
    formed the reference.
    """

    def __init__(self, model: str, stage: int, bins: int = 32, window: int = 4,
                 sample_per_observation: int = 4096, seed: int = 0) -> None:
        if not 2 <= bins <= MAX_BINS:
            raise ConsensusError(f"bin count {bins} outside 2..{MAX_BINS}")
        if window < 1:
            raise ConsensusError("window must hold at least one observation")
        self.model, self.stage, self.bins, self.window = model, stage, bins, window
        self._sample = sample_per_observation
        self._rng = np.random.default_rng(seed)
        self._observations: list[torch.Tensor] = []
        self._values: list[np.ndarray] = []
        self._moments = RunningMoments()

    def add(self, activation: torch.Tensor) -> None:
        values = activation.detach().to(torch.float32).flatten().cpu().numpy()
        if not np.isfinite(values).all():
            raise ConsensusError("honest observation holds non-finite values")
        self._observations.append(activation.detach().to(torch.float32).cpu())
        self._moments.update(values)
        take = min(self._sample, values.size)
        self._values.append(self._rng.choice(values, size=take, replace=False))

    def build(self) -> ReferenceProfile:
        """Fix bin edges and reference histogram; needs at least 4 windows of observations."""
        if len(self._observations) < 8 * self.window:
            raise ConsensusError(
                f"need at least {8 * self.window} honest observations, have "
                f"{len(self._observations)}"
            )
        pooled = np.concatenate(self._values)
        quantiles = np.arange(1, self.bins) / self.bins
        edges = tuple(float(e) for e in np.unique(np.quantile(pooled, quantiles)))
        reference = self._observations[0::2]
        held_out = self._observations[1::2]
        counts = sum(_histogram(a, edges) for a in reference)
        probabilities = tuple(float(c) for c in (counts + 0.5) / (counts + 0.5).sum())
        divergences = []
        for start in range(len(held_out) - self.window + 1):
            window = sum(_histogram(a, edges) for a in held_out[start:start + self.window])
            divergences.append(jensen_shannon(window + 0.5, np.array(probabilities)))
        m = self._moments
        return ReferenceProfile(self.model, self.stage, edges, probabilities, m.mean, m.std,
                                m.skewness, m.kurtosis, self.window, tuple(divergences))


@dataclass(frozen=True)
class DriftReport:
    """One observation's verdict for a peer."""

    peer: str
    divergence: float
    threshold: float
    flagged: bool
    window_full: bool
    mean: float
    std: float

    def raise_if_flagged(self) -> None:
        if self.flagged:
            raise DistributionDrift(self.peer, self.divergence, self.threshold)


@dataclass
class _PeerWindow:
    histograms: deque[np.ndarray]
    moments: deque[RunningMoments]
    flagged: bool = False


class DriftMonitor:
    """Watches the outputs of every peer serving one (model, stage) against its profile."""

    def __init__(self, profile: ReferenceProfile, k: float = 4.0, history: int = 256) -> None:
        if k <= 0 or history < 8:
            raise ConsensusError("drift threshold needs k > 0 and a history of at least 8")
        self.profile = profile
        self.k = k
        self._reference = np.array(profile.probabilities)
        self._honest: deque[float] = deque(profile.honest_divergences[-history:], maxlen=history)
        self._peers: dict[str, _PeerWindow] = {}

    @property
    def threshold(self) -> float:
        values = np.array(self._honest)
        return float(values.mean() + self.k * values.std()) if values.size else math.inf

    def flagged_peers(self) -> tuple[str, ...]:
        return tuple(sorted(peer for peer, w in self._peers.items() if w.flagged))

    def observe(self, peer: str, activation: torch.Tensor) -> DriftReport:
        """Add one output of `peer`; flags it when its full window diverges past the threshold.

        A flag stays on the peer (see flagged_peers) until `clear(peer)`.
        """
        window_size = self.profile.window
        state = self._peers.get(peer)
        if state is None:
            state = self._peers[peer] = _PeerWindow(deque(maxlen=window_size),
                                                    deque(maxlen=window_size))
        values = activation.detach().to(torch.float32).flatten().cpu().numpy()
        threshold = self.threshold
        if not np.isfinite(values).all():
            state.flagged = True
            return DriftReport(peer, math.inf, threshold, True, False, math.nan, math.nan)
        moments = RunningMoments()
        moments.update(values)
        state.histograms.append(self.profile.histogram(activation))
        state.moments.append(moments)
        divergence = jensen_shannon(sum(state.histograms) + 0.5, self._reference)
        full = len(state.histograms) == window_size
        flagged = full and divergence > threshold
        if flagged:
            state.flagged = True
        elif full:
            self._honest.append(divergence)
        merged = RunningMoments()
        for part in state.moments:
            merged.merge(part)
        return DriftReport(peer, divergence, threshold, flagged, full, merged.mean, merged.std)

    def clear(self, peer: str) -> None:
        """Forget a peer's window and flag (e.g. after it was banned and served its ban)."""
        self._peers.pop(peer, None)


def _histogram(activation: torch.Tensor, edges: tuple[float, ...]) -> np.ndarray:
    values = activation.detach().to(torch.float32).flatten()
    boundaries = torch.tensor(edges, dtype=torch.float32, device=values.device)
    index = torch.bucketize(values, boundaries)
    return torch.bincount(index, minlength=len(edges) + 1).cpu().numpy().astype(np.float64)


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    mask = p > 0
    return float((p[mask] * np.log2(p[mask] / q[mask])).sum())
