"""Intel TDX: the recorded quote verifies with its collateral; tampering is refused by name."""

from __future__ import annotations

import json
import struct

import pytest

from p2pinfer.trust import tdx
from p2pinfer.trust.errors import (
    AttestationError,
    BindingMismatch,
    EvidenceFormatError,
    PolicyViolation,
    SignatureInvalid,
    TcbMismatch,
    ValidityError,
)
from p2pinfer.trust.policy import Policy
from tests.trust.conftest import TDX_NOW, flip

STRICT = Policy.preset("strict")


def _verify(quote, collateral, *, policy=STRICT, now=TDX_NOW, expected=None):
    return tdx.verify(quote, collateral, expected_report_data=expected, policy=policy, now=now)


def _pem_offset(quote: bytes) -> int:
    (auth_len,) = struct.unpack_from("<H", quote, 0x4C2)
    return 0x4C4 + auth_len + 6


def test_recorded_quote_verifies_under_strict_policy(tdx_vec):
    claims = _verify(tdx_vec.quote, tdx_vec.collateral)
    assert claims.kind == "intel-tdx"
    assert claims.debug is False
    assert claims.tcb["status"] == "UpToDate"
    assert claims.measurement == tdx_vec.quote[0xB8:0xE8].hex()
    assert claims.report_data == tdx_vec.quote[0x238:0x278].hex()


def test_binding_to_the_quotes_report_data_is_accepted(tdx_vec):
    claims = _verify(tdx_vec.quote, tdx_vec.collateral, expected=tdx_vec.quote[0x238:0x278])
    assert claims.tee_level.label == "cpu-tee"


def test_wrong_binding_is_rejected(tdx_vec):
    with pytest.raises(BindingMismatch) as err:
        _verify(tdx_vec.quote, tdx_vec.collateral, expected=bytes(64))
    assert err.value.check == "binding"


def test_claims_expire_no_later_than_the_collateral(tdx_vec):
    claims = _verify(
        tdx_vec.quote, tdx_vec.collateral, policy=Policy.from_dict({"claims_ttl_s": 10**9})
    )
    assert claims.expiry == 1752920163  # TCB info nextUpdate 2025-07-19T10:16:03Z


@pytest.mark.parametrize(
    ("region", "offset", "error", "check"),
    [
        ("header: version", 0x00, EvidenceFormatError, "format"),
        ("header: key type", 0x02, EvidenceFormatError, "format"),
        ("header: tee type", 0x04, EvidenceFormatError, "format"),
        ("header: qe svn", 0x08, SignatureInvalid, "signature"),
        ("header: qe vendor", 0x0C, EvidenceFormatError, "format"),
        ("header: user data", 0x1C, SignatureInvalid, "signature"),
        ("body: tee tcb svn", 0x30, SignatureInvalid, "signature"),
        ("body: td attributes", 0xA8, SignatureInvalid, "signature"),
        ("body: mrtd", 0xB8, SignatureInvalid, "signature"),
        ("body: rtmr3", 0x208, SignatureInvalid, "signature"),
        ("body: report data", 0x238, SignatureInvalid, "signature"),
        ("signature: length", 0x278, EvidenceFormatError, "format"),
        ("signature: quote signature", 0x27C, SignatureInvalid, "signature"),
        ("signature: attestation key", 0x2BC, SignatureInvalid, "qe-binding"),
        ("cert data: type", 0x2FC, EvidenceFormatError, "format"),
        ("cert data: size", 0x2FE, EvidenceFormatError, "format"),
        ("cert data: qe report", 0x302, SignatureInvalid, "signature"),
        ("cert data: qe report data", 0x442, SignatureInvalid, "signature"),
        ("cert data: qe report signature", 0x482, SignatureInvalid, "signature"),
        ("cert data: qe auth data", 0x4C4, SignatureInvalid, "qe-binding"),
        ("cert data: trailing zeros", -5, EvidenceFormatError, "format"),
    ],
)
def test_flipped_byte_is_rejected_by_the_right_check(tdx_vec, region, offset, error, check):
    with pytest.raises(error) as err:
        _verify(flip(tdx_vec.quote, offset % len(tdx_vec.quote)), tdx_vec.collateral)
    assert err.value.check == check, region


@pytest.mark.parametrize(
    ("where", "check"), [(-6, "format"), (-4, "format"), (200, "cert-chain"), (1500, "cert-chain")]
)
def test_tampered_pck_chain_is_rejected(tdx_vec, where, check):
    pem = _pem_offset(tdx_vec.quote)
    with pytest.raises(AttestationError) as err:
        _verify(flip(tdx_vec.quote, pem + where), tdx_vec.collateral)
    assert err.value.check == check


@pytest.mark.parametrize("back", [100, 300, 500])
def test_tampered_root_certificate_in_the_quote_is_refused(tdx_vec, back):
    end = tdx_vec.quote.index(b"-----END CERTIFICATE-----", len(tdx_vec.quote) - 1000)
    with pytest.raises(AttestationError) as err:
        _verify(flip(tdx_vec.quote, end - back), tdx_vec.collateral)
    assert err.value.check in ("certificate", "cert-chain")


def test_expired_collateral_is_rejected(tdx_vec):
    with pytest.raises(ValidityError) as err:
        _verify(tdx_vec.quote, tdx_vec.collateral, now=1753000000)
    assert err.value.check == "validity"


def test_collateral_not_yet_issued_is_rejected(tdx_vec):
    with pytest.raises(ValidityError):
        _verify(tdx_vec.quote, tdx_vec.collateral, now=1750320802)


def test_missing_collateral_is_named(tdx_vec):
    with pytest.raises(AttestationError) as err:
        _verify(tdx_vec.quote, None)
    assert err.value.check == "collateral"


@pytest.mark.parametrize("collateral", [b"", b"{}", b"not json", b"\xff\xfe", b"[1,2,3]"])
def test_garbage_collateral_is_a_typed_error(tdx_vec, collateral):
    with pytest.raises(AttestationError) as err:
        _verify(tdx_vec.quote, collateral)
    assert err.value.check == "collateral"


def test_tampered_tcb_info_in_collateral_is_rejected(tdx_vec):
    doc = json.loads(tdx_vec.collateral)
    doc["tcb_info"] = doc["tcb_info"].replace('"UpToDate"', '"OutOfDate"', 1)
    with pytest.raises(AttestationError):
        _verify(tdx_vec.quote, json.dumps(doc).encode())


def test_tcb_status_outside_policy_is_refused(tdx_vec):
    policy = Policy.from_dict({"tdx_tcb_statuses": ["OutOfDate"]})
    with pytest.raises(TcbMismatch) as err:
        _verify(tdx_vec.quote, tdx_vec.collateral, policy=policy)
    assert err.value.check == "tcb-status"


def test_mrtd_allowlist_is_enforced(tdx_vec):
    mrtd = tdx_vec.quote[0xB8:0xE8].hex()
    ok = Policy.from_dict({"measurements": {"intel-tdx": [mrtd]}})
    assert _verify(tdx_vec.quote, tdx_vec.collateral, policy=ok).measurement == mrtd
    bad = Policy.from_dict({"measurements": {"intel-tdx": ["11" * 48]}})
    with pytest.raises(PolicyViolation) as err:
        _verify(tdx_vec.quote, tdx_vec.collateral, policy=bad)
    assert err.value.check == "measurement"


def test_rtmr_allowlist_is_enforced(tdx_vec):
    rtmr2 = tdx_vec.quote[0x1D8:0x208].hex()
    ok = Policy.from_dict({"tdx_rtmrs": {"2": [rtmr2]}})
    _verify(tdx_vec.quote, tdx_vec.collateral, policy=ok)
    bad = Policy.from_dict({"tdx_rtmrs": {"2": ["22" * 48]}})
    with pytest.raises(PolicyViolation):
        _verify(tdx_vec.quote, tdx_vec.collateral, policy=bad)


def test_debug_bit_is_read_from_td_attributes(tdx_vec):
    assert not tdx.TdxQuote.parse(tdx_vec.quote).debug
    assert tdx.TdxQuote.parse(flip(tdx_vec.quote, 0xA8)).debug


@pytest.mark.parametrize("length", [0, 7, 0x30, 0x277, 0x27C, 0x300, 0x4C4])
def test_truncated_quote_is_a_format_error(tdx_vec, length):
    with pytest.raises(EvidenceFormatError):
        _verify(tdx_vec.quote[:length], tdx_vec.collateral)


def test_oversized_quote_is_a_format_error(tdx_vec):
    with pytest.raises(EvidenceFormatError):
        _verify(tdx_vec.quote + bytes(70000), tdx_vec.collateral)


def test_garbage_quote_is_a_format_error(tdx_vec):
    with pytest.raises(EvidenceFormatError):
        _verify(bytes(range(256)) * 20, tdx_vec.collateral)


def test_go_tdx_guest_quote_parses_but_its_trailing_text_is_refused(tdx_vec):
    with pytest.raises(EvidenceFormatError):
        tdx.TdxQuote.parse(tdx_vec.go_quote)
    (sig_len,) = struct.unpack_from("<I", tdx_vec.go_quote, 0x278)
    quote = tdx.TdxQuote.parse(tdx_vec.go_quote[: 0x27C + sig_len])
    assert quote.version == 4 and not quote.debug
    assert quote.mr_td.hex().startswith("6363b804")


def test_go_tdx_guest_quote_fails_against_other_collateral_with_a_typed_error(tdx_vec):
    (sig_len,) = struct.unpack_from("<I", tdx_vec.go_quote, 0x278)
    with pytest.raises(AttestationError):
        _verify(tdx_vec.go_quote[: 0x27C + sig_len], tdx_vec.collateral)
