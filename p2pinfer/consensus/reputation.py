"""Per-peer reputation: decay, rewards, penalties, bans with exponential back-off.

Paper, section "Consensus-based verification" (reputation of nodes): agreement with the majority
raises a peer's score, timeouts and dissent lower it, verified fault evidence bans it. Every
node that verifies the same evidence applies the same ban, which makes the ban network-wide
without a coordinator.

Scores live in [0, 1] and decay exponentially toward `neutral` with `half_life`, so old
behaviour is forgotten in both directions. A score below `ban_threshold`, or any verified fault,
bans the peer for ban_base * 2^(bans - 1) seconds (capped at ban_max); when the ban ends the
peer returns on probation at `probation_score`. Time comes from an injected clock, so the book
is deterministic and testable; it holds no global state.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from p2pinfer.errors import ConfigError

MAX_REMEMBERED_EVIDENCE = 65536


@dataclass(frozen=True)
class ReputationParams:
    """Scoring rules; the defaults suit a network where most peers are honest."""

    initial: float = 0.5
    neutral: float = 0.5
    half_life_s: float = 6 * 3600.0
    agreement_reward: float = 0.01
    dissent_penalty: float = 0.05
    timeout_penalty: float = 0.05
    fault_penalty: float = 0.5
    ban_threshold: float = 0.2
    probation_score: float = 0.3
    ban_base_s: float = 600.0
    ban_max_s: float = 30 * 86400.0

    def __post_init__(self) -> None:
        for name in ("initial", "neutral", "ban_threshold", "probation_score"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"reputation {name} must lie in [0, 1]")
        if self.probation_score < self.ban_threshold:
            raise ConfigError("reputation probation_score must not be below ban_threshold")
        if self.half_life_s <= 0 or self.ban_base_s <= 0 or self.ban_max_s < self.ban_base_s:
            raise ConfigError("reputation half-life and ban durations must be positive")


@dataclass
class _Standing:
    score: float
    updated_at: float
    bans: int = 0
    banned_until: float | None = None


class ReputationBook:
    """Reputation of every peer this node has dealt with."""

    def __init__(self, clock: Callable[[], float], params: ReputationParams | None = None):
        self._clock = clock
        self._params = params or ReputationParams()
        self._peers: dict[str, _Standing] = {}
        self._evidence: OrderedDict[bytes, None] = OrderedDict()

    @property
    def params(self) -> ReputationParams:
        return self._params

    def score(self, peer: str) -> float:
        """Current score in [0, 1] (a banned peer scores 0)."""
        standing = self._current(peer)
        return 0.0 if standing.banned_until is not None else standing.score

    def is_banned(self, peer: str) -> bool:
        return self._current(peer).banned_until is not None

    def banned_until(self, peer: str) -> float | None:
        """Clock time at which the peer's ban ends, or None when it is not banned."""
        return self._current(peer).banned_until

    def ban_count(self, peer: str) -> int:
        return self._current(peer).bans

    def record_agreement(self, peer: str) -> None:
        """The peer's claim agreed with the majority (ignored while banned)."""
        self._adjust(peer, self._params.agreement_reward)

    def record_dissent(self, peer: str) -> None:
        """The peer disagreed with the majority without provable fault evidence."""
        self._adjust(peer, -self._params.dissent_penalty)

    def record_timeout(self, peer: str) -> None:
        """The peer did not deliver its output or claim before the deadline."""
        self._adjust(peer, -self._params.timeout_penalty)

    def record_verified_fault(self, peer: str, evidence_digest: bytes) -> bool:
        """Penalise and ban a peer for fault evidence that verified (see evidence.py).

        Each evidence digest counts once, so gossip duplicates do not compound. Returns whether
        this evidence was new.
        """
        if evidence_digest in self._evidence:
            return False
        self._evidence[evidence_digest] = None
        if len(self._evidence) > MAX_REMEMBERED_EVIDENCE:
            self._evidence.popitem(last=False)
        standing = self._current(peer)
        standing.score = max(0.0, standing.score - self._params.fault_penalty)
        self._ban(standing)
        return True

    def _adjust(self, peer: str, delta: float) -> None:
        standing = self._current(peer)
        if standing.banned_until is not None:
            return
        standing.score = min(1.0, max(0.0, standing.score + delta))
        if standing.score < self._params.ban_threshold:
            self._ban(standing)

    def _ban(self, standing: _Standing) -> None:
        p = self._params
        standing.bans += 1
        duration = min(p.ban_base_s * 2.0 ** (standing.bans - 1), p.ban_max_s)
        until = self._clock() + duration
        standing.banned_until = max(until, standing.banned_until or until)

    def _current(self, peer: str) -> _Standing:
        """The peer's standing brought up to now: bans expired, score decayed."""
        p = self._params
        now = self._clock()
        standing = self._peers.get(peer)
        if standing is None:
            standing = self._peers[peer] = _Standing(score=p.initial, updated_at=now)
            return standing
        if standing.banned_until is not None:
            if now < standing.banned_until:
                standing.updated_at = now
                return standing
            standing.score = p.probation_score
            standing.updated_at = standing.banned_until
            standing.banned_until = None
        elapsed = max(0.0, now - standing.updated_at)
        factor = 0.5 ** (elapsed / p.half_life_s)
        standing.score = p.neutral + (standing.score - p.neutral) * factor
        standing.updated_at = now
        return standing
