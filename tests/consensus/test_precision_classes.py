"""Claims state the precision class they were computed in, and every comparison uses the
tolerance of its pair of classes: float32 against float32 stays tight on a route where some
replica computes in bfloat16, so a float32 substitute (int8 weights: a few percent off) is
outvoted and provably at fault, while an honest bfloat16 replica is never accused."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from p2pinfer.consensus import (
    EVIDENCE_MARGIN,
    EVIDENCE_TOLERANCE,
    TOLERANCE_BFLOAT16,
    TOLERANCE_FLOAT32,
    DissentNotProven,
    FingerprintError,
    MalformedVoteMessage,
    NoMajorityError,
    SignatureInvalid,
    build_fault_evidence,
    decode_claim,
    fingerprint,
    pair_tolerance,
    precision_class,
    sign_claim,
    tally,
    verify_fault_evidence,
)
from tests.consensus.conftest import NETWORK
from tests.consensus.replicas import CONTEXT, activation


def off_by(peer, relative: float, precision: str, seed: int = 11):
    """A claim on the true activation moved by `relative` of each token's norm."""
    x = activation()
    d = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
    d = d / d.norm(dim=-1, keepdim=True) * x.norm(dim=-1, keepdim=True)
    return sign_claim(peer.key, peer.peer_id, CONTEXT, 3,
                      fingerprint(x + relative * d, CONTEXT), precision)


def test_pair_tolerance_is_the_looser_class_at_most_the_cap():
    assert pair_tolerance("float32", "float32") == TOLERANCE_FLOAT32
    assert pair_tolerance("float32", "bfloat16") == TOLERANCE_BFLOAT16
    assert pair_tolerance("bfloat16", "bfloat16", 0.02) == 0.02
    assert pair_tolerance("float32", "float32", TOLERANCE_BFLOAT16) == TOLERANCE_FLOAT32
    assert precision_class("float16") == "bfloat16"
    with pytest.raises(FingerprintError):
        precision_class("int8")


def test_a_float32_substitute_is_outvoted_and_at_fault_on_a_route_voting_at_bfloat16(peers,
                                                                                   keys):
    # the task tolerance is the bfloat16 one (a bfloat16 replica elsewhere on the route), yet
    # three float32 replicas compare at the float32 tolerance: 3% off (int8 weights) dissents
    claims = [off_by(peers[0], 0.0, "float32"), off_by(peers[1], 1e-6, "float32", 2),
              off_by(peers[2], 3e-2, "float32", 3)]
    outcome = tally(claims, keys, TOLERANCE_BFLOAT16)
    assert outcome.dissenting_replicas == (peers[2].peer_id,)
    evidence = build_fault_evidence(outcome, peers[2].peer_id, peers[4].peer_id, peers[4].key,
                                    keys)
    assert verify_fault_evidence(evidence, keys, EVIDENCE_TOLERANCE, NETWORK,
                                 EVIDENCE_MARGIN) == peers[2].peer_id


def test_a_bfloat16_replica_cannot_make_a_split_float32_pair_agree(peers, keys):
    # honest float32, float32 substitute 3% off, honest bfloat16 2% off: the bfloat16 claim
    # matches both, but the float32 class decides and is split, so no majority (not a wrong one)
    claims = [off_by(peers[0], 0.0, "float32"), off_by(peers[1], 3e-2, "float32", 3),
              off_by(peers[2], 2e-2, "bfloat16", 4)]
    with pytest.raises(NoMajorityError):
        tally(claims, keys, TOLERANCE_BFLOAT16)


def test_honest_mixed_replicas_agree_and_the_centre_is_float32(peers, keys):
    claims = [off_by(peers[0], 0.0, "float32"), off_by(peers[1], 5e-2, "bfloat16", 5),
              off_by(peers[2], 1e-6, "float32", 6)]
    outcome = tally(claims, keys, TOLERANCE_BFLOAT16)
    assert outcome.dissenting == ()
    assert outcome.majority.precision == "float32"
    assert outcome.tolerance_for("float32") == TOLERANCE_FLOAT32
    assert outcome.tolerance_for("bfloat16") == TOLERANCE_BFLOAT16


def test_a_bfloat16_dissent_rounding_could_explain_is_outvoted_but_not_provable(peers, keys):
    claims = [off_by(peers[0], 0.0, "float32"), off_by(peers[1], 1e-6, "float32", 2),
              off_by(peers[2], 0.12, "bfloat16", 7)]
    outcome = tally(claims, keys, TOLERANCE_BFLOAT16)
    assert outcome.dissenting_replicas == (peers[2].peer_id,)
    evidence = build_fault_evidence(outcome, peers[2].peer_id, peers[4].peer_id, peers[4].key,
                                    keys)
    with pytest.raises(DissentNotProven):
        verify_fault_evidence(evidence, keys, EVIDENCE_TOLERANCE, NETWORK, EVIDENCE_MARGIN)


def test_the_precision_class_is_signed_and_checked(peers, keys):
    claim = off_by(peers[0], 0.0, "float32")
    assert decode_claim(claim.encode()).precision == "float32"
    with pytest.raises(SignatureInvalid):
        dataclasses.replace(claim, precision="bfloat16").verify(keys)
    with pytest.raises(MalformedVoteMessage):
        sign_claim(peers[0].key, peers[0].peer_id, CONTEXT, 3, claim.fingerprint, "int8")
    forged = claim.encode().replace(b"\xa7float32\xa4seal", b"\xa7float64\xa4seal")
    assert forged != claim.encode()
    with pytest.raises(MalformedVoteMessage):
        decode_claim(forged)


def test_a_float32_claim_is_the_centre_of_a_tied_mixed_cluster(peers, keys):
    # only one float32 and one bfloat16 claim are in (the strict class has no majority alone):
    # both clusters hold two, and the float32 claim is the centre whatever the peer ids, so a
    # float32 replica downstream checks its input at the float32 tolerance
    for bf16_peer, f32_peer in ((peers[0], peers[1]), (peers[1], peers[0])):
        claims = [off_by(bf16_peer, 2e-2, "bfloat16", 8), off_by(f32_peer, 0.0, "float32")]
        outcome = tally(claims, keys, TOLERANCE_BFLOAT16)
        assert outcome.majority.replica == f32_peer.peer_id
        assert outcome.tolerance_for("float32") == TOLERANCE_FLOAT32
