"""Simulated evidence: the whole attestation path without a TEE, for development and testnets.

Byte layout (protocols/attest.md, "Simulated evidence"), 312 bytes, integers little-endian:

    0x000  28  magic "P2PINFER SIMULATED-NOT-A-TEE"
    0x01C   2  format version (1)
    0x01E   2  reserved, zero
    0x020   8  issued at, POSIX seconds
    0x028  64  report data (the channel binding)
    0x068  48  measurement = SHA-384(MEASUREMENT_TAG || code digest || model digest)
    0x098  32  code digest (SHA-256 over the installed p2pinfer package files)
    0x0B8  32  model manifest digest (zeros when no model)
    0x0D8  32  Ed25519 public key of the node (its identity key)
    0x0F8  64  Ed25519 signature over bytes [0x000, 0x0F8)

It cannot be mistaken for vendor evidence: an SEV-SNP report is 0x4A0 bytes and a TDX quote
starts with version 4 or 5 as a u16. It proves only that the holder of the node key said so.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from p2pinfer.trust import _x509
from p2pinfer.trust.attester import Attester, check_report_data
from p2pinfer.trust.binding import check_binding
from p2pinfer.trust.claims import TeeLevel, VerifiedClaims
from p2pinfer.trust.errors import EvidenceFormatError, PolicyViolation, SignatureInvalid
from p2pinfer.trust.evidence import KIND_SIMULATED, EvidenceBundle
from p2pinfer.trust.policy import Policy

MAGIC = b"P2PINFER SIMULATED-NOT-A-TEE"
FORMAT_VERSION = 1
SIZE = 0x138
SIGNED_END = 0xF8
MEASUREMENT_TAG = b"p2pinfer/simulated-measurement/v1"
CODE_TAG = b"p2pinfer/code-digest/v1"

_HEAD = struct.Struct("<28sHHQ")


@dataclass(frozen=True)
class SimulatedEvidence:
    issued_at: int
    report_data: bytes
    measurement: bytes
    code_digest: bytes
    model_digest: bytes
    public_key: bytes
    signature: bytes

    @property
    def signed_bytes(self) -> bytes:
        return (
            _HEAD.pack(MAGIC, FORMAT_VERSION, 0, self.issued_at)
            + self.report_data
            + self.measurement
            + self.code_digest
            + self.model_digest
            + self.public_key
        )

    def encode(self) -> bytes:
        return self.signed_bytes + self.signature

    @classmethod
    def parse(cls, data: bytes) -> SimulatedEvidence:
        if not isinstance(data, (bytes, bytearray)):
            raise EvidenceFormatError("simulated evidence must be bytes")
        d = bytes(data)
        if len(d) != SIZE:
            raise EvidenceFormatError(f"simulated evidence must be {SIZE} bytes, got {len(d)}")
        magic, version, reserved, issued_at = _HEAD.unpack_from(d, 0)
        if magic != MAGIC:
            raise EvidenceFormatError(
                "simulated evidence lacks the SIMULATED-NOT-A-TEE marker", check="marker"
            )
        if version != FORMAT_VERSION or reserved != 0:
            raise EvidenceFormatError("unsupported simulated evidence version")
        return cls(
            issued_at=issued_at,
            report_data=d[0x28:0x68],
            measurement=d[0x68:0x98],
            code_digest=d[0x98:0xB8],
            model_digest=d[0xB8:0xD8],
            public_key=d[0xD8:0xF8],
            signature=d[0xF8:SIZE],
        )


def measurement_of(code_digest: bytes, model_digest: bytes) -> bytes:
    return hashlib.sha384(MEASUREMENT_TAG + code_digest + model_digest).digest()


def code_digest(package_dir: Path | None = None) -> bytes:
    """SHA-256 over the p2pinfer package's Python files (sorted paths, length-prefixed)."""
    root = package_dir or Path(__file__).resolve().parents[1]
    h = hashlib.sha256(CODE_TAG)
    for path in sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts):
        rel = path.relative_to(root).as_posix().encode()
        body = path.read_bytes()
        h.update(len(rel).to_bytes(4, "big") + rel + len(body).to_bytes(8, "big") + body)
    return h.digest()


class SimulatedAttester(Attester):
    """Signs simulated evidence with the node's Ed25519 identity key.

    `key` is a PyNaCl `SigningKey`, a cryptography `Ed25519PrivateKey`, or None with `sign`
    (a callable returning a 64-byte signature) and `public_key` (32 bytes) given instead.
    """

    kind = KIND_SIMULATED

    def __init__(
        self,
        key: Any = None,
        *,
        sign: Callable[[bytes], bytes] | None = None,
        public_key: bytes | None = None,
        model_digest: bytes = bytes(32),
        code_digest_: bytes | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if key is not None:
            sign, public_key = _signer_of(key)
        if sign is None or public_key is None or len(public_key) != 32:
            raise ValueError(
                "simulated attester needs an Ed25519 key, or sign and a 32-byte public_key"
            )
        if len(model_digest) != 32:
            raise ValueError("model digest must be 32 bytes")
        self._sign = sign
        self._public_key = bytes(public_key)
        self._model_digest = bytes(model_digest)
        self._code_digest = code_digest_ if code_digest_ is not None else code_digest()
        self._clock = clock

    def __repr__(self) -> str:
        return f"SimulatedAttester(public_key={self._public_key.hex()[:16]}...)"

    def attest(self, report_data: bytes) -> EvidenceBundle:
        rd = check_report_data(report_data)
        unsigned = SimulatedEvidence(
            issued_at=int(self._clock()),
            report_data=rd,
            measurement=measurement_of(self._code_digest, self._model_digest),
            code_digest=self._code_digest,
            model_digest=self._model_digest,
            public_key=self._public_key,
            signature=b"",
        )
        signature = bytes(self._sign(unsigned.signed_bytes))
        if len(signature) != 64:
            raise ValueError("Ed25519 signature must be 64 bytes")
        return EvidenceBundle(kind=self.kind, evidence=unsigned.signed_bytes + signature)

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "warning": "SIMULATED-NOT-A-TEE: development and testnets only",
            "public_key": self._public_key.hex(),
            "code_digest": self._code_digest.hex(),
            "model_digest": self._model_digest.hex(),
            "measurement": measurement_of(self._code_digest, self._model_digest).hex(),
        }


def _signer_of(key: Any) -> tuple[Callable[[bytes], bytes], bytes]:
    if isinstance(key, Ed25519PrivateKey):
        pub = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return key.sign, pub
    try:
        from nacl.signing import SigningKey
    except ImportError:  # pragma: no cover - PyNaCl is a dependency
        SigningKey = None  # type: ignore[assignment,misc]
    if SigningKey is not None and isinstance(key, SigningKey):
        return (lambda m: key.sign(m).signature), bytes(key.verify_key)
    raise TypeError("key must be a PyNaCl SigningKey or a cryptography Ed25519PrivateKey")


def verify(
    evidence: bytes,
    *,
    expected_report_data: bytes | None,
    policy: Policy,
    now: _x509.Timestamp,
    expected_public_key: bytes | None = None,
) -> VerifiedClaims:
    """Verify simulated evidence. Refused with check "simulated" unless the policy is a
    non-production one that allows it; then marker, signature by the claimed key (and that key
    equals `expected_public_key`, the peer's identity key, when given), measurement, binding."""
    when = _x509.as_posix(now)
    ev = SimulatedEvidence.parse(evidence)
    if policy.production or not policy.allow_simulated:
        raise PolicyViolation(
            "simulated evidence is not a TEE; this policy refuses it", check="simulated"
        )
    if expected_public_key is not None and not hmac.compare_digest(
        ev.public_key, bytes(expected_public_key)
    ):
        raise SignatureInvalid(
            "simulated evidence is signed by another key than the peer's", check="signer"
        )
    try:
        Ed25519PublicKey.from_public_bytes(ev.public_key).verify(ev.signature, ev.signed_bytes)
    except (InvalidSignature, ValueError):
        raise SignatureInvalid("simulated evidence signature does not verify") from None
    if not hmac.compare_digest(ev.measurement, measurement_of(ev.code_digest, ev.model_digest)):
        raise EvidenceFormatError(
            "simulated measurement does not match its digests", check="measurement"
        )
    if expected_report_data is not None:
        check_binding(ev.report_data, expected_report_data)
    measurement = ev.measurement.hex()
    policy.check_measurement(KIND_SIMULATED, measurement)
    return VerifiedClaims(
        kind=KIND_SIMULATED,
        tee_level=TeeLevel.SIMULATED,
        measurement=measurement,
        debug=False,
        simulated=True,
        expiry=when + policy.claims_ttl_s,
        evidence_digest=hashlib.sha256(bytes(evidence)).hexdigest(),
        report_data=ev.report_data.hex(),
        details={
            "warning": "SIMULATED-NOT-A-TEE",
            "public_key": ev.public_key.hex(),
            "code_digest": ev.code_digest.hex(),
            "model_digest": ev.model_digest.hex(),
            "issued_at": ev.issued_at,
        },
    )
