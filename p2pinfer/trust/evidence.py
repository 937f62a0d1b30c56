"""EvidenceBundle: what a node sends to prove what it runs on (protocols/attest.md, "Bundle").

A bundle carries one CPU-side piece of evidence (an SEV-SNP report, a TDX quote, or simulated
evidence), the certificates needed to check it, optional collateral (TDX: the dcap-qvl JSON
form of TCB info, QE identity and CRLs), and optional GPU evidence (SPDM measurements plus the
device certificate chain, one entry per GPU). Wire form: a msgpack map with `v` and `t`;
every size is checked against the limits below before anything is allocated.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import msgpack

from p2pinfer.trust.errors import EvidenceFormatError

VERSION = 1
TYPE = "evidence"

KIND_SEV_SNP = "amd-sev-snp"
KIND_TDX = "intel-tdx"
KIND_NVIDIA = "nvidia-cc"
KIND_SIMULATED = "simulated"
KINDS = (KIND_SEV_SNP, KIND_TDX, KIND_NVIDIA, KIND_SIMULATED)

MAX_BUNDLE_BYTES = 1 << 20
MAX_EVIDENCE_BYTES = 64 << 10
MAX_CERT_BYTES = 16 << 10
MAX_CERTS = 8
MAX_COLLATERAL_BYTES = 256 << 10
MAX_GPUS = 8


@dataclass(frozen=True)
class GpuEvidence:
    """SPDM GET_MEASUREMENTS request || signed response of one GPU, and its cert chain (DER)."""

    evidence: bytes
    certs: tuple[bytes, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "certs", tuple(self.certs))


@dataclass(frozen=True)
class EvidenceBundle:
    """Evidence of one node. `certs` are DER, leaf first; `collateral` is kind-specific."""

    kind: str
    evidence: bytes
    certs: tuple[bytes, ...] = ()
    collateral: bytes | None = None
    gpus: tuple[GpuEvidence, ...] = field(default=())

    def __post_init__(self) -> None:
        object.__setattr__(self, "certs", tuple(self.certs))
        object.__setattr__(self, "gpus", tuple(self.gpus))
        _check_bundle(self)

    def __repr__(self) -> str:
        return (
            f"EvidenceBundle(kind={self.kind!r}, evidence={len(self.evidence)} bytes, "
            f"certs={len(self.certs)}, collateral={'yes' if self.collateral else 'no'}, "
            f"gpus={len(self.gpus)})"
        )

    def to_wire(self) -> dict[str, Any]:
        return {
            "v": VERSION,
            "t": TYPE,
            "kind": self.kind,
            "ev": bytes(self.evidence),
            "certs": [bytes(c) for c in self.certs],
            "col": None if self.collateral is None else bytes(self.collateral),
            "gpus": [
                {"ev": bytes(g.evidence), "certs": [bytes(c) for c in g.certs]} for g in self.gpus
            ],
        }

    def encode(self) -> bytes:
        """Canonical msgpack encoding (fixed key order), used on the wire and for `digest()`."""
        return msgpack.packb(self.to_wire(), use_bin_type=True)

    def digest(self) -> bytes:
        """SHA-256 of the canonical encoding: names this evidence in adverts and caches."""
        return hashlib.sha256(self.encode()).digest()

    @classmethod
    def decode(cls, data: bytes) -> EvidenceBundle:
        """Parse the wire form; raises `EvidenceFormatError` for anything malformed."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise EvidenceFormatError("evidence bundle must be bytes")
        if len(data) > MAX_BUNDLE_BYTES:
            raise EvidenceFormatError(
                f"evidence bundle of {len(data)} bytes exceeds {MAX_BUNDLE_BYTES}"
            )
        try:
            obj = msgpack.unpackb(
                bytes(data),
                raw=False,
                use_list=True,
                strict_map_key=True,
                max_bin_len=MAX_COLLATERAL_BYTES,
                max_str_len=256,
                max_array_len=MAX_CERTS,
                max_map_len=16,
                max_ext_len=0,
            )
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            raise EvidenceFormatError(
                f"evidence bundle is not valid msgpack: {type(exc).__name__}"
            ) from None
        return cls.from_wire(obj)

    @classmethod
    def from_wire(cls, obj: Any) -> EvidenceBundle:
        if not isinstance(obj, dict):
            raise EvidenceFormatError("evidence bundle must be a map")
        if obj.get("v") != VERSION:
            raise EvidenceFormatError("evidence bundle has an unsupported version")
        if obj.get("t") != TYPE:
            raise EvidenceFormatError("message is not an evidence bundle")
        extra = set(obj) - {"v", "t", "kind", "ev", "certs", "col", "gpus"}
        if extra:
            raise EvidenceFormatError("evidence bundle has unknown fields")
        kind = obj.get("kind")
        if not isinstance(kind, str):
            raise EvidenceFormatError("evidence bundle kind must be a string")
        collateral = obj.get("col")
        if collateral is not None and not isinstance(collateral, bytes):
            raise EvidenceFormatError("evidence bundle collateral must be bytes")
        gpus_raw = obj.get("gpus", [])
        if not isinstance(gpus_raw, list):
            raise EvidenceFormatError("evidence bundle gpus must be a list")
        gpus = []
        for g in gpus_raw:
            if not isinstance(g, dict) or set(g) - {"ev", "certs"}:
                raise EvidenceFormatError("gpu evidence must be a map of ev and certs")
            gpus.append(
                GpuEvidence(
                    evidence=_bin(g.get("ev"), "gpu evidence"), certs=_certs(g.get("certs", []))
                )
            )
        return cls(
            kind=kind,
            evidence=_bin(obj.get("ev"), "evidence"),
            certs=_certs(obj.get("certs", [])),
            collateral=collateral,
            gpus=tuple(gpus),
        )


def _bin(value: Any, what: str) -> bytes:
    if not isinstance(value, bytes):
        raise EvidenceFormatError(f"{what} must be bytes")
    return value


def _certs(value: Any) -> tuple[bytes, ...]:
    if not isinstance(value, list):
        raise EvidenceFormatError("certs must be a list")
    return tuple(_bin(c, "certificate") for c in value)


def _check_bundle(b: EvidenceBundle) -> None:
    if b.kind not in KINDS:
        raise EvidenceFormatError(f"unknown evidence kind {b.kind[:40]!r}")
    _check_blob(b.evidence, MAX_EVIDENCE_BYTES, "evidence")
    _check_chain(b.certs)
    if b.collateral is not None:
        _check_blob(b.collateral, MAX_COLLATERAL_BYTES, "collateral", allow_empty=True)
    if len(b.gpus) > MAX_GPUS:
        raise EvidenceFormatError(f"more than {MAX_GPUS} GPU evidence entries")
    for g in b.gpus:
        if not isinstance(g, GpuEvidence):
            raise EvidenceFormatError("gpu entries must be GpuEvidence")
        _check_blob(g.evidence, MAX_EVIDENCE_BYTES, "gpu evidence")
        _check_chain(g.certs)


def _check_chain(certs: tuple[bytes, ...]) -> None:
    if len(certs) > MAX_CERTS:
        raise EvidenceFormatError(f"more than {MAX_CERTS} certificates")
    for c in certs:
        _check_blob(c, MAX_CERT_BYTES, "certificate")


def _check_blob(value: Any, limit: int, what: str, allow_empty: bool = False) -> None:
    if not isinstance(value, (bytes, bytearray)):
        raise EvidenceFormatError(f"{what} must be bytes")
    if not value and not allow_empty:
        raise EvidenceFormatError(f"{what} is empty")
    if len(value) > limit:
        raise EvidenceFormatError(f"{what} of {len(value)} bytes exceeds {limit}")
