"""Adaptive random audits for stages served by a single replica (m = 1).

Paper, section "Consensus-based verification": when redundancy is too expensive, a random
fraction a of stage executions is re-run by an auditor. A peer that cheats on a fraction f of
its stages escapes n audited-or-not executions with probability (1 - a f)^n, so it is caught with
probability 1 - (1 - a f)^n. The rate rises for low-reputation peers and falls for trusted ones.

Which executions are audited must be unpredictable to the served peer: the decision is an
HMAC-SHA256 of (network, task, stage, step, peer) under the requester's secret audit key,
read as a uniform number in [0, 1).
"""

from __future__ import annotations

import hashlib
import hmac
import random
from dataclasses import dataclass

import msgpack

from p2pinfer.consensus.errors import ConsensusError


def detection_probability(a: float, f: float, n: int) -> float:
    """Probability that at least one of n executions is both cheated (rate f) and audited (a)."""
    _check_unit("audit rate", a)
    _check_unit("cheating fraction", f)
    if n < 0:
        raise ConsensusError(f"execution count {n} is negative")
    return 1.0 - (1.0 - a * f) ** n


def simulate_detection(a: float, f: float, n: int, runs: int, seed: int) -> float:
    """Measured detection probability over `runs` seeded simulations of n executions."""
    _check_unit("audit rate", a)
    _check_unit("cheating fraction", f)
    rng = random.Random(seed)
    caught = 0
    for _ in range(runs):
        for _ in range(n):
            if rng.random() < f and rng.random() < a:
                caught += 1
                break
    return caught / runs if runs else 0.0


@dataclass(frozen=True)
class AuditPolicy:
    """Audit rate as a function of the served peer's reputation score in [0, 1].

    A peer at `neutral` reputation is audited at `base_rate`; the rate moves linearly to
    `max_rate` at score 0 and to `min_rate` at score 1.
    """

    base_rate: float = 0.1
    min_rate: float = 0.02
    max_rate: float = 0.5
    neutral: float = 0.5

    def __post_init__(self) -> None:
        for name in ("base_rate", "min_rate", "max_rate"):
            _check_unit(name, getattr(self, name))
        if not self.min_rate <= self.base_rate <= self.max_rate:
            raise ConsensusError("audit rates must satisfy min_rate <= base_rate <= max_rate")
        if not 0.0 < self.neutral < 1.0:
            raise ConsensusError(f"neutral score {self.neutral} outside (0, 1)")

    def rate(self, score: float) -> float:
        """Audit rate for a peer with this reputation score."""
        score = min(max(score, 0.0), 1.0)
        if score <= self.neutral:
            weight = (self.neutral - score) / self.neutral
            return self.base_rate + weight * (self.max_rate - self.base_rate)
        weight = (score - self.neutral) / (1.0 - self.neutral)
        return self.base_rate - weight * (self.base_rate - self.min_rate)

    def should_audit(
        self,
        audit_key: bytes,
        network_id: str,
        task_id: bytes,
        stage: int,
        step: int,
        peer: str,
        score: float,
    ) -> bool:
        """Whether to audit this execution; deterministic for the holder of `audit_key`."""
        if len(audit_key) < 16:
            raise ConsensusError("audit key must be at least 16 bytes")
        material = msgpack.packb([network_id, task_id, stage, step, peer], use_bin_type=True)
        digest = hmac.new(audit_key, b"p2pinfer/audit/1\x00" + material, hashlib.sha256).digest()
        draw = int.from_bytes(digest[:8], "big") / 2**64
        return draw < self.rate(score)


def _check_unit(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ConsensusError(f"{name} {value} outside [0, 1]")
