"""NVIDIA Hopper confidential computing: SPDM measurement evidence, verification, collection.

Evidence is an SPDM 1.1 GET_MEASUREMENTS request followed by the device's signed
MEASUREMENTS response (DMTF DSP0274 v1.1, sections 10.11-10.11.1): request = version, 0xE0,
attributes, operation, 32-byte nonce, slot; response = version, 0x60, param1, param2,
NumberOfBlocks (u8), MeasurementRecordLength (u24 LE), measurement blocks (index, spec,
size u16, then DMTF type u8, value size u16, value), responder nonce (32), opaque data length
(u16) and NVIDIA opaque TLVs (type u16, size u16, value), then the ECDSA P-384 signature as
raw r || s (96 bytes) over SHA-384(request || response without the signature). The device
certificate chain ends at the NVIDIA Device Identity CA, pinned here. Reference values come
from NVIDIA RIMs (ISO/IEC 19770-2 SWID tags): RIM index i describes measurement block i + 1.

Collection (`NvmlGpuEvidenceSource`), inside a CPU confidential VM, through the optional
`nvidia-ml-py` package: nvmlSystemGetConfComputeState must show CC on and devtools off; then per
GPU nvmlDeviceGetConfComputeGpuAttestationReport (with our nonce) gives the SPDM evidence and
nvmlDeviceGetConfComputeGpuCertificate the PEM device chain (attestationCertChain).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import itertools
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from p2pinfer.trust import _x509
from p2pinfer.trust.attester import Attester, check_report_data
from p2pinfer.trust.binding import gpu_nonce
from p2pinfer.trust.claims import GpuClaim
from p2pinfer.trust.errors import (
    AttestationError,
    BindingMismatch,
    CertificateChainError,
    EvidenceFormatError,
    SignatureInvalid,
    TeeUnavailable,
)
from p2pinfer.trust.evidence import MAX_EVIDENCE_BYTES, EvidenceBundle, GpuEvidence

SPDM_GET_MEASUREMENTS = 0xE0
SPDM_MEASUREMENTS = 0x60
NONCE_LEN = 32
SIG_LEN = 96
OPAQUE_DRIVER_VERSION = 3
OPAQUE_VBIOS_VERSION = 6
MAX_RIM_BYTES = 1 << 20
P384_ORDER = int(
    "ffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf581a0db248b0a77aecec196accc52973",
    16,
)

NVIDIA_DEVICE_ROOT_SHA256 = "102bf659d5419614c9d8e6aecebc80454eb26b1df6a769ac720b9a690b167b48"
NVIDIA_DEVICE_ROOT_PEM = """\
-----BEGIN CERTIFICATE-----
MIICCzCCAZCgAwIBAgIQLTZwscoQBBHB/sDoKgZbVDAKBggqhkjOPQQDAzA1MSIw
IAYDVQQDDBlOVklESUEgRGV2aWNlIElkZW50aXR5IENBMQ8wDQYDVQQKDAZOVklE
SUEwIBcNMjExMTA1MDAwMDAwWhgPOTk5OTEyMzEyMzU5NTlaMDUxIjAgBgNVBAMM
GU5WSURJQSBEZXZpY2UgSWRlbnRpdHkgQ0ExDzANBgNVBAoMBk5WSURJQTB2MBAG
ByqGSM49AgEGBSuBBAAiA2IABA5MFKM7+KViZljbQSlgfky/RRnEQScW9NDZF8SX
gAW96r6u/Ve8ZggtcYpPi2BS4VFu6KfEIrhN6FcHG7WP05W+oM+hxj7nyA1r1jkB
2Ry70YfThX3Ba1zOryOP+MJ9vaNjMGEwDwYDVR0TAQH/BAUwAwEB/zAOBgNVHQ8B
Af8EBAMCAQYwHQYDVR0OBBYEFFeF/4PyY8xlfWi3Olv0jUrL+0lfMB8GA1UdIwQY
MBaAFFeF/4PyY8xlfWi3Olv0jUrL+0lfMAoGCCqGSM49BAMDA2kAMGYCMQCPeFM3
TASsKQVaT+8S0sO9u97PVGCpE9d/I42IT7k3UUOLSR/qvJynVOD1vQKVXf0CMQC+
EY55WYoDBvs2wPAH1Gw4LbcwUN8QCff8bFmV4ZxjCRr4WXTLFHBKjbfneGSBWwA=
-----END CERTIFICATE-----
"""


@dataclass(frozen=True)
class SpdmMeasurements:
    """A parsed GET_MEASUREMENTS exchange. `measurements` maps block index -> value."""

    request: bytes
    response: bytes
    requester_nonce: bytes
    responder_nonce: bytes
    measurements: dict[int, bytes]
    record: bytes
    opaque: dict[int, bytes]
    signature: bytes

    @property
    def signed_message(self) -> bytes:
        return self.request + self.response[: len(self.response) - SIG_LEN]

    @property
    def driver_version(self) -> str | None:
        raw = self.opaque.get(OPAQUE_DRIVER_VERSION)
        return raw.split(b"\x00", 1)[0].decode("ascii", "replace") if raw else None

    @property
    def vbios_version(self) -> str | None:
        raw = self.opaque.get(OPAQUE_VBIOS_VERSION)
        if raw is None or len(raw) < 5:
            return None
        return f"{raw[3]:02X}.{raw[2]:02X}.{raw[1]:02X}.{raw[0]:02X}.{raw[4]:02X}"

    @classmethod
    def parse(cls, data: bytes) -> SpdmMeasurements:
        if not isinstance(data, (bytes, bytearray)):
            raise EvidenceFormatError("GPU evidence must be bytes")
        d = bytes(data)
        if len(d) > MAX_EVIDENCE_BYTES:
            raise EvidenceFormatError("GPU evidence is too large")
        if len(d) < 4:
            raise EvidenceFormatError("GPU evidence truncated in the request")
        version, code, attributes = d[0], d[1], d[2]
        if version not in (0x11, 0x12) or code != SPDM_GET_MEASUREMENTS:
            raise EvidenceFormatError(
                "GPU evidence does not start with an SPDM 1.1/1.2 GET_MEASUREMENTS"
            )
        if not attributes & 0x01:
            raise EvidenceFormatError("GPU measurements request did not ask for a signature")
        req_len = 4 + NONCE_LEN + 1
        if len(d) < req_len:
            raise EvidenceFormatError("GPU evidence truncated in the request")
        request, resp = d[:req_len], d[req_len:]
        if len(resp) < 8 or resp[0] != version or resp[1] != SPDM_MEASUREMENTS:
            raise EvidenceFormatError("GPU evidence lacks an SPDM MEASUREMENTS response")
        n_blocks = resp[4]
        rec_len = int.from_bytes(resp[5:8], "little")
        pos = 8
        if pos + rec_len + NONCE_LEN + 2 > len(resp):
            raise EvidenceFormatError("GPU measurement record overruns the response")
        record = resp[pos : pos + rec_len]
        pos += rec_len
        measurements: dict[int, bytes] = {}
        i = 0
        while i < len(record):
            if i + 7 > len(record):
                raise EvidenceFormatError("GPU measurement block header truncated")
            index, size = record[i], int.from_bytes(record[i + 2 : i + 4], "little")
            value_size = int.from_bytes(record[i + 5 : i + 7], "little")
            if size < 3 or value_size != size - 3 or i + 4 + size > len(record):
                raise EvidenceFormatError("GPU measurement block sizes are inconsistent")
            if index in measurements:
                raise EvidenceFormatError("GPU measurement index repeated")
            measurements[index] = record[i + 7 : i + 4 + size]
            i += 4 + size
        if len(measurements) != n_blocks:
            raise EvidenceFormatError("GPU measurement block count disagrees with the record")
        responder_nonce = resp[pos : pos + NONCE_LEN]
        pos += NONCE_LEN
        opaque_len = int.from_bytes(resp[pos : pos + 2], "little")
        pos += 2
        if pos + opaque_len + SIG_LEN != len(resp):
            raise EvidenceFormatError(
                "GPU response length disagrees with its opaque data and signature"
            )
        opaque_raw = resp[pos : pos + opaque_len]
        opaque: dict[int, bytes] = {}
        j = 0
        while j < len(opaque_raw):
            if j + 4 > len(opaque_raw):
                raise EvidenceFormatError("GPU opaque data truncated")
            t = int.from_bytes(opaque_raw[j : j + 2], "little")
            s = int.from_bytes(opaque_raw[j + 2 : j + 4], "little")
            if j + 4 + s > len(opaque_raw):
                raise EvidenceFormatError("GPU opaque field overruns its data")
            opaque[t] = opaque_raw[j + 4 : j + 4 + s]
            j += 4 + s
        return cls(
            request=request,
            response=resp,
            requester_nonce=request[4 : 4 + NONCE_LEN],
            responder_nonce=responder_nonce,
            measurements=measurements,
            record=record,
            opaque=opaque,
            signature=resp[len(resp) - SIG_LEN :],
        )


@dataclass(frozen=True)
class ReferenceManifest:
    """Reference values from one RIM: version, and per active index the allowed digests."""

    version: str
    values: dict[int, frozenset[str]]


def parse_rim(xml_bytes: bytes) -> ReferenceManifest:
    """Parse an NVIDIA RIM (SWID tag). DTDs and entities are refused before parsing.

    The RIM's XML signature is not checked here: RIMs are operator-supplied files.
    """
    if not isinstance(xml_bytes, (bytes, bytearray)) or len(xml_bytes) > MAX_RIM_BYTES:
        raise EvidenceFormatError("RIM must be at most 1 MiB of XML", check="rim")
    if b"<!DOCTYPE" in xml_bytes or b"<!ENTITY" in xml_bytes:
        raise EvidenceFormatError("RIM contains a DTD or entity declaration; refused", check="rim")
    try:
        parser = ET.XMLParser()
        parser.feed(bytes(xml_bytes))
        root = parser.close()
    except ET.ParseError:
        raise EvidenceFormatError("RIM is not well-formed XML", check="rim") from None
    ns = "{http://standards.iso.org/iso/19770/-2/2015/schema.xsd}"
    meta = root.find(ns + "Meta")
    payload = root.find(ns + "Payload")
    if root.tag != ns + "SoftwareIdentity" or meta is None or payload is None:
        raise EvidenceFormatError("RIM is not a SWID tag with Meta and Payload", check="rim")
    values: dict[int, frozenset[str]] = {}
    for res in payload.iter(ns + "Resource"):
        if res.get("active") != "True":
            continue
        try:
            index = int(res.get("index", ""))
            count = int(res.get("alternatives", "1"))
        except ValueError:
            raise EvidenceFormatError("RIM resource has a bad index", check="rim") from None
        if not 0 <= index < 255 or not 1 <= count <= 16:
            raise EvidenceFormatError(
                "RIM resource index or alternatives out of range", check="rim"
            )
        hashes_ = {
            v.lower() for k, v in res.attrib.items() if k.rsplit("}", 1)[-1].startswith("Hash")
        }
        if not hashes_:
            raise EvidenceFormatError("RIM resource has no reference hash", check="rim")
        values[index] = frozenset(hashes_)
    return ReferenceManifest(version=meta.get("colloquialVersion", ""), values=values)


def check_rims(ev: SpdmMeasurements, rims: list[ReferenceManifest]) -> None:
    """Every active RIM index must match; each RIM must be for this driver or VBIOS version."""
    versions = {v.lower() for v in (ev.driver_version, ev.vbios_version) if v}
    for rim in rims:
        if rim.version.lower() not in versions:
            raise AttestationError(
                f"RIM version {rim.version!r} matches neither driver nor VBIOS of the GPU",
                check="rim-version",
            )
        for index, allowed in rim.values.items():
            value = ev.measurements.get(index + 1)
            if value is None or value.hex() not in allowed:
                raise AttestationError(
                    f"GPU measurement {index} differs from the RIM", check="rim-measurement"
                )


def verify_gpu(
    evidence: bytes,
    certs: list[bytes] | tuple[bytes, ...],
    *,
    expected_nonce: bytes | None,
    now: _x509.Timestamp,
    rims: list[bytes] | None = None,
) -> GpuClaim:
    """Verify one GPU's SPDM evidence; returns a `GpuClaim` or raises an `AttestationError`.

    Order: structure, device chain to the pinned NVIDIA root (valid at `now`), signature,
    requester nonce, then RIMs when given.
    """
    when = _x509.as_datetime(now)
    ev = SpdmMeasurements.parse(evidence)
    chain = _x509.load_certs(list(certs), "GPU certificate")
    if not chain:
        raise CertificateChainError("GPU evidence came without its device certificate chain")
    root = _x509.load_certs([NVIDIA_DEVICE_ROOT_PEM.encode()])[0]
    if _x509.fingerprint(chain[-1]) != NVIDIA_DEVICE_ROOT_SHA256:
        chain.append(root)
    for cert, issuer in itertools.pairwise(chain):
        _x509.verify_ecdsa_sha384(cert, issuer, "GPU device chain")
    _x509.verify_ecdsa_sha384(root, root, "NVIDIA device root")
    for cert in chain:
        _x509.check_validity(cert, when, "GPU device chain")
    key = chain[0].public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
        raise CertificateChainError("GPU attestation key is not ECDSA P-384")
    r = int.from_bytes(ev.signature[:48], "big")
    s = int.from_bytes(ev.signature[48:], "big")
    if not (0 < r < P384_ORDER and 0 < s < P384_ORDER):
        raise SignatureInvalid("GPU measurement signature is out of range")
    try:
        key.verify(encode_dss_signature(r, s), ev.signed_message, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        raise SignatureInvalid(
            "GPU measurement signature does not verify under the device key"
        ) from None
    if expected_nonce is not None and not hmac.compare_digest(
        ev.requester_nonce, bytes(expected_nonce)
    ):
        raise BindingMismatch("GPU evidence answers a different nonce", check="nonce")
    parsed = [parse_rim(x) for x in (rims or [])]
    if parsed:
        check_rims(ev, parsed)
    return GpuClaim(
        device_cert_subject=chain[0].subject.rfc4514_string(),
        measurements_digest=hashlib.sha384(ev.record).hexdigest(),
        driver_version=ev.driver_version,
        vbios_version=ev.vbios_version,
        rim_checked=bool(parsed),
    )


# -- collection ---------------------------------------------------------------------------------


class NvmlGpuEvidenceSource:
    """Collects SPDM evidence from every CC-mode GPU through NVML (`nvidia-ml-py`)."""

    def collect(self, nonce: bytes) -> tuple[GpuEvidence, ...]:
        if len(nonce) != NONCE_LEN:
            raise ValueError("GPU nonce must be 32 bytes")
        try:
            import pynvml  # optional extra: nvidia-ml-py
        except ImportError:
            raise TeeUnavailable(
                "nvidia-cc: NVML bindings (nvidia-ml-py) are not installed"
            ) from None
        try:
            pynvml.nvmlInit()
        except (pynvml.NVMLError, OSError) as exc:
            raise TeeUnavailable(f"nvidia-cc: NVML unavailable: {exc}") from None
        try:
            state = pynvml.nvmlSystemGetConfComputeState()
            if state.ccFeature != 1:
                raise TeeUnavailable("nvidia-cc: GPU confidential computing is not enabled")
            if state.devToolsMode:
                raise TeeUnavailable("nvidia-cc: GPU is in CC devtools mode (not confidential)")
            out = []
            for i in range(pynvml.nvmlDeviceGetCount()):
                handle = pynvml.nvmlDeviceGetHandleByIndex(i)
                report = pynvml.nvmlDeviceGetConfComputeGpuAttestationReport(handle, nonce)
                certs = pynvml.nvmlDeviceGetConfComputeGpuCertificate(handle)
                evidence = bytes(report.attestationReport[: report.attestationReportSize])
                pem = bytes(certs.attestationCertChain[: certs.attestationCertChainSize])
                chain = tuple(_x509.der(c) for c in _x509.load_certs([pem], "GPU certificate"))
                out.append(GpuEvidence(evidence=evidence, certs=chain))
            if not out:
                raise TeeUnavailable("nvidia-cc: no GPU found")
            return tuple(out)
        except (pynvml.NVMLError, OSError, AttributeError, ValueError, EvidenceFormatError) as exc:
            raise TeeUnavailable(f"nvidia-cc: GPU evidence collection failed: {exc}") from None
        finally:
            with contextlib.suppress(pynvml.NVMLError):
                pynvml.nvmlShutdown()


class NvidiaCcAttester(Attester):
    """A CPU TEE attester plus GPU evidence over a nonce derived from the same report data."""

    def __init__(self, cpu: Attester, gpus: NvmlGpuEvidenceSource | None = None) -> None:
        self._cpu = cpu
        self._gpus = gpus or NvmlGpuEvidenceSource()
        self.kind = cpu.kind

    def attest(self, report_data: bytes) -> EvidenceBundle:
        rd = check_report_data(report_data)
        cpu = self._cpu.attest(rd)
        gpus = self._gpus.collect(gpu_nonce(rd))
        return EvidenceBundle(
            kind=cpu.kind,
            evidence=cpu.evidence,
            certs=cpu.certs,
            collateral=cpu.collateral,
            gpus=gpus,
        )

    def describe(self) -> dict[str, Any]:
        return {**self._cpu.describe(), "gpu": "nvidia-cc"}
