"""The test vectors in protocols/zk-proof.md decode and verify."""

from __future__ import annotations

from pathlib import Path

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
    spec = (Path(__file__).resolve().parents[2] / "protocols" / "zk-proof.md").read_text()
    assert f"(digest `{m.digest().hex()}`)" in spec
    assert m.to_bytes() == V["manifest"]


def test_proof_vector_verifies_against_the_manifest_vector():
    m = ModelManifest.from_bytes(V["manifest"])
    proof = ShardProof.from_bytes(V["proof"])
    binding = ProofBinding(b"task-vector", m.digest(), b"testnet/0")
    x, y = np.array([[700]]), np.array([[800]])
    verify(m.shard(0, 1), x, y, proof, binding)
    with pytest.raises(BindingMismatch):
        verify(m.shard(0, 1), x, np.array([[801]]), proof, binding)


def test_attention_manifest_vector_decodes_at_version_3_with_its_shape():
    import msgpack

    m = ModelManifest.from_bytes(V["manifest-attention"])
    (layer,) = m.layers
    assert (layer.activation, layer.d_in, layer.heads, layer.kv_heads, layer.rope) == (
        "attention", 4, 2, 1, 10000)
    assert len(layer.weight_rows) == 4 + 2 + 2 and layer.bias_rows is None  # W_q, W_k, W_v rows
    assert msgpack.unpackb(V["manifest-attention"])["v"] == 3
    spec = (Path(__file__).resolve().parents[2] / "protocols" / "zk-proof.md").read_text()
    assert f"(attention digest `{m.digest().hex()}`)" in spec
    assert m.to_bytes() == V["manifest-attention"]


def test_range_manifest_vector_decodes_at_version_4_with_its_range():
    import msgpack

    m = ModelManifest.from_bytes(V["manifest-range"])
    (layer,) = m.layers
    assert (layer.activation, layer.d_in, layer.d_out, layer.lookup_range) == ("silu", 1, 1, 8)
    assert msgpack.unpackb(V["manifest-range"])["v"] == 4
    spec = (Path(__file__).resolve().parents[2] / "protocols" / "zk-proof.md").read_text()
    assert f"(range digest `{m.digest().hex()}`)" in spec
    assert m.to_bytes() == V["manifest-range"]
