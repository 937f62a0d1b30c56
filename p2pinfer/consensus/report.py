"""What one request's verification found: per stage the replicas, votes, dissenters, missing
replicas, fetches and audits; evidence filed, bans, CDV flags and absorbed chain failures.

The requester's consensus service fills one `VerificationReport` per task it signs; the
request's result carries it (`to_dict()`), so it names only that request's route.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class StageReport:
    stage: int
    layers: tuple[int, int]
    replicas: tuple[str, ...]
    votes: int = 0
    agreeing: set[str] = field(default_factory=set)
    dissenting: set[str] = field(default_factory=set)
    missing: set[str] = field(default_factory=set)
    fetches: int = 0
    audits: int = 0
    audit_failures: int = 0


@dataclass
class VerificationReport:
    """What was checked for one request: per stage, the replicas, votes and dissenters; audits
    (m = 1); peers whose output distribution drifted (CDV); evidence filed and peers banned."""

    mode: str
    redundancy: int
    stages: list[StageReport] = field(default_factory=list)
    evidence: list[str] = field(default_factory=list)
    banned: list[str] = field(default_factory=list)
    cdv_flags: list[str] = field(default_factory=list)
    #: failures of single replica chains that the votes absorbed
    faults: list[str] = field(default_factory=list)

    @property
    def dissenters(self) -> list[str]:
        return sorted({p for s in self.stages for p in s.dissenting})

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode, "redundancy": self.redundancy,
            "stages": [{
                "stage": s.stage, "layers": list(s.layers), "replicas": list(s.replicas),
                "votes": s.votes, "agreeing": sorted(s.agreeing),
                "dissenting": sorted(s.dissenting), "missing": sorted(s.missing),
                "fetches": s.fetches, "audits": s.audits, "audit_failures": s.audit_failures,
            } for s in self.stages],
            "dissenters": self.dissenters, "evidence": list(self.evidence),
            "banned": sorted(set(self.banned)), "cdv_flags": sorted(set(self.cdv_flags)),
            "faults": list(self.faults),
        }
