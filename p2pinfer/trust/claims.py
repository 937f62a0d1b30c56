"""What a verifier concluded from evidence, and a cache of those conclusions.

Levels (ordered): NONE < SIMULATED < CPU_TEE < GPU_TEE. SIMULATED sits above NONE only so a
testnet can ask for "at least simulated" to exercise the whole path; it is never a TEE, a
production policy refuses simulated evidence outright, and a GPU claim raises the level to
GPU_TEE only on top of a verified CPU TEE claim.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class TeeLevel(enum.IntEnum):
    NONE = 0
    SIMULATED = 1
    CPU_TEE = 2
    GPU_TEE = 3

    @property
    def label(self) -> str:
        return self.name.lower().replace("_", "-")

    @classmethod
    def parse(cls, text: str) -> TeeLevel:
        for level in cls:
            if level.label == text:
                return level
        raise ValueError(f"unknown TEE level {text!r} (none, simulated, cpu-tee, gpu-tee)")


@dataclass(frozen=True)
class GpuClaim:
    """One GPU whose SPDM evidence verified. `rim_checked` tells if RIMs were compared."""

    device_cert_subject: str
    measurements_digest: str
    driver_version: str | None
    vbios_version: str | None
    rim_checked: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "device_cert_subject": self.device_cert_subject,
            "measurements_digest": self.measurements_digest,
            "driver_version": self.driver_version,
            "vbios_version": self.vbios_version,
            "rim_checked": self.rim_checked,
        }


@dataclass(frozen=True)
class VerifiedClaims:
    """Facts established by verification. `expiry` is a POSIX time after which to re-attest."""

    kind: str
    tee_level: TeeLevel
    measurement: str
    debug: bool
    simulated: bool
    expiry: int
    evidence_digest: str
    gpus: tuple[GpuClaim, ...] = ()
    tcb: dict[str, Any] = field(default_factory=dict)
    chip_id: str | None = None
    report_data: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (hex strings, ints, bools, lists, dicts only)."""
        return {
            "kind": self.kind,
            "tee_level": self.tee_level.label,
            "measurement": self.measurement,
            "debug": self.debug,
            "simulated": self.simulated,
            "gpus": [g.to_dict() for g in self.gpus],
            "tcb": dict(self.tcb),
            "chip_id": self.chip_id,
            "expiry": self.expiry,
            "evidence_digest": self.evidence_digest,
            "report_data": self.report_data,
            "details": dict(self.details),
        }


class ClaimsCache:
    """Verified claims keyed by (peer id, evidence digest), dropped at their expiry.

    Bounded: when full, the entry expiring first is evicted. Time is passed in by the caller
    (`now`, POSIX seconds), so the cache holds no clock and no global state.
    """

    def __init__(self, max_entries: int = 4096) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be positive")
        self._max = max_entries
        self._entries: dict[tuple[bytes, bytes], VerifiedClaims] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, peer_id: bytes, evidence_digest: bytes, now: int) -> VerifiedClaims | None:
        key = (bytes(peer_id), bytes(evidence_digest))
        claims = self._entries.get(key)
        if claims is None:
            return None
        if claims.expiry <= now:
            del self._entries[key]
            return None
        return claims

    def put(self, peer_id: bytes, evidence_digest: bytes, claims: VerifiedClaims, now: int) -> None:
        if claims.expiry <= now:
            return
        self.prune(now)
        key = (bytes(peer_id), bytes(evidence_digest))
        if key not in self._entries and len(self._entries) >= self._max:
            oldest = min(self._entries, key=lambda k: self._entries[k].expiry)
            del self._entries[oldest]
        self._entries[key] = claims

    def forget_peer(self, peer_id: bytes) -> None:
        for key in [k for k in self._entries if k[0] == peer_id]:
            del self._entries[key]

    def prune(self, now: int) -> None:
        for key in [k for k, c in self._entries.items() if c.expiry <= now]:
            del self._entries[key]

    def clear(self) -> None:
        self._entries.clear()
