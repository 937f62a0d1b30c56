"""SEV-SNP: the recorded Milan report verifies offline; every tampering is refused by name."""

from __future__ import annotations

import datetime as dt

import pytest

from p2pinfer.trust import sev_snp
from p2pinfer.trust.amd_roots import ARK_SHA256
from p2pinfer.trust.errors import (
    AttestationError,
    BindingMismatch,
    CertificateChainError,
    EvidenceFormatError,
    PolicyViolation,
    SignatureInvalid,
    TcbMismatch,
    ValidityError,
)
from p2pinfer.trust.policy import Policy
from tests.trust.conftest import SNP_NOW, SNP_REPORT_DATA, flip

RELAXED = Policy.preset("relaxed")
STRICT = Policy.preset("strict")


def _verify(report, certs, *, policy=RELAXED, now=SNP_NOW, expected=SNP_REPORT_DATA):
    return sev_snp.verify(report, certs, expected_report_data=expected, policy=policy, now=now)


def test_recorded_report_verifies_under_relaxed_policy(snp):
    claims = _verify(snp.report, [snp.vcek])
    assert claims.kind == "amd-sev-snp"
    assert claims.debug is True
    assert claims.details["product"] == "Milan"
    assert claims.tcb == {"bl": 2, "tee": 0, "snp": 5, "microcode": 0x44}
    assert claims.measurement == snp.report[0x90:0xC0].hex()
    assert claims.chip_id == snp.report[0x1A0:0x1E0].hex()


def test_strict_policy_rejects_the_debug_guest(snp):
    with pytest.raises(PolicyViolation) as err:
        _verify(snp.report, [snp.vcek], policy=STRICT)
    assert err.value.check == "debug"


def test_full_chain_supplied_with_the_vcek_verifies(snp):
    claims = _verify(snp.report, [snp.vcek, snp.ask_ark["Milan"]])
    assert claims.details["product"] == "Milan"


def test_pinned_ark_fingerprints_match_the_recorded_pems(snp):
    from p2pinfer.trust import _x509

    for product, pem in snp.ask_ark.items():
        ark = _x509.load_certs([pem])[1]
        assert _x509.fingerprint(ark) == ARK_SHA256[product]


def test_claims_expire_no_later_than_the_vcek(snp):
    claims = _verify(snp.report, [snp.vcek], now=dt.datetime(2029, 9, 24, tzinfo=dt.UTC))
    assert claims.expiry <= int(dt.datetime(2029, 9, 24, 0, 55, 28, tzinfo=dt.UTC).timestamp())


@pytest.mark.parametrize(
    ("region", "offset", "error", "check"),
    [
        ("header: version", 0x03, EvidenceFormatError, "format"),
        ("header: guest svn", 0x04, SignatureInvalid, "signature"),
        ("header: signature algorithm", 0x34, EvidenceFormatError, "format"),
        ("header: current tcb", 0x38, SignatureInvalid, "signature"),
        ("policy", 0x08, SignatureInvalid, "signature"),
        ("policy: debug bit", 0x0A, SignatureInvalid, "signature"),
        ("report data", 0x50, SignatureInvalid, "signature"),
        ("measurement", 0x90, SignatureInvalid, "signature"),
        ("host data", 0xC0, SignatureInvalid, "signature"),
        ("reported tcb", 0x180, TcbMismatch, "tcb"),
        ("reported tcb: microcode", 0x187, TcbMismatch, "tcb"),
        ("chip id", 0x1A0, TcbMismatch, "chip-id"),
        ("chip id: last byte", 0x1DF, TcbMismatch, "chip-id"),
        ("signature R", 0x2A0, SignatureInvalid, "signature"),
        ("signature R: padding", 0x2D0, SignatureInvalid, "signature"),
        ("signature S", 0x2E8, SignatureInvalid, "signature"),
    ],
)
def test_flipped_byte_is_rejected_by_the_right_check(snp, region, offset, error, check):
    with pytest.raises(error) as err:
        _verify(flip(snp.report, offset), [snp.vcek])
    assert err.value.check == check, region


def test_wrong_binding_is_rejected(snp):
    with pytest.raises(BindingMismatch) as err:
        _verify(snp.report, [snp.vcek], expected=bytes(64))
    assert err.value.check == "binding"


def test_expired_vcek_is_rejected(snp):
    with pytest.raises(ValidityError):
        _verify(snp.report, [snp.vcek], now=dt.datetime(2030, 1, 1, tzinfo=dt.UTC))


def test_vcek_not_yet_valid_is_rejected(snp):
    with pytest.raises(ValidityError) as err:
        _verify(snp.report, [snp.vcek], now=1_600_000_000)
    assert err.value.check == "validity"


@pytest.mark.parametrize("length", [0, 1, 0x2A0, 0x4A0 - 1, 0x4A0 + 1, 0x1000])
def test_truncated_or_oversized_report_is_a_format_error(snp, length):
    data = (snp.report * 4)[:length]
    with pytest.raises(EvidenceFormatError):
        _verify(data, [snp.vcek])


def test_garbage_report_is_a_format_error(snp):
    with pytest.raises(EvidenceFormatError):
        _verify(bytes(range(256)) * 4 + bytes(0xA0), [snp.vcek])


def test_report_made_by_no_key_is_rejected(snp):
    unsigned = bytearray(snp.report)
    unsigned[0x48] |= 0x7 << 2
    with pytest.raises(SignatureInvalid):
        _verify(bytes(unsigned), [snp.vcek])


@pytest.mark.parametrize(
    "cert",
    [
        b"",
        b"garbage",
        b"\x30\x82\x05\x00" + bytes(100),
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    ],
)
def test_garbage_certificate_is_a_typed_error(snp, cert):
    with pytest.raises(AttestationError) as err:
        _verify(snp.report, [cert])
    assert err.value.check in ("certificate", "cert-chain")


def test_truncated_vcek_is_a_certificate_error(snp):
    with pytest.raises(EvidenceFormatError) as err:
        _verify(snp.report, [snp.vcek[:-20]])
    assert err.value.check == "certificate"


def test_oversized_certificate_is_refused_before_parsing(snp):
    with pytest.raises(EvidenceFormatError):
        _verify(snp.report, [snp.vcek + bytes(20000)])


def test_missing_vcek_is_a_chain_error(snp):
    with pytest.raises(CertificateChainError):
        _verify(snp.report, [])


def test_tampered_vcek_signature_is_a_chain_error(snp):
    with pytest.raises(CertificateChainError):
        _verify(snp.report, [flip(snp.vcek, len(snp.vcek) - 10)])


def test_chain_ending_at_another_products_ark_is_refused(snp):
    with pytest.raises(CertificateChainError):
        _verify(snp.report, [snp.vcek, snp.ask_ark["Genoa"]])


def test_ask_used_as_vcek_is_refused(snp):
    from p2pinfer.trust import _x509

    ask = _x509.der(_x509.load_certs([snp.ask_ark["Milan"]])[0])
    with pytest.raises(AttestationError) as err:
        _verify(snp.report, [ask])
    assert err.value.check in ("cert-chain", "tcb")


def test_measurement_allowlist_accepts_the_recorded_measurement(snp):
    m = snp.report[0x90:0xC0].hex()
    policy = Policy.from_dict({"preset": "relaxed", "measurements": {"amd-sev-snp": [m.upper()]}})
    assert _verify(snp.report, [snp.vcek], policy=policy).measurement == m


def test_measurement_outside_the_allowlist_is_refused(snp):
    policy = Policy.from_dict({"preset": "relaxed", "measurements": {"amd-sev-snp": ["00" * 48]}})
    with pytest.raises(PolicyViolation) as err:
        _verify(snp.report, [snp.vcek], policy=policy)
    assert err.value.check == "measurement"


def test_report_fields_parse_at_the_documented_offsets(snp):
    r = sev_snp.SnpReport.parse(snp.report)
    assert (r.version, r.policy, r.vmpl, r.signature_algo) == (2, 0xB0000, 0, 1)
    assert r.report_data == SNP_REPORT_DATA
    assert r.debug and not r.migrate_ma
    assert r.signing_key == sev_snp.KEY_VCEK


def test_turin_tcb_layout_differs_from_milan():
    tcb = int.from_bytes(bytes([1, 2, 3, 4, 0, 0, 0, 9]), "little")
    assert sev_snp.tcb_parts(tcb, "Turin") == {
        "fmc": 1,
        "bl": 2,
        "tee": 3,
        "snp": 4,
        "microcode": 9,
    }
    assert sev_snp.tcb_parts(tcb, "Milan") == {"bl": 1, "tee": 2, "snp": 0, "microcode": 9}


def test_certificate_table_from_auxblob_orders_vcek_ask_ark():
    import struct
    import uuid

    blobs = [
        (sev_snp._GUID_ARK, b"ark"),
        (sev_snp._GUID_VCEK, b"vcek"),
        (sev_snp._GUID_ASK, b"ask"),
    ]
    header_len = 24 * (len(blobs) + 1)
    table, body = b"", b""
    for guid, blob in blobs:
        table += uuid.UUID(str(guid)).bytes_le + struct.pack(
            "<II", header_len + len(body), len(blob)
        )
        body += blob
    aux = table + bytes(24) + body
    assert sev_snp.parse_cert_table(aux) == [b"vcek", b"ask", b"ark"]


def test_certificate_table_entry_past_the_end_is_refused():
    import struct

    aux = sev_snp._GUID_VCEK.bytes_le + struct.pack("<II", 100, 100) + bytes(24)
    with pytest.raises(EvidenceFormatError):
        sev_snp.parse_cert_table(aux)
