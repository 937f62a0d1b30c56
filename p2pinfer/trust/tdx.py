"""Intel TDX: quote v4/v5 layout, offline DCAP verification via `dcap-qvl`, and the attester.

Layout: Intel "TDX DCAP Quoting Library API" (quote format v4, Appendix A: header 48 bytes, TD
quote body 584 bytes with TD_ATTRIBUTES at 0x78, MRTD at 0x88, RTMR0..3 from 0x148 and
REPORTDATA at 0x208 within the body; quote signature data with certification data type 6 =
QE report, its signature, QE auth data and a type-5 PEM PCK chain). v5 inserts a body type
(u16) and body size (u32) after the header. DCAP checks (PCK chain to the Intel SGX Root CA with
CRLs, QE report signature and binding, QE identity, TCB info by FMSPC, quote signature) run in
`dcap_qvl`; this module checks the structure first and applies policy to the verified report.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dcap_qvl

from p2pinfer.trust import _x509, configfs_tsm
from p2pinfer.trust.attester import Attester, check_report_data
from p2pinfer.trust.binding import check_binding
from p2pinfer.trust.claims import TeeLevel, VerifiedClaims
from p2pinfer.trust.errors import (
    AttestationError,
    CertificateChainError,
    EvidenceFormatError,
    PolicyViolation,
    SignatureInvalid,
    TcbMismatch,
    ValidityError,
)
from p2pinfer.trust.evidence import (
    KIND_TDX,
    MAX_COLLATERAL_BYTES,
    MAX_EVIDENCE_BYTES,
    EvidenceBundle,
)
from p2pinfer.trust.policy import Policy

HEADER_SIZE = 0x30
TD10_BODY_SIZE = 584
TD15_BODY_SIZE = 648
TEE_TYPE_TDX = 0x81
ATT_KEY_ECDSA_P256 = 2
CERT_TYPE_QE_REPORT = 6
CERT_TYPE_PCK_CHAIN = 5
QE_REPORT_SIZE = 384
ECDSA_SIG_SIZE = 64
ATT_KEY_SIZE = 64
TD_ATTR_DEBUG = 0x01

# SHA-256 of the DER of the Intel SGX Root CA (CN=Intel SGX Root CA, valid 2018-2049).
INTEL_SGX_ROOT_CA_SHA256 = "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3"


@dataclass(frozen=True)
class TdxQuote:
    """Fields of a TDX quote used for policy, plus the PCK chain carried in it."""

    raw: bytes
    version: int
    tee_tcb_svn: bytes
    mr_seam: bytes
    td_attributes: bytes
    xfam: bytes
    mr_td: bytes
    mr_config_id: bytes
    rtmrs: tuple[bytes, bytes, bytes, bytes]
    report_data: bytes
    pck_chain_pem: bytes

    @property
    def debug(self) -> bool:
        return bool(self.td_attributes[0] & TD_ATTR_DEBUG)

    @classmethod
    def parse(cls, data: bytes) -> TdxQuote:
        if not isinstance(data, (bytes, bytearray)):
            raise EvidenceFormatError("TDX quote must be bytes")
        q = bytes(data)
        if len(q) > MAX_EVIDENCE_BYTES:
            raise EvidenceFormatError("TDX quote is too large")
        r = _Reader(q)
        version, key_type, tee_type = struct.unpack("<HHI", r.take(8, "header"))
        r.take(HEADER_SIZE - 8, "header")
        if version not in (4, 5):
            raise EvidenceFormatError(f"unsupported TDX quote version {version}")
        if key_type != ATT_KEY_ECDSA_P256:
            raise EvidenceFormatError(f"unsupported TDX attestation key type {key_type}")
        if tee_type != TEE_TYPE_TDX:
            raise EvidenceFormatError("quote is not a TDX quote (TEE type)")
        body_size = TD10_BODY_SIZE
        if version == 5:
            body_type, body_size = struct.unpack("<HI", r.take(6, "body descriptor"))
            if (body_type, body_size) not in ((2, TD10_BODY_SIZE), (3, TD15_BODY_SIZE)):
                raise EvidenceFormatError("unsupported TDX quote v5 body type")
        body = r.take(body_size, "TD quote body")
        (sig_len,) = struct.unpack("<I", r.take(4, "signature data length"))
        sig = _Reader(r.take(sig_len, "signature data"))
        if any(r.take(r.remaining, "padding")):
            raise EvidenceFormatError("TDX quote has non-zero data after its signature data")
        sig.take(ECDSA_SIG_SIZE + ATT_KEY_SIZE, "quote signature")
        cert_type, cert_size = struct.unpack("<HI", sig.take(6, "certification data header"))
        if cert_type != CERT_TYPE_QE_REPORT:
            raise EvidenceFormatError(f"unsupported TDX certification data type {cert_type}")
        if cert_size != sig.remaining:
            raise EvidenceFormatError(
                "TDX certification data size disagrees with the signature length"
            )
        qe = _Reader(sig.take(cert_size, "QE certification data"))
        qe.take(QE_REPORT_SIZE + ECDSA_SIG_SIZE, "QE report")
        (auth_len,) = struct.unpack("<H", qe.take(2, "QE auth data length"))
        qe.take(auth_len, "QE auth data")
        inner_type, inner_size = struct.unpack("<HI", qe.take(6, "PCK certification data header"))
        if inner_type != CERT_TYPE_PCK_CHAIN:
            raise EvidenceFormatError("TDX quote does not carry a PCK certificate chain (type 5)")
        if inner_size != qe.remaining:
            raise EvidenceFormatError(
                "TDX PCK chain size disagrees with the certification data size"
            )
        pem = qe.take(inner_size, "PCK chain").rstrip(b"\x00")
        return cls(
            raw=q,
            version=version,
            tee_tcb_svn=body[0x00:0x10],
            mr_seam=body[0x10:0x40],
            td_attributes=body[0x78:0x80],
            xfam=body[0x80:0x88],
            mr_td=body[0x88:0xB8],
            mr_config_id=body[0xB8:0xE8],
            rtmrs=(body[0x148:0x178], body[0x178:0x1A8], body[0x1A8:0x1D8], body[0x1D8:0x208]),
            report_data=body[0x208:0x248],
            pck_chain_pem=pem,
        )


class _Reader:
    def __init__(self, data: bytes) -> None:
        self._d = data
        self._p = 0

    @property
    def remaining(self) -> int:
        return len(self._d) - self._p

    def take(self, n: int, what: str) -> bytes:
        if n > self.remaining:
            raise EvidenceFormatError(f"TDX quote truncated in {what}")
        out = self._d[self._p : self._p + n]
        self._p += n
        return out


def load_collateral(collateral: bytes | str | None) -> dcap_qvl.QuoteCollateralV3:
    """dcap-qvl JSON collateral (TCB info, QE identity, CRLs, issuer chains) -> object."""
    if collateral is None:
        raise AttestationError(
            "TDX verification needs collateral (dcap-qvl JSON)", check="collateral"
        )
    if isinstance(collateral, (bytes, bytearray)):
        if len(collateral) > MAX_COLLATERAL_BYTES:
            raise EvidenceFormatError("TDX collateral is too large", check="collateral")
        try:
            collateral = bytes(collateral).decode("utf-8")
        except UnicodeDecodeError:
            raise EvidenceFormatError(
                "TDX collateral is not UTF-8 JSON", check="collateral"
            ) from None
    if len(collateral) > MAX_COLLATERAL_BYTES:
        raise EvidenceFormatError("TDX collateral is too large", check="collateral")
    try:
        return dcap_qvl.QuoteCollateralV3.from_json(collateral)
    except (ValueError, TypeError) as exc:
        raise EvidenceFormatError(
            f"TDX collateral is malformed: {_first_line(exc)}", check="collateral"
        ) from None


def _collateral_expiry(col: dcap_qvl.QuoteCollateralV3) -> int | None:
    times = []
    for doc in (col.tcb_info, col.qe_identity):
        try:
            nxt = json.loads(doc).get("nextUpdate")
            times.append(int(dt.datetime.fromisoformat(nxt).timestamp()))
        except (ValueError, AttributeError, TypeError):
            continue
    return min(times) if times else None


def _check_pck_chain(quote: TdxQuote, when: dt.datetime) -> None:
    certs = _x509.load_certs([quote.pck_chain_pem], "PCK certificate")
    if len(certs) < 2:
        raise CertificateChainError("TDX quote's PCK chain is incomplete")
    if _x509.fingerprint(certs[-1]) != INTEL_SGX_ROOT_CA_SHA256:
        raise CertificateChainError("TDX PCK chain does not end at the pinned Intel SGX Root CA")
    for cert in certs:
        _x509.check_validity(cert, when, "PCK chain")


def _map_dcap_error(exc: Exception) -> AttestationError:
    msg = _first_line(exc)
    full = str(exc)
    low = full.lower()
    if "expired" in low or "not valid yet" in low or "notvalidyet" in low or "future" in low:
        return ValidityError(f"TDX: {msg}")
    if "revoked" in low or "certificate" in low or "crl" in low or "cert chain" in low:
        return CertificateChainError(f"TDX: {msg}")
    if "hash mismatch" in low:
        return SignatureInvalid(f"TDX: {msg}", check="qe-binding")
    if "signature" in low:
        return SignatureInvalid(f"TDX: {msg}")
    if (
        "decode" in low
        or "unsupported" in low
        or "invalid tee type" in low
        or "unknown qe vendor" in low
    ):
        return EvidenceFormatError(f"TDX: {msg}")
    if "tcb" in low or "qe identity" in low or "enclave" in low:
        return TcbMismatch(f"TDX: {msg}")
    return AttestationError(f"TDX: {msg}", check="dcap")


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def verify(
    quote_bytes: bytes,
    collateral: bytes | str | None,
    *,
    expected_report_data: bytes | None,
    policy: Policy,
    now: _x509.Timestamp,
) -> VerifiedClaims:
    """Verify a TDX quote offline; returns claims or raises an `AttestationError`.

    Order: structure, PCK chain pinned to the Intel root and valid at `now`, full DCAP
    verification by dcap-qvl (signatures, CRLs, QE identity, TCB info), TCB status allowed by
    policy, binding, then policy (debug, MRTD and RTMR allowlists).
    """
    when = _x509.as_datetime(now)
    quote = TdxQuote.parse(quote_bytes)
    col = load_collateral(collateral)
    _check_pck_chain(quote, when)
    try:
        report = dcap_qvl.verify(quote.raw, col, int(when.timestamp()))
    except (ValueError, RuntimeError) as exc:
        raise _map_dcap_error(exc) from None
    status = str(report.status)
    if status not in policy.tdx_tcb_statuses:
        raise TcbMismatch(f"TDX TCB status {status} is not accepted by policy", check="tcb-status")
    verified = _verified_td_report(report)
    for name, ours in (
        ("mr_td", quote.mr_td),
        ("report_data", quote.report_data),
        ("td_attributes", quote.td_attributes),
    ):
        if verified.get(name, "").lower() != ours.hex():
            raise EvidenceFormatError(f"TDX quote parse disagrees with the verified {name}")
    if expected_report_data is not None:
        check_binding(quote.report_data, expected_report_data)
    policy.check_debug(quote.debug)
    measurement = quote.mr_td.hex()
    policy.check_measurement(KIND_TDX, measurement)
    for idx, allowed in policy.tdx_rtmrs.items():
        if allowed and quote.rtmrs[idx].hex() not in allowed:
            raise PolicyViolation(f"RTMR{idx} is not in the allowlist", check="measurement")
    expiry = int(when.timestamp()) + policy.claims_ttl_s
    col_expiry = _collateral_expiry(col)
    if col_expiry is not None:
        expiry = min(expiry, col_expiry)
    return VerifiedClaims(
        kind=KIND_TDX,
        tee_level=TeeLevel.CPU_TEE,
        measurement=measurement,
        debug=quote.debug,
        simulated=False,
        expiry=expiry,
        evidence_digest=hashlib.sha256(quote.raw).hexdigest(),
        tcb={
            "status": status,
            "advisory_ids": list(report.advisory_ids),
            "tee_tcb_svn": quote.tee_tcb_svn.hex(),
        },
        chip_id=None,
        report_data=quote.report_data.hex(),
        details={
            "version": quote.version,
            "mr_seam": quote.mr_seam.hex(),
            "td_attributes": quote.td_attributes.hex(),
            "xfam": quote.xfam.hex(),
            "mr_config_id": quote.mr_config_id.hex(),
            "rtmrs": [m.hex() for m in quote.rtmrs],
        },
    )


def _verified_td_report(report: Any) -> dict[str, str]:
    try:
        doc = json.loads(report.to_json())
        body = doc["report"]
        inner = next(iter(body.values()))
        return {k: str(v) for k, v in inner.items()}
    except (ValueError, KeyError, StopIteration, AttributeError, TypeError):
        raise EvidenceFormatError("dcap-qvl returned a report this verifier cannot read") from None


class TdxAttester(Attester):
    """Quotes from a TDX guest through configfs-tsm (provider "tdx_guest").

    Collateral cannot be fetched offline; `collateral_path` names a dcap-qvl JSON file the
    operator keeps current (it is attached to every bundle), otherwise verifiers supply it.
    """

    kind = KIND_TDX

    def __init__(
        self, *, collateral_path: Path | None = None, tsm_root: Path = configfs_tsm.TSM_REPORT_DIR
    ) -> None:
        self._collateral_path = collateral_path
        self._tsm_root = tsm_root

    def attest(self, report_data: bytes) -> EvidenceBundle:
        rd = check_report_data(report_data)
        got = configfs_tsm.get_report(rd, expect_provider="tdx_guest", root=self._tsm_root)
        TdxQuote.parse(got.outblob)
        collateral = self._collateral_path.read_bytes() if self._collateral_path else None
        return EvidenceBundle(kind=self.kind, evidence=got.outblob, collateral=collateral)

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "configfs_tsm": configfs_tsm.available(self._tsm_root),
            "collateral": str(self._collateral_path) if self._collateral_path else None,
        }
