"""The test vectors of protocols/votes.md decode, verify, and re-encode to the same bytes."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest
import torch

from p2pinfer.consensus import (
    TOLERANCE_FLOAT32,
    Fingerprint,
    FingerprintContext,
    InlinedPeerKeys,
    SignatureInvalid,
    decode_claim,
    decode_fault_evidence,
    decode_tally,
    sign_claim,
    verify_fault_evidence,
)
from p2pinfer.consensus.commit import decode_commit, output_digest, seal_of, sign_commit
from p2pinfer.identity import NodeIdentity
from tests.spec_vectors import vectors

VECTORS = vectors("votes.md")
CONTEXT = FingerprintContext("testnet", bytes(range(16)), 3, 7)
IDENTITIES = [NodeIdentity.from_seed(bytes([i]) * 32) for i in range(1, 5)]
KEYS = InlinedPeerKeys()


def test_fingerprint_seed_and_stream_vectors():
    assert CONTEXT.seed() == VECTORS["fingerprint-seed"]
    assert hashlib.shake_256(CONTEXT.seed()).digest(8) == VECTORS["fingerprint-shake"]


def test_claim_vector_decodes_and_verifies():
    claim = decode_claim(VECTORS["claim"])
    assert claim.replica == IDENTITIES[0].peer_id
    assert claim.context == CONTEXT and claim.replicas == 3
    assert claim.fingerprint.array()[0].tolist() == [1.0, -2.0, 0.5, 3.0]
    claim.verify(KEYS)
    assert claim.encode() == VECTORS["claim"]


def test_claim_vector_is_what_the_encoder_produces():
    values = np.array([[1.0, -2.0, 0.5, 3.0], [0.25, 0.0, -1.5, 2.0]], dtype="<f4")
    fp = Fingerprint(hidden=64, tokens=2, rank=4, values=values.tobytes())
    claim = sign_claim(IDENTITIES[0]._private, IDENTITIES[0].peer_id, CONTEXT, 3, fp)
    assert claim.encode() == VECTORS["claim"]


def test_tally_vector_decodes_and_verifies():
    tally = decode_tally(VECTORS["tally"])
    tally.verify(KEYS)
    assert tally.reporter == IDENTITIES[3].peer_id
    assert tally.dissenting == (IDENTITIES[1].peer_id,)
    assert set(tally.agreeing) == {IDENTITIES[0].peer_id, IDENTITIES[2].peer_id}
    assert tally.encode() == VECTORS["tally"]


def test_fault_vector_verifies_against_replica_two():
    evidence = decode_fault_evidence(VECTORS["fault"])
    assert verify_fault_evidence(evidence, KEYS, TOLERANCE_FLOAT32, "testnet") \
        == IDENTITIES[1].peer_id
    assert evidence.encode() == VECTORS["fault"]


def test_inlined_keys_refuse_what_is_not_an_ed25519_peer_id():
    assert KEYS.get("not-a-peer-id") is None
    claim = decode_claim(VECTORS["claim"])
    with pytest.raises(SignatureInvalid):
        dataclasses.replace(claim, replica=IDENTITIES[1].peer_id).verify(KEYS)


def test_commit_seal_and_sealed_seed_vectors():

    commit = decode_commit(VECTORS["commit"])
    commit.verify(KEYS)
    assert commit.replica == IDENTITIES[0].peer_id and commit.context == CONTEXT
    values = np.array([[1.0, -2.0, 0.5, 3.0], [0.25, 0.0, -1.5, 2.0]], dtype="<f4")


    assert commit.output == output_digest(torch.from_numpy(values))
    assert sign_commit(IDENTITIES[0]._private, IDENTITIES[0].peer_id, CONTEXT, 3,
                       torch.from_numpy(values)).encode() == VECTORS["commit"]
    assert len(VECTORS["seal"]) == 32 and seal_of([b""]) != VECTORS["seal"]
    sealed = dataclasses.replace(CONTEXT, sealed=VECTORS["seal"])
    assert sealed.seed() == VECTORS["sealed-seed"]
