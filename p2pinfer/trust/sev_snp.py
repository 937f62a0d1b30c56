"""AMD SEV-SNP: attestation report layout, offline verification, and the guest attester.

Layout and semantics: AMD "SEV Secure Nested Paging Firmware ABI Specification" (pub. 56860),
Table 23 ATTESTATION_REPORT (0x4A0 bytes, little-endian) and Table 136 (ECDSA P-384 signature:
R and S as 72-byte little-endian fields); VCEK certificate extensions: AMD "Versioned Chip
Endorsement Key (VCEK) Certificate and KDS Interface Specification" (pub. 57230), Table 8.
Guest interfaces: Linux configfs-tsm and the /dev/sev-guest SNP_GET_REPORT ioctl
(include/uapi/linux/sev-guest.h).
"""

from __future__ import annotations

import ctypes
import datetime as dt
import fcntl
import hashlib
import os
import struct
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from p2pinfer.trust import _x509, configfs_tsm
from p2pinfer.trust.amd_roots import ARK_SHA256, ASK_ARK_PEM
from p2pinfer.trust.attester import Attester, check_report_data
from p2pinfer.trust.binding import check_binding
from p2pinfer.trust.claims import TeeLevel, VerifiedClaims
from p2pinfer.trust.errors import (
    CertificateChainError,
    EvidenceFormatError,
    PolicyViolation,
    SignatureInvalid,
    TcbMismatch,
    TeeUnavailable,
)
from p2pinfer.trust.evidence import KIND_SEV_SNP, EvidenceBundle
from p2pinfer.trust.policy import Policy

REPORT_SIZE = 0x4A0
SIGNED_END = 0x2A0
SIG_R, SIG_S, SIG_FIELD = 0x2A0, 0x2E8, 72
SIG_ALGO_ECDSA_P384_SHA384 = 1
POLICY_SMT, POLICY_MIGRATE_MA, POLICY_DEBUG = 1 << 16, 1 << 18, 1 << 19
KEY_VCEK, KEY_VLEK, KEY_NONE = 0, 1, 7
P384_ORDER = int(
    "ffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf581a0db248b0a77aecec196accc52973",
    16,
)

_OID_PRODUCT = "1.3.6.1.4.1.3704.1.2"
_OID_SPL = {
    "bl": "1.3.6.1.4.1.3704.1.3.1",
    "tee": "1.3.6.1.4.1.3704.1.3.2",
    "snp": "1.3.6.1.4.1.3704.1.3.3",
    "microcode": "1.3.6.1.4.1.3704.1.3.8",
    "fmc": "1.3.6.1.4.1.3704.1.3.9",
}
_OID_HWID = "1.3.6.1.4.1.3704.1.4"

# GUIDs of the GHCB extended-request certificate table (auxblob).
_GUID_VCEK = uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd")
_GUID_VLEK = uuid.UUID("a8074bc2-a25a-483e-aae6-39c045a0b8a1")
_GUID_ASK = uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782")
_GUID_ARK = uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae")


@dataclass(frozen=True)
class SnpReport:
    """The fields of an ATTESTATION_REPORT this project uses (offsets in `parse`)."""

    raw: bytes
    version: int
    guest_svn: int
    policy: int
    vmpl: int
    signature_algo: int
    current_tcb: int
    platform_info: int
    signer_info: int
    report_data: bytes
    measurement: bytes
    host_data: bytes
    reported_tcb: int
    chip_id: bytes
    signature_r: bytes
    signature_s: bytes

    @classmethod
    def parse(cls, data: bytes) -> SnpReport:
        if not isinstance(data, (bytes, bytearray)):
            raise EvidenceFormatError("SEV-SNP report must be bytes")
        if len(data) != REPORT_SIZE:
            raise EvidenceFormatError(
                f"SEV-SNP report must be {REPORT_SIZE} bytes, got {len(data)}"
            )
        d = bytes(data)
        version, guest_svn, policy = struct.unpack_from("<IIQ", d, 0x00)
        vmpl, sig_algo, current_tcb, platform_info, signer_info = struct.unpack_from(
            "<IIQQI", d, 0x30
        )
        if version < 2 or version > 5:
            raise EvidenceFormatError(f"unsupported SEV-SNP report version {version}")
        if sig_algo != SIG_ALGO_ECDSA_P384_SHA384:
            raise EvidenceFormatError(f"unsupported SEV-SNP signature algorithm {sig_algo}")
        if vmpl > 3:
            raise EvidenceFormatError(f"SEV-SNP report VMPL {vmpl} out of range")
        (reported_tcb,) = struct.unpack_from("<Q", d, 0x180)
        return cls(
            raw=d,
            version=version,
            guest_svn=guest_svn,
            policy=policy,
            vmpl=vmpl,
            signature_algo=sig_algo,
            current_tcb=current_tcb,
            platform_info=platform_info,
            signer_info=signer_info,
            report_data=d[0x50:0x90],
            measurement=d[0x90:0xC0],
            host_data=d[0xC0:0xE0],
            reported_tcb=reported_tcb,
            chip_id=d[0x1A0:0x1E0],
            signature_r=d[SIG_R : SIG_R + SIG_FIELD],
            signature_s=d[SIG_S : SIG_S + SIG_FIELD],
        )

    @property
    def debug(self) -> bool:
        return bool(self.policy & POLICY_DEBUG)

    @property
    def migrate_ma(self) -> bool:
        return bool(self.policy & POLICY_MIGRATE_MA)

    @property
    def signing_key(self) -> int:
        return (self.signer_info >> 2) & 0x7

    @property
    def mask_chip_id(self) -> bool:
        return bool(self.signer_info & 0x2)


def tcb_parts(tcb: int, product: str) -> dict[str, int]:
    """Split a TCB_VERSION u64 into its security patch levels (Turin has its own layout)."""
    b = tcb.to_bytes(8, "little")
    if product == "Turin":
        return {"fmc": b[0], "bl": b[1], "tee": b[2], "snp": b[3], "microcode": b[7]}
    return {"bl": b[0], "tee": b[1], "snp": b[6], "microcode": b[7]}


# -- verification ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SnpChain:
    """Leaf endorsement key (VCEK or VLEK), its signer (ASK/ASVK) and the pinned ARK."""

    leaf: x509.Certificate
    ask: x509.Certificate
    ark: x509.Certificate
    product: str


def product_of(leaf: x509.Certificate) -> str:
    """Product name from the VCEK issuer ("SEV-Milan") or productName extension ("Milan-B0")."""
    for attr in leaf.issuer.get_attributes_for_oid(x509.NameOID.COMMON_NAME):
        name = str(attr.value)
        for product in ARK_SHA256:
            if name in (f"SEV-{product}", f"SEV-VLEK-{product}"):
                return product
    raw = _ext_raw(leaf, _OID_PRODUCT)
    if raw is not None:
        for product in ARK_SHA256:
            if product.encode() in raw:
                return product
    raise CertificateChainError("cannot tell the AMD product (Milan, Genoa, Turin) of the VCEK")


def build_chain(certs: list[bytes] | tuple[bytes, ...]) -> SnpChain:
    """VCEK[, ASK[, ARK]] (DER or PEM) -> chain; a missing ASK/ARK comes from the pinned set."""
    loaded = _x509.load_certs(list(certs), "SEV-SNP certificate")
    if not loaded:
        raise CertificateChainError("SEV-SNP verification needs the VCEK certificate of the chip")
    leaf = loaded[0]
    product = product_of(leaf)
    if len(loaded) >= 3:
        ask, ark = loaded[1], loaded[2]
    else:
        pinned = _x509.load_certs([ASK_ARK_PEM[product].encode()])
        ask = loaded[1] if len(loaded) == 2 else pinned[0]
        ark = pinned[1]
    fp = _x509.fingerprint(ark)
    pinned_product = next((p for p, pin in ARK_SHA256.items() if pin == fp), None)
    if pinned_product is None:
        raise CertificateChainError("ARK is not one of AMD's pinned roots")
    if pinned_product != product:
        raise CertificateChainError(f"VCEK is for {product} but the ARK is {pinned_product}'s")
    return SnpChain(leaf=leaf, ask=ask, ark=ark, product=product)


def verify_chain(chain: SnpChain, now: dt.datetime) -> None:
    _x509.verify_rsa_pss_sha384(chain.ark, chain.ark, "ARK (self-signed)")
    _x509.verify_rsa_pss_sha384(chain.ask, chain.ark, "ASK")
    _x509.verify_rsa_pss_sha384(chain.leaf, chain.ask, "VCEK")
    for cert, what in ((chain.ark, "ARK"), (chain.ask, "ASK"), (chain.leaf, "VCEK")):
        _x509.check_validity(cert, now, what)
    key = chain.leaf.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
        raise CertificateChainError("VCEK key is not ECDSA P-384")


def check_tcb(report: SnpReport, chain: SnpChain) -> dict[str, int]:
    """VCEK SPL extensions must equal REPORTED_TCB; its hwID must equal CHIP_ID."""
    reported = tcb_parts(report.reported_tcb, chain.product)
    for name, value in reported.items():
        raw = _ext_raw(chain.leaf, _OID_SPL[name])
        if raw is None:
            raise TcbMismatch(f"VCEK lacks the {name} SPL extension")
        if _der_small_int(raw) != value:
            raise TcbMismatch(f"reported {name} SPL {value} differs from the VCEK's")
    if report.signing_key == KEY_VCEK and not report.mask_chip_id:
        hwid = _ext_raw(chain.leaf, _OID_HWID)
        if hwid is not None and len(hwid) == 66 and hwid[:2] == b"\x04\x40":
            hwid = hwid[2:]
        if hwid is None or not _ct_eq(hwid, report.chip_id):
            raise TcbMismatch("CHIP_ID differs from the VCEK's hwID", check="chip-id")
    return reported


def check_signature(report: SnpReport, chain: SnpChain) -> None:
    r = int.from_bytes(report.signature_r, "little")
    s = int.from_bytes(report.signature_s, "little")
    if not (0 < r < P384_ORDER and 0 < s < P384_ORDER):
        raise SignatureInvalid("SEV-SNP report signature is out of range")
    key = chain.leaf.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    try:
        key.verify(encode_dss_signature(r, s), report.raw[:SIGNED_END], ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        raise SignatureInvalid("SEV-SNP report signature does not verify under the VCEK") from None


def verify(
    report_bytes: bytes,
    certs: list[bytes] | tuple[bytes, ...],
    *,
    expected_report_data: bytes | None,
    policy: Policy,
    now: _x509.Timestamp,
) -> VerifiedClaims:
    """Verify an SEV-SNP report offline; returns claims or raises an `AttestationError`.

    Order: format, chain to the pinned ARK (and validity at `now`), TCB and chip id against
    the VCEK, report signature, channel binding, then policy (debug, migration agent, VMPL,
    measurement allowlist). `expected_report_data=None` skips the binding (operator use only).
    """
    when = _x509.as_datetime(now)
    report = SnpReport.parse(report_bytes)
    if report.signing_key == KEY_NONE:
        raise SignatureInvalid("SEV-SNP report is unsigned")
    if report.signing_key not in (KEY_VCEK, KEY_VLEK):
        raise EvidenceFormatError(f"unknown SEV-SNP signing key type {report.signing_key}")
    chain = build_chain(certs)
    verify_chain(chain, when)
    tcb = check_tcb(report, chain)
    check_signature(report, chain)
    if expected_report_data is not None:
        check_binding(report.report_data, expected_report_data)
    policy.check_debug(report.debug)
    if report.migrate_ma and not policy.snp_allow_migration_agent:
        raise PolicyViolation("guest policy allows a migration agent", check="migration-agent")
    if report.vmpl > policy.snp_max_vmpl:
        raise PolicyViolation(
            f"report made at VMPL {report.vmpl} > {policy.snp_max_vmpl}", check="vmpl"
        )
    measurement = report.measurement.hex()
    policy.check_measurement(KIND_SEV_SNP, measurement)
    expiry = min(
        int(when.timestamp()) + policy.claims_ttl_s,
        *(int(c.not_valid_after_utc.timestamp()) for c in (chain.leaf, chain.ask, chain.ark)),
    )
    return VerifiedClaims(
        kind=KIND_SEV_SNP,
        tee_level=TeeLevel.CPU_TEE,
        measurement=measurement,
        debug=report.debug,
        simulated=False,
        expiry=expiry,
        evidence_digest=hashlib.sha256(report.raw).hexdigest(),
        tcb=tcb,
        chip_id=report.chip_id.hex(),
        report_data=report.report_data.hex(),
        details={
            "product": chain.product,
            "version": report.version,
            "policy": f"0x{report.policy:x}",
            "vmpl": report.vmpl,
            "guest_svn": report.guest_svn,
            "host_data": report.host_data.hex(),
            "signing_key": "vcek" if report.signing_key == KEY_VCEK else "vlek",
        },
    )


def _ext_raw(cert: x509.Certificate, oid: str) -> bytes | None:
    try:
        ext = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(oid))
    except x509.ExtensionNotFound:
        return None
    value = ext.value
    return value.value if isinstance(value, x509.UnrecognizedExtension) else None


def _der_small_int(raw: bytes) -> int:
    """A DER INTEGER (tag 0x02) of at most 8 bytes, as found in VCEK SPL extensions."""
    if len(raw) < 3 or raw[0] != 0x02 or raw[1] != len(raw) - 2 or raw[1] > 8:
        raise TcbMismatch("VCEK SPL extension is not a small DER INTEGER")
    return int.from_bytes(raw[2:], "big", signed=True)


def _ct_eq(a: bytes, b: bytes) -> bool:
    import hmac

    return hmac.compare_digest(a, b)


# -- guest side ---------------------------------------------------------------------------------

SEV_GUEST_DEVICE = Path("/dev/sev-guest")
# _IOWR('S', 0x0, struct snp_guest_request_ioctl) with sizeof == 32
SNP_GET_REPORT = (3 << 30) | (32 << 16) | (ord("S") << 8) | 0x0


def parse_cert_table(aux: bytes) -> list[bytes]:
    """GHCB certificate table (GUID, offset u32, length u32; all-zero entry ends it) -> DER
    certificates ordered VCEK/VLEK, ASK, ARK."""
    found: dict[uuid.UUID, bytes] = {}
    pos = 0
    while pos + 24 <= len(aux):
        guid_bytes = aux[pos : pos + 16]
        offset, length = struct.unpack_from("<II", aux, pos + 16)
        pos += 24
        if guid_bytes == bytes(16) and offset == 0 and length == 0:
            break
        if offset + length > len(aux):
            raise EvidenceFormatError("SEV-SNP certificate table entry points past its end")
        guid = uuid.UUID(bytes_le=guid_bytes)
        found[guid] = aux[offset : offset + length]
    out = []
    for guid in (_GUID_VCEK, _GUID_VLEK, _GUID_ASK, _GUID_ARK):
        if guid in found:
            out.append(
                found[guid].rstrip(b"\x00") if found[guid].startswith(b"-----") else found[guid]
            )
    return out


class SevSnpAttester(Attester):
    """Reports from an SEV-SNP guest: configfs-tsm first, then the /dev/sev-guest ioctl.

    `vcek_path` names a DER VCEK cached by the operator (from AMD KDS), used when the host
    does not supply certificates with the report.
    """

    kind = KIND_SEV_SNP

    def __init__(
        self,
        *,
        vmpl: int | None = None,
        vcek_path: Path | None = None,
        tsm_root: Path = configfs_tsm.TSM_REPORT_DIR,
        device: Path = SEV_GUEST_DEVICE,
    ) -> None:
        self._vmpl = vmpl
        self._vcek_path = vcek_path
        self._tsm_root = tsm_root
        self._device = device

    def attest(self, report_data: bytes) -> EvidenceBundle:
        rd = check_report_data(report_data)
        certs: list[bytes] = []
        if configfs_tsm.available(self._tsm_root):
            got = configfs_tsm.get_report(
                rd, expect_provider="sev_guest", privlevel=self._vmpl, root=self._tsm_root
            )
            report = got.outblob
            if got.auxblob:
                certs = parse_cert_table(got.auxblob)
        elif self._device.exists():
            report = self._ioctl_report(rd)
        else:
            raise TeeUnavailable(
                f"no SEV-SNP guest device (neither {self._tsm_root} nor {self._device} exists)"
            )
        if not certs and self._vcek_path is not None:
            certs = [self._vcek_path.read_bytes()]
        SnpReport.parse(report)
        return EvidenceBundle(kind=self.kind, evidence=report, certs=tuple(certs))

    def _ioctl_report(self, rd: bytes) -> bytes:
        req = ctypes.create_string_buffer(rd + struct.pack("<I", self._vmpl or 0) + bytes(28), 96)
        resp = ctypes.create_string_buffer(4000)
        arg = bytearray(struct.pack("<B7xQQQ", 1, ctypes.addressof(req), ctypes.addressof(resp), 0))
        try:
            fd = os.open(self._device, os.O_RDWR)
        except OSError as exc:
            raise TeeUnavailable(f"no SEV-SNP guest device: {exc.strerror}") from None
        try:
            fcntl.ioctl(fd, SNP_GET_REPORT, arg, True)
        except OSError as exc:
            fw_error, vmm_error = struct.unpack_from("<II", arg, 24)
            raise TeeUnavailable(
                f"SNP_GET_REPORT failed: {exc.strerror} (fw {fw_error:#x}, vmm {vmm_error:#x})"
            ) from None
        finally:
            os.close(fd)
        status, size = struct.unpack_from("<II", resp.raw, 0)
        if status != 0 or size != REPORT_SIZE:
            raise TeeUnavailable(f"SEV firmware refused the report (status {status:#x})")
        return resp.raw[0x20 : 0x20 + REPORT_SIZE]

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "configfs_tsm": configfs_tsm.available(self._tsm_root),
            "sev_guest_device": self._device.exists(),
            "vmpl": self._vmpl,
        }
