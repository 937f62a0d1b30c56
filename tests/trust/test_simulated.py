"""Simulated evidence: signed by the node key, marked as not a TEE, refused in production."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nacl.signing import SigningKey

from p2pinfer.trust import sev_snp, simulated, tdx
from p2pinfer.trust.binding import report_data
from p2pinfer.trust.claims import TeeLevel
from p2pinfer.trust.errors import (
    BindingMismatch,
    EvidenceFormatError,
    PolicyViolation,
    SignatureInvalid,
)
from p2pinfer.trust.policy import Policy
from p2pinfer.trust.verify import detect_kind
from tests.trust.conftest import flip

KEY = SigningKey(bytes(range(32)))
PUB = bytes(KEY.verify_key)
RD = report_data("p2pinfer-testnet", b"peer-a", bytes(32), bytes([7]) * 32)
TESTNET = Policy.preset("testnet")


def _attester(**kw):
    return simulated.SimulatedAttester(
        KEY, code_digest_=bytes([0xAA]) * 32, clock=lambda: 1000, **kw
    )


def _verify(evidence, *, policy=TESTNET, expected=RD, key=PUB):
    return simulated.verify(
        evidence, expected_report_data=expected, policy=policy, now=2000, expected_public_key=key
    )


def test_testnet_policy_accepts_simulated_evidence():
    claims = _verify(_attester().attest(RD).evidence)
    assert claims.simulated and claims.tee_level is TeeLevel.SIMULATED
    assert claims.details["warning"] == "SIMULATED-NOT-A-TEE"
    assert claims.details["public_key"] == PUB.hex()


@pytest.mark.parametrize("preset", ["strict", "relaxed"])
def test_production_and_non_simulating_policies_refuse_it(preset):
    with pytest.raises(PolicyViolation) as err:
        _verify(_attester().attest(RD).evidence, policy=Policy.preset(preset))
    assert err.value.check == "simulated"


def test_evidence_carries_the_marker_and_is_312_bytes():
    ev = _attester().attest(RD).evidence
    assert len(ev) == simulated.SIZE == 312
    assert b"SIMULATED-NOT-A-TEE" in ev


def test_simulated_evidence_never_parses_as_vendor_evidence():
    ev = _attester().attest(RD).evidence
    with pytest.raises(EvidenceFormatError):
        sev_snp.SnpReport.parse(ev)
    with pytest.raises(EvidenceFormatError):
        tdx.TdxQuote.parse(ev)
    assert detect_kind(ev) == "simulated"


def test_cryptography_key_and_sign_callable_are_accepted():
    key = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    a = simulated.SimulatedAttester(key, code_digest_=bytes(32))
    _verify(a.attest(RD).evidence)
    b = simulated.SimulatedAttester(
        sign=lambda m: KEY.sign(m).signature, public_key=PUB, code_digest_=bytes(32)
    )
    _verify(b.attest(RD).evidence)


def test_evidence_signed_by_another_key_than_the_peers_is_rejected():
    with pytest.raises(SignatureInvalid) as err:
        _verify(_attester().attest(RD).evidence, key=bytes(SigningKey(bytes(32)).verify_key))
    assert err.value.check == "signer"


def test_wrong_binding_is_rejected():
    with pytest.raises(BindingMismatch):
        _verify(_attester().attest(RD).evidence, expected=bytes(64))


@pytest.mark.parametrize(
    ("region", "offset", "error", "check"),
    [
        ("marker", 0x00, EvidenceFormatError, "marker"),
        ("version", 0x1C, EvidenceFormatError, "format"),
        ("reserved", 0x1E, EvidenceFormatError, "format"),
        ("issued at", 0x20, SignatureInvalid, "signature"),
        ("report data", 0x28, SignatureInvalid, "signature"),
        ("measurement", 0x68, SignatureInvalid, "signature"),
        ("code digest", 0x98, SignatureInvalid, "signature"),
        ("model digest", 0xB8, SignatureInvalid, "signature"),
        ("signature", 0xF8, SignatureInvalid, "signature"),
        ("signature end", 0x137, SignatureInvalid, "signature"),
    ],
)
def test_flipped_byte_is_rejected_by_the_right_check(region, offset, error, check):
    with pytest.raises(error) as err:
        _verify(flip(_attester().attest(RD).evidence, offset))
    assert err.value.check == check, region


def test_swapped_public_key_is_rejected_as_signer_or_signature():
    ev = flip(_attester().attest(RD).evidence, 0xD8)
    with pytest.raises(SignatureInvalid):
        _verify(ev)
    with pytest.raises(SignatureInvalid):
        _verify(ev, key=None)


def test_inconsistent_measurement_is_rejected_even_when_signed():
    good = simulated.SimulatedEvidence.parse(_attester().attest(RD).evidence)
    forged = simulated.SimulatedEvidence(
        issued_at=good.issued_at,
        report_data=good.report_data,
        measurement=bytes(48),
        code_digest=good.code_digest,
        model_digest=good.model_digest,
        public_key=PUB,
        signature=b"",
    )
    ev = forged.signed_bytes + KEY.sign(forged.signed_bytes).signature
    with pytest.raises(EvidenceFormatError) as err:
        _verify(ev)
    assert err.value.check == "measurement"


@pytest.mark.parametrize("length", [0, 28, 311, 313])
def test_wrong_length_is_a_format_error(length):
    with pytest.raises(EvidenceFormatError):
        _verify((_attester().attest(RD).evidence * 2)[:length])


def test_measurement_covers_code_and_model():
    a = _attester(model_digest=bytes([1]) * 32).describe()["measurement"]
    b = _attester(model_digest=bytes([2]) * 32).describe()["measurement"]
    assert a != b


def test_code_digest_changes_with_package_files(tmp_path):
    (tmp_path / "a.py").write_text("x = 1\n")
    first = simulated.code_digest(tmp_path)
    (tmp_path / "a.py").write_text("x = 2\n")
    assert simulated.code_digest(tmp_path) != first
    assert len(simulated.code_digest()) == 32


def test_measurement_allowlist_applies_to_simulated_evidence():
    policy = Policy.from_dict({"preset": "testnet", "measurements": {"simulated": ["00" * 48]}})
    with pytest.raises(PolicyViolation) as err:
        _verify(_attester().attest(RD).evidence, policy=policy)
    assert err.value.check == "measurement"


def test_attester_refuses_report_data_of_wrong_length():
    with pytest.raises(ValueError):
        _attester().attest(bytes(32))


def test_attester_repr_shows_no_private_key():
    assert bytes(KEY).hex() not in repr(_attester())
