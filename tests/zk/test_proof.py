"""Shard proofs: completeness, and rejection of every kind of tampering."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2pinfer.zk import (
    BindingMismatch,
    CommittedShard,
    ModelManifest,
    OpeningError,
    ProofBinding,
    ProofError,
    ProofFormatError,
    RelationError,
    ShardProof,
    commit_shard,
    prove,
    verify,
)
from p2pinfer.zk.field import P
from p2pinfer.zk.group import decode_point, encode_point, pedersen_params
from p2pinfer.zk.proof import _binding

from .conftest import assert_mutation_rejected, make_input, make_shard


def test_an_honest_proof_verifies(small_committed, binding):
    x = make_input(2, 8)
    y = small_committed.forward_fixed(x)
    proof = prove(small_committed, x, y, binding)
    verify(small_committed.commitment, x, y, proof, binding)


@settings(deadline=None, max_examples=30, suppress_health_check=[HealthCheck.too_slow])
@given(
    tokens=st.integers(1, 6),
    dims=st.lists(st.sampled_from([1, 2, 4, 8]), min_size=2, max_size=3),
    bias=st.booleans(),
    acts=st.lists(st.sampled_from(["relu", "identity"]), min_size=2, max_size=2),
    seed=st.integers(0, 2**16),
)
def test_proofs_are_complete_on_random_shapes(tokens, dims, bias, acts, seed):
    n = len(dims) - 1
    residual = [dims[k] == dims[k + 1] and (seed >> k) & 1 == 1 for k in range(n)]
    shard = make_shard(dims, seed=seed, bias=bias, activations=acts[:n], residual=residual)
    committed = commit_shard(shard)
    x = make_input(tokens, dims[0], seed=seed + 1)
    y = committed.forward_fixed(x)
    b = ProofBinding(b"t%d" % seed, b"\x22" * 32)
    proof = ShardProof.from_bytes(prove(committed, x, y, b).to_bytes())
    verify(committed.commitment, x, y, proof, b)


def test_a_proof_made_with_other_weights_fails_the_weight_opening(small_committed, binding):
    honest = small_committed.shard
    layers = list(honest.layers)
    w = layers[1].weight.copy()
    w[3, 5] += 1
    layers[1] = dataclasses.replace(layers[1], weight=w)
    cheat = CommittedShard(type(honest)(layers, honest.frac_bits), small_committed.commitment,
                           small_committed.weight_blinds, small_committed.bias_blinds)
    x = make_input(2, 8)
    y = cheat.forward_fixed(x)
    proof = prove(cheat, x, y, binding)
    with pytest.raises(OpeningError) as exc:
        verify(small_committed.commitment, x, y, proof, binding)
    assert exc.value.check == "layer1/weight-opening"


def test_one_changed_output_element_is_rejected(small_committed, binding):
    x = make_input(2, 8)
    y = small_committed.forward_fixed(x)
    proof = prove(small_committed, x, y, binding)
    y2 = y.copy()
    y2[1, 6] += 1
    with pytest.raises(BindingMismatch):
        verify(small_committed.commitment, x, y2, proof, binding)
    # Even with the binding digest recomputed for the forged output, the transcript catches it.
    _, forged = _binding(small_committed.commitment, x, y2, binding)
    with pytest.raises(ProofError):
        verify(small_committed.commitment, x, y2, dataclasses.replace(proof, binding=forged),
               binding)


def test_one_changed_round_coefficient_is_rejected(small_committed, binding):
    x = make_input(2, 8)
    y = small_committed.forward_fixed(x)
    proof = prove(small_committed, x, y, binding)
    g = pedersen_params(8).g
    # commits[0] is the first round coefficient of the last layer's sum-check
    for k in (0, 7, len(proof.record.commits) - 1):
        commits = list(proof.record.commits)
        commits[k] = encode_point(decode_point(commits[k]) + g)
        rec = dataclasses.replace(proof.record, commits=commits)
        with pytest.raises(ProofError):
            verify(small_committed.commitment, x, y,
                   dataclasses.replace(proof, record=rec), binding)


def test_a_changed_opening_response_is_rejected(small_committed, binding):
    x = make_input(1, 8)
    y = small_committed.forward_fixed(x)
    proof = prove(small_committed, x, y, binding)
    dots = list(proof.record.dots)
    dots[-1] = dataclasses.replace(dots[-1], z=[dots[-1].z[0] + 1] + dots[-1].z[1:])
    rec = dataclasses.replace(proof.record, dots=dots)
    with pytest.raises(OpeningError):
        verify(small_committed.commitment, x, y, dataclasses.replace(proof, record=rec), binding)


def test_a_changed_relation_blinding_is_rejected(small_committed, binding):
    x = make_input(1, 8)
    y = small_committed.forward_fixed(x)
    proof = prove(small_committed, x, y, binding)
    rec = dataclasses.replace(proof.record, taus=[t + 1 for t in proof.record.taus])
    with pytest.raises(RelationError):
        verify(small_committed.commitment, x, y, dataclasses.replace(proof, record=rec), binding)


def test_a_proof_replayed_for_another_task_or_input_is_rejected(small_committed, binding):
    x = make_input(2, 8)
    y = small_committed.forward_fixed(x)
    proof = prove(small_committed, x, y, binding)
    with pytest.raises(BindingMismatch):
        verify(small_committed.commitment, x, y, proof,
               dataclasses.replace(binding, task_id=b"task-2"))
    x2 = x.copy()
    x2[0, 0] += 1
    with pytest.raises(BindingMismatch):
        verify(small_committed.commitment, x2, y, proof, binding)
    other = dataclasses.replace(binding, task_id=b"task-2")
    _, forged = _binding(small_committed.commitment, x, y, other)
    with pytest.raises(ProofError):
        verify(small_committed.commitment, x, y, dataclasses.replace(proof, binding=forged), other)


def test_a_swapped_manifest_is_rejected(small_committed):
    x = make_input(2, 8)
    y = small_committed.forward_fixed(x)
    real = ModelManifest.from_shards("model-a", [small_committed])
    fake_shard = commit_shard(make_shard([8, 8, 8], seed=77, residual=[False, True]))
    fake = ModelManifest.from_shards("model-a", [fake_shard])
    prover = small_committed.bind_to(real.shard(0, 2))
    b = ProofBinding(b"task", real.digest())
    proof = prove(prover, x, y, b)
    verify(real.shard(0, 2), x, y, proof, b)
    with pytest.raises(BindingMismatch):
        verify(fake.shard(0, 2), x, y, proof, ProofBinding(b"task", fake.digest()))
    with pytest.raises(BindingMismatch):
        verify(fake.shard(0, 2), x, y, proof, b)


def test_the_proof_never_carries_weight_values(small_committed, binding):
    x = make_input(2, 8)
    y = small_committed.forward_fixed(x)
    blob = prove(small_committed, x, y, binding).to_bytes()
    for layer in small_committed.shard.layers:
        for row in layer.weight:
            for enc in (row.astype("<i8").tobytes(), row.astype("<i4").tobytes(),
                        row.astype("<i2").tobytes()):
                assert enc not in blob
        assert layer.bias.astype("<i8").tobytes() not in blob
    # nor as field elements: no scalar of the proof is a weight or a bias
    proof = ShardProof.from_bytes(blob)
    sent = set(proof.record.taus)
    for d in proof.record.dots:
        sent.update(d.z, d.z_betas, [d.z_delta])
    for p in proof.record.products:
        sent.update(p.z)
    for layer in small_committed.shard.layers:
        values = {int(v) % P for v in layer.weight.reshape(-1)} | {int(v) % P for v in layer.bias}
        assert not (values - {0}) & sent


def test_prover_refuses_an_output_that_is_not_the_shards(small_committed, binding):
    x = make_input(2, 8)
    y = small_committed.forward_fixed(x) + 1
    with pytest.raises(ValueError):
        prove(small_committed, x, y, binding)


def test_proof_bytes_round_trip(small_committed, binding):
    x = make_input(1, 8)
    y = small_committed.forward_fixed(x)
    proof = prove(small_committed, x, y, binding)
    back = ShardProof.from_bytes(proof.to_bytes())
    assert back == proof


def test_proof_decoder_checks_the_size_limit_first(small_committed, binding):
    x = make_input(1, 8)
    y = small_committed.forward_fixed(x)
    blob = prove(small_committed, x, y, binding).to_bytes()
    with pytest.raises(ProofFormatError, match="limit"):
        ShardProof.from_bytes(blob, max_size=len(blob) - 1)


@settings(deadline=None, max_examples=300)
@given(st.binary(max_size=300))
def test_proof_decoder_raises_only_its_typed_error(data):
    try:
        ShardProof.from_bytes(data)
    except ProofFormatError:
        pass


@settings(deadline=None, max_examples=60)
@given(st.data())
def test_mutated_proof_bytes_never_verify_and_never_crash(small_committed, binding, data):
    x = make_input(1, 8)
    y = small_committed.forward_fixed(x)
    assert_mutation_rejected(small_committed, x, y, binding,
                             data.draw(st.integers(0, 1 << 20)), data.draw(st.integers(1, 255)))


def test_verify_refuses_mismatched_shapes(small_committed, binding):
    x = make_input(2, 8)
    y = small_committed.forward_fixed(x)
    proof = prove(small_committed, x, y, binding)
    with pytest.raises(ProofError):
        verify(small_committed.commitment, x[:1], y, proof, binding)
    with pytest.raises(ProofError):
        verify(small_committed.commitment, np.zeros((2, 4), dtype=np.int64), y, proof, binding)


def test_verify_reports_a_float_input_as_a_proof_error(small_committed, binding):
    x = make_input(1, 8)
    y = small_committed.forward_fixed(x)
    proof = prove(small_committed, x, y, binding)
    with pytest.raises(ProofError):
        verify(small_committed.commitment, x.astype(np.float32), y, proof, binding)


def test_a_whole_manifest_can_stand_for_a_one_shard_model(small_committed):
    manifest = ModelManifest.from_shards("m", [small_committed])
    prover = small_committed.bind_to(manifest.shard(0, 2))
    x = make_input(2, 8)
    y = prover.forward_fixed(x)
    b = ProofBinding(b"t", manifest.digest())
    verify(manifest, x, y, prove(prover, x, y, b), b)


def test_token_counts_need_not_be_powers_of_two(small_committed, binding):
    x = make_input(3, 8)
    y = small_committed.forward_fixed(x)
    proof = prove(small_committed, x, y, binding)
    verify(small_committed.commitment, x, y, proof, binding)
    y2 = y.copy()
    y2[2, 0] += 1
    _, forged = _binding(small_committed.commitment, x, y2, binding)
    with pytest.raises(ProofError):
        verify(small_committed.commitment, x, y2, dataclasses.replace(proof, binding=forged),
               binding)


def test_a_non_binary_decomposition_fails_the_bit_check(small_committed, binding, monkeypatch):
    from p2pinfer.zk.gadgets import bits

    honest = bits.bit_decomposition

    def cheat(z):
        bits = honest(z)
        k = int(np.flatnonzero(bits[:, 1] == 1)[0])  # same value, digit 2 instead of bit 1
        bits[k, 1], bits[k, 0] = 0, bits[k, 0] + 2
        return bits

    def commit_any_rows(self, rows):
        from p2pinfer.zk.group import encode_point, random_scalar

        blinds = [random_scalar() for _ in range(len(rows))]
        encs = [encode_point(self.params.commit_small_ints(r, b)) for r, b in zip(rows, blinds)]
        for e in encs:
            self.t.absorb(b"matrix-row", e)
        self.record.matrices.append(encs)
        return blinds

    from p2pinfer.zk.ledger import ProverLedger

    monkeypatch.setattr(bits, "bit_decomposition", cheat)
    monkeypatch.setattr(ProverLedger, "put_bit_matrix", commit_any_rows)
    x = make_input(2, 8)
    y = small_committed.forward_fixed(x)
    proof = prove(small_committed, x, y, binding)
    with pytest.raises(RelationError) as exc:
        verify(small_committed.commitment, x, y, proof, binding)
    assert exc.value.check.endswith("/bits-final")


def test_proof_size_by_part_adds_up_to_the_encoding(small_committed, binding):
    x = make_input(2, 8)
    proof = prove(small_committed, x, small_committed.forward_fixed(x), binding)
    parts = proof.size_by_part()
    assert set(parts) == {"commitments", "tables", "products", "openings", "other"}
    assert sum(parts.values()) == len(proof.to_bytes())
    assert parts["commitments"] > 48 and parts["openings"] > 48 and 32 < parts["other"] < len(proof.to_bytes()) // 4
