"""The test vectors in protocols/zk-proof.md decode and verify."""

from __future__ import annotations

import numpy as np
import pytest

from p2pinfer.zk import BindingMismatch, ModelManifest, ProofBinding, ShardProof, verify
from p2pinfer.zk.transcript import Transcript

from ..spec_vectors import vectors

V = vectors("zk-proof.md")


def test_transcript_challenge_vector():
    t = Transcript(b"p2pinfer/zk-shard-proof/v1")
    t.absorb(b"task", b"abc")
    assert t.challenge(b"output/0").to_bytes(32, "little") == V["transcript-challenge"]


def test_manifest_vector_decodes_and_has_the_documented_digest():
    m = ModelManifest.from_bytes(V["manifest"])
    assert m.model_id == "zk-vector" and m.frac_bits == 8
    assert m.digest().hex() == "8f7b85c8065fc5f40bfcf3cd47d4d8695602f942046376d66b730b982d1db085"
    assert m.to_bytes() == V["manifest"]


def test_proof_vector_verifies_against_the_manifest_vector():
    m = ModelManifest.from_bytes(V["manifest"])
    proof = ShardProof.from_bytes(V["proof"])
    binding = ProofBinding(b"task-vector", m.digest(), b"testnet/0")
    x, y = np.array([[700]]), np.array([[800]])
    verify(m.shard(0, 1), x, y, proof, binding)
    with pytest.raises(BindingMismatch):
        verify(m.shard(0, 1), x, np.array([[801]]), proof, binding)
