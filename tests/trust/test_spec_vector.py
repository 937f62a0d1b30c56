"""protocols/attest.md's simulated-bundle vector decodes, re-encodes identically and verifies."""

from __future__ import annotations

import pytest
from nacl.signing import SigningKey

from p2pinfer.trust import EvidenceBundle, Policy, SimulatedAttester, report_data, verify_bundle
from p2pinfer.trust.errors import PolicyViolation
from tests.spec_vectors import vectors

V = vectors("attest.md")
KEY = SigningKey(bytes(range(32)))
PUB = bytes(KEY.verify_key)
PEER = bytes.fromhex("002408011220") + PUB
RD = report_data("p2pinfer-testnet", PEER, bytes([0x11]) * 32, bytes([0x22]) * 32)


def test_report_data_vector_matches_the_binding():
    assert V["simulated-report-data"] == RD


def test_bundle_vector_decodes_and_reencodes_identically():
    bundle = EvidenceBundle.decode(V["simulated-bundle"])
    assert bundle.kind == "simulated"
    assert bundle.encode() == V["simulated-bundle"]
    assert bundle.digest() == V["simulated-bundle-digest"]


def test_bundle_vector_is_what_the_attester_makes_from_the_fixed_seed():
    attester = SimulatedAttester(
        KEY,
        model_digest=bytes([0xBB]) * 32,
        code_digest_=bytes([0xAA]) * 32,
        clock=lambda: 1767225600,
    )
    assert attester.attest(RD).encode() == V["simulated-bundle"]


def test_bundle_vector_verifies_under_testnet_policy():
    bundle = EvidenceBundle.decode(V["simulated-bundle"])
    claims = verify_bundle(
        bundle,
        expected_report_data=RD,
        policy=Policy.preset("testnet"),
        now=1767225601,
        peer_public_key=PUB,
    )
    assert claims.simulated and claims.evidence_digest == V["simulated-bundle-digest"].hex()


def test_bundle_vector_is_refused_by_strict_policy():
    bundle = EvidenceBundle.decode(V["simulated-bundle"])
    with pytest.raises(PolicyViolation) as err:
        verify_bundle(
            bundle, expected_report_data=RD, policy=Policy.preset("strict"), now=1767225601
        )
    assert err.value.check == "simulated"
