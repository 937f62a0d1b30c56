"""Fault evidence: built from a vote, verifiable by anyone, every tampering rejected."""

from __future__ import annotations

import dataclasses

import msgpack
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pinfer.consensus import (
    TOLERANCE_FLOAT32,
    DissentNotProven,
    EvidenceContextMismatch,
    EvidenceNotMajority,
    FaultEvidence,
    FingerprintContext,
    MalformedVoteMessage,
    SignatureInvalid,
    UnknownPeer,
    build_fault_evidence,
    decode_fault_evidence,
    tally,
    verify_fault_evidence,
)
from p2pinfer.errors import WireError
from tests.consensus.conftest import NETWORK
from tests.consensus.replicas import CONTEXT, cheat_claim, honest_claim

TOL = TOLERANCE_FLOAT32


@pytest.fixture
def evidence(peers, keys) -> FaultEvidence:
    claims = [honest_claim(peers[0], 3), cheat_claim(peers[1], 3), honest_claim(peers[2], 3, 2)]
    outcome = tally(claims, keys, TOL)
    return build_fault_evidence(outcome, "peer-1", peers[5].peer_id, peers[5].key, keys)


def _resign(evidence: FaultEvidence, reporter) -> FaultEvidence:
    unsigned = dataclasses.replace(evidence, reporter=reporter.peer_id)
    return dataclasses.replace(unsigned, signature=reporter.key.sign(unsigned.signed_bytes()))


def test_evidence_from_a_vote_verifies(evidence, keys):
    assert evidence.accused == "peer-1"
    assert verify_fault_evidence(evidence, keys, TOL, NETWORK) == "peer-1"


def test_evidence_round_trips_through_its_encoding(evidence, keys):
    decoded = decode_fault_evidence(evidence.encode())
    assert decoded == evidence
    assert decoded.digest() == evidence.digest()
    assert verify_fault_evidence(decoded, keys, TOL, NETWORK) == "peer-1"


def test_evidence_for_another_network_is_refused(evidence, keys):
    with pytest.raises(EvidenceContextMismatch):
        verify_fault_evidence(evidence, keys, TOL, "mainnet")


def test_evidence_with_forged_reporter_signature_is_refused(evidence, keys, peers):
    forged = dataclasses.replace(evidence, reporter=peers[6].peer_id)
    with pytest.raises(SignatureInvalid):
        verify_fault_evidence(forged, keys, TOL, NETWORK)


def test_evidence_by_unknown_reporter_is_refused(evidence, keys):
    with pytest.raises(UnknownPeer):
        verify_fault_evidence(evidence, {k: v for k, v in keys.items() if k != "peer-5"}, TOL,
                              NETWORK)


def test_evidence_with_forged_accused_claim_is_refused(evidence, keys, peers):
    forged_claim = dataclasses.replace(cheat_claim(peers[1], 3, seed=50),
                                       signature=evidence.dissent.signature)
    forged = _resign(dataclasses.replace(evidence, dissent=forged_claim), peers[5])
    with pytest.raises(SignatureInvalid):
        verify_fault_evidence(forged, keys, TOL, NETWORK)


def test_evidence_with_forged_majority_claim_is_refused(evidence, keys, peers):
    # the reporter makes up peer-3's claim, signing it with its own key
    fake = honest_claim(peers[5], 3)
    fake = dataclasses.replace(fake, replica="peer-3")
    forged = _resign(dataclasses.replace(evidence, majority=(*evidence.majority, fake)), peers[5])
    with pytest.raises(SignatureInvalid):
        verify_fault_evidence(forged, keys, TOL, NETWORK)


def test_evidence_with_a_claim_for_another_step_is_refused(evidence, keys, peers):
    other = FingerprintContext(NETWORK, CONTEXT.task_id, CONTEXT.stage, CONTEXT.step + 1)
    majority = (evidence.majority[0], honest_claim(peers[2], 3, context=other))
    forged = _resign(dataclasses.replace(evidence, majority=majority), peers[5])
    with pytest.raises(EvidenceContextMismatch):
        verify_fault_evidence(forged, keys, TOL, NETWORK)


def test_evidence_with_too_small_a_majority_is_refused(evidence, keys, peers):
    forged = _resign(dataclasses.replace(evidence, majority=evidence.majority[:1]), peers[5])
    with pytest.raises(EvidenceNotMajority):
        verify_fault_evidence(forged, keys, TOL, NETWORK)


def test_evidence_repeating_a_majority_replica_is_refused(evidence, keys, peers):
    majority = (evidence.majority[0], evidence.majority[0])
    forged = _resign(dataclasses.replace(evidence, majority=majority), peers[5])
    with pytest.raises(EvidenceNotMajority):
        verify_fault_evidence(forged, keys, TOL, NETWORK)


def test_evidence_listing_the_accused_in_the_majority_is_refused(evidence, keys, peers):
    majority = (evidence.majority[0], evidence.dissent)
    forged = _resign(dataclasses.replace(evidence, majority=majority), peers[5])
    with pytest.raises(EvidenceNotMajority):
        verify_fault_evidence(forged, keys, TOL, NETWORK)


def test_evidence_whose_majority_disagrees_is_refused(keys, peers):
    claims = (honest_claim(peers[0], 3), cheat_claim(peers[2], 3, seed=60))
    unsigned = FaultEvidence(NETWORK, "peer-5", cheat_claim(peers[1], 3), claims, b"")
    forged = _resign(unsigned, peers[5])
    with pytest.raises(EvidenceNotMajority):
        verify_fault_evidence(forged, keys, TOL, NETWORK)


def test_evidence_against_an_honest_replica_is_refused(keys, peers):
    # two colluders cannot frame an honest replica: its claim matches theirs or theirs is wrong
    majority = (honest_claim(peers[0], 3), honest_claim(peers[2], 3, 2))
    unsigned = FaultEvidence(NETWORK, "peer-5", honest_claim(peers[1], 3, 1), majority, b"")
    with pytest.raises(DissentNotProven):
        verify_fault_evidence(_resign(unsigned, peers[5]), keys, TOL, NETWORK)


def test_evidence_is_only_built_against_a_dissenter(peers, keys):
    claims = [honest_claim(p, 3, jitter=i) for i, p in enumerate(peers[:3])]
    outcome = tally(claims, keys, TOL)
    with pytest.raises(DissentNotProven):
        build_fault_evidence(outcome, "peer-1", "peer-5", peers[5].key, keys)


def test_non_canonical_evidence_encoding_is_refused(evidence):
    body = msgpack.unpackb(evidence.encode(), raw=False)
    body = {"t": body["t"], **{k: v for k, v in body.items() if k != "t"}}
    with pytest.raises(MalformedVoteMessage):
        decode_fault_evidence(msgpack.packb(body, use_bin_type=True))


@pytest.mark.parametrize(("field", "value"), [
    ("majority", []), ("majority", ["x"]), ("majority", [b"junk"]), ("dissent", b"junk"),
    ("reporter", ""), ("net", ""), ("sig", b"\x01" * 10), ("t", "claim"),
])
def test_evidence_with_bad_field_is_refused(evidence, field, value):
    body = msgpack.unpackb(evidence.encode(), raw=False)
    body[field] = value
    with pytest.raises(MalformedVoteMessage):
        decode_fault_evidence(msgpack.packb(body, use_bin_type=True))


@settings(deadline=None, max_examples=300)
@given(st.binary(max_size=800))
def test_evidence_decoder_raises_only_wire_errors_on_random_bytes(data):
    try:
        decode_fault_evidence(data)
    except WireError:
        pass


@settings(deadline=None, max_examples=200)
@given(st.data())
def test_any_byte_flip_in_evidence_is_refused(data):
    from tests.consensus.conftest import make_peer

    peers = [make_peer(i) for i in range(6)]
    keys = {p.peer_id: p.key.public_key() for p in peers}
    evidence = _EVIDENCE_CACHE.get("e")
    if evidence is None:
        claims = [honest_claim(peers[0], 3), cheat_claim(peers[1], 3),
                  honest_claim(peers[2], 3, 2)]
        evidence = build_fault_evidence(tally(claims, keys, TOL), "peer-1", "peer-5",
                                        peers[5].key, keys)
        _EVIDENCE_CACHE["e"] = evidence
    encoded = bytearray(evidence.encode())
    index = data.draw(st.integers(0, len(encoded) - 1))
    encoded[index] ^= 1 << data.draw(st.integers(0, 7))
    try:
        decoded = decode_fault_evidence(bytes(encoded))
        verify_fault_evidence(decoded, keys, TOL, NETWORK)
    except (WireError, SignatureInvalid, UnknownPeer, EvidenceContextMismatch,
            EvidenceNotMajority, DissentNotProven):
        return
    pytest.fail(f"evidence with bit flipped at byte {index} still verified")


_EVIDENCE_CACHE: dict[str, FaultEvidence] = {}


def test_a_dissent_honest_rounding_could_explain_is_outvoted_but_bans_nobody(peers, keys):
    """Between the loosest vote tolerance and the evidence tolerance a replica is outvoted
    (a dissent that costs reputation) but its fault is not provable network-wide; above the
    evidence tolerance it is."""
    from p2pinfer.consensus import TOLERANCE_BFLOAT16, distance, fingerprint, sign_claim
    from p2pinfer.inference.redundancy import EVIDENCE_MARGIN, EVIDENCE_TOLERANCE
    from tests.consensus.replicas import activation

    assert EVIDENCE_TOLERANCE > TOLERANCE_BFLOAT16
    x = activation()
    direction = torch.randn(x.shape, generator=torch.Generator().manual_seed(11))
    direction = direction / direction.norm(dim=-1, keepdim=True) * x.norm(dim=-1, keepdim=True)
    for scale, provable in [(1.2 * TOLERANCE_BFLOAT16, False), (3 * EVIDENCE_TOLERANCE, True)]:
        fp = fingerprint(x + scale * direction, CONTEXT)
        measured = distance(fp, honest_claim(peers[0], 3).fingerprint)
        assert TOLERANCE_BFLOAT16 < measured
        assert (measured > EVIDENCE_TOLERANCE) == provable
        claims = [honest_claim(peers[0], 3, precision="bfloat16"),
                  sign_claim(peers[1].key, "peer-1", CONTEXT, 3, fp, "bfloat16"),
                  honest_claim(peers[2], 3, 2, precision="bfloat16")]
        outcome = tally(claims, keys, TOLERANCE_BFLOAT16)
        assert outcome.dissenting_replicas == ("peer-1",)
        evidence = build_fault_evidence(outcome, "peer-1", "peer-5", peers[5].key, keys)
        if provable:
            assert verify_fault_evidence(evidence, keys, EVIDENCE_TOLERANCE, NETWORK,
                                         EVIDENCE_MARGIN) == "peer-1"
        else:
            with pytest.raises(DissentNotProven):
                verify_fault_evidence(evidence, keys, EVIDENCE_TOLERANCE, NETWORK,
                                      EVIDENCE_MARGIN)
