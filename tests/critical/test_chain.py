"""The proof chain a critical step carries, and the per-entry verification (no network)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pinfer.errors import WireError
from p2pinfer.identity import NodeIdentity
from p2pinfer.inference.critical import (
    MAX_PROOF_BYTES,
    ChainEntry,
    ProofRejected,
    decode_chain,
    step_binding,
    verify_entry,
)
from p2pinfer.inference.task import StagePlan, Task
from p2pinfer.zk import ModelManifest, prove
from p2pinfer.zk.checkpoint import commit_layers, fixed_layers, load_manifest_bytes

PEER = "12D3KooWPeerA"


def make_task(peer: str = PEER) -> Task:
    ident = NodeIdentity.generate()
    return Task.create(ident, network_id="net", model_id="m", requester_addrs=[],
                       route=[StagePlan(1, 3, (peer,))], mode="critical",
                       options={"manifest": b"\x00" * 32})


@pytest.fixture(scope="module")
def proven(mlp_dir):
    """(manifest, digest, task, entry, y) for one honest stage over layers [1, 3)."""
    manifest = ModelManifest.from_bytes(load_manifest_bytes(mlp_dir))
    digest = manifest.digest()
    task = make_task()
    x = fixed_layers(mlp_dir, 0, 1).quantize(np.random.default_rng(2).normal(size=(3, 32)))
    shard = commit_layers(mlp_dir, 1, 3)
    y = shard.forward_fixed(x)
    proof = prove(shard, x, y, step_binding(task, digest, 0, 7, 1, 3, PEER)).to_bytes()
    return manifest, digest, task, ChainEntry(0, PEER, 1, 3, x, proof, 1.0), y


def wire(entry: ChainEntry) -> dict:
    return {"zk": [entry.to_wire()]}


def test_an_honest_entry_verifies(proven):
    manifest, digest, task, entry, y = proven
    assert verify_entry(manifest, digest, task, 7, entry, y, stage=0, peer=PEER) >= 0


def test_an_entry_survives_the_wire(proven):
    _, _, _, entry, _ = proven
    back = decode_chain(wire(entry), hidden_size=32, max_bytes=1 << 20)[0]
    assert (back.stage, back.peer, back.start, back.end, back.proof) == (0, PEER, 1, 3, entry.proof)
    assert np.array_equal(back.input, entry.input)


def test_a_perturbed_output_is_rejected_at_the_binding(proven):
    manifest, digest, task, entry, y = proven
    bad = y.copy()
    bad[0, 0] += 1
    with pytest.raises(ProofRejected) as e:
        verify_entry(manifest, digest, task, 7, entry, bad, stage=0, peer=PEER)
    assert e.value.check == "binding" and e.value.blame == (0, PEER)


def test_a_proof_for_another_step_is_rejected(proven):
    manifest, digest, task, entry, y = proven
    with pytest.raises(ProofRejected, match="binding"):
        verify_entry(manifest, digest, task, 8, entry, y, stage=0, peer=PEER)


def test_a_proof_replayed_into_another_task_is_rejected(proven):
    manifest, digest, _, entry, y = proven
    with pytest.raises(ProofRejected, match="binding"):
        verify_entry(manifest, digest, make_task(), 7, entry, y, stage=0, peer=PEER)


def test_an_entry_claiming_another_peer_is_rejected(proven):
    manifest, digest, task, entry, y = proven
    with pytest.raises(ProofRejected) as e:
        verify_entry(manifest, digest, task, 7, entry, y, stage=0, peer="12D3KooWOther")
    assert e.value.check == "route"


def test_garbage_proof_bytes_are_rejected_as_malformed(proven):
    manifest, digest, task, entry, y = proven
    junk = ChainEntry(0, PEER, 1, 3, entry.input, b"\x93junk", 1.0)
    with pytest.raises(ProofRejected) as e:
        verify_entry(manifest, digest, task, 7, junk, y, stage=0, peer=PEER)
    assert e.value.check == "encoding"


@pytest.mark.parametrize("field,value", [
    ("stage", -1), ("stage", True), ("peer", ""), ("layers", [3, 1]), ("layers", [1]),
    ("proof", "text"), ("prove_ms", "slow"), ("input", {"dtype": "float32"}),
])
def test_malformed_entries_are_wire_errors(proven, field, value):
    _, _, _, entry, _ = proven
    raw = entry.to_wire()
    raw[field] = value
    with pytest.raises(WireError):
        decode_chain({"zk": [raw]}, hidden_size=32, max_bytes=1 << 20)


def test_an_oversized_proof_is_refused_before_decoding(proven):
    _, _, _, entry, _ = proven
    raw = entry.to_wire()
    raw["proof"] = bytes(MAX_PROOF_BYTES + 1)
    with pytest.raises(WireError, match="at most"):
        decode_chain({"zk": [raw]}, hidden_size=32, max_bytes=1 << 20)


def test_a_chain_that_is_not_a_list_is_a_wire_error():
    with pytest.raises(WireError):
        decode_chain({"zk": {"stage": 0}}, hidden_size=32, max_bytes=1 << 20)


@settings(deadline=None, max_examples=50)
@given(st.one_of(st.none(), st.integers(), st.binary(max_size=64), st.text(max_size=16),
                 st.lists(st.dictionaries(st.text(max_size=8), st.integers(), max_size=4),
                          max_size=3)))
def test_decoding_arbitrary_zk_fields_raises_only_wire_errors(value):
    try:
        decode_chain({"zk": value}, hidden_size=32, max_bytes=1 << 20)
    except WireError:
        pass


def test_the_binding_context_matches_the_spec_vector():
    from p2pinfer.inference.critical import CONTEXT_DOMAIN
    from tests.spec_vectors import vectors

    task = make_task()
    task = Task(**{**task.__dict__, "network_id": "p2pinfer-localnet"})
    binding = step_binding(task, b"\x00" * 32, 1, 7, 3, 5, "12D3KooWExample")
    assert binding.context == vectors("critical.md")["context-stage1-seq7"]
    assert binding.context.startswith(CONTEXT_DOMAIN)
