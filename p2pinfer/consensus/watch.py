"""CDV on the requester: per (model, stage) a reference profile from verified outputs, then a
drift monitor over every peer's outputs (flags work with one replica too)."""

from __future__ import annotations

import torch

from p2pinfer.consensus.cdv import DriftMonitor, ProfileBuilder


class DistributionWatch:
    """Per (model, stage) output statistics: a reference profile from verified outputs, then a
    drift monitor over every peer's outputs (flags work with m = 1 too)."""

    def __init__(self, observations: int = 32, window: int = 4, k: float = 6.0) -> None:
        self.observations = observations
        self.window = window
        self.k = k
        self._builders: dict[tuple[str, int], ProfileBuilder] = {}
        self._monitors: dict[tuple[str, int], DriftMonitor] = {}

    def reference(self, model: str, stage: int, activation: torch.Tensor) -> None:
        """An output known good (it agreed with a majority or passed an audit)."""
        key = (model, stage)
        if key in self._monitors:
            return
        builder = self._builders.get(key)
        if builder is None:
            builder = self._builders[key] = ProfileBuilder(model, stage, window=self.window)
        builder.add(activation)
        if len(builder._observations) >= max(self.observations, 8 * self.window):
            self._monitors[key] = DriftMonitor(builder.build(), k=self.k)
            del self._builders[key]

    def observe(self, model: str, stage: int, peer: str, activation: torch.Tensor) -> bool:
        """Whether `peer` is flagged after this output (False while no profile exists)."""
        monitor = self._monitors.get((model, stage))
        if monitor is None:
            return False
        return monitor.observe(peer, activation).flagged or peer in monitor.flagged_peers()

    def flagged(self) -> list[str]:
        return sorted({p for m in self._monitors.values() for p in m.flagged_peers()})

    def ready(self, model: str, stage: int) -> bool:
        return (model, stage) in self._monitors


# -- the node's consensus service -------------------------------------------------------------
