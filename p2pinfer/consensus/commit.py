"""Commit before the seed: replicas fix their outputs before the fingerprint seed exists.

Byte layouts in protocols/votes.md, section "Commit before the seed". After computing step s of
a stage, each replica signs an `OutputCommit` to the digest of its output tensor, exactly as it
sends it (dtype, shape, little-endian bytes), and sends it to its fellow replicas and to the
next stage. The step's seal is the SHA-256 of the m commitments' digests in route order; the
fingerprint seed derives from the seal (FingerprintContext.sealed), so nobody knows the
projection until every replica's output is fixed: a replica cannot move its output within the
projection's null space, nor shape it after another replica's claim. Each replica then reveals
its claim under the sealed context.

- `check_reveal`: a claim counts only if its seal is the digest of the commitments the voter
  holds and contains the replica's own (RevealNotCommitted otherwise: a replica that committed
  late, or not at all, is missing from the vote, never part of it).
- `RevealMismatchEvidence`: whoever holds a replica's tensor (its downstream replica, a fetcher)
  and finds that the tensor hashes to the replica's commitment but its fingerprint under the
  sealed seed is not the one the replica revealed, signs evidence with the commitment, the
  claim, the seal's commitment digests and the tensor. Anyone recomputes the fingerprint and
  bans the replica (`verify_reveal_mismatch`).
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from p2pinfer.consensus.claims import (
    MAX_CLAIM_BYTES,
    MAX_NETWORK_ID,
    MAX_PEER_ID,
    MAX_STAGE,
    MAX_STEP,
    MAX_TASK_ID,
    SIGNATURE_SIZE,
    FingerprintClaim,
    check_peer,
    decode_claim,
)
from p2pinfer.consensus.codec import (
    MAX_REPLICAS,
    VERSION,
    Fields,
    PeerKeys,
    pack,
    require_canonical,
    unpack_map,
    verify_signature,
)
from p2pinfer.consensus.errors import (
    EvidenceContextMismatch,
    FingerprintError,
    MalformedVoteMessage,
    RevealMismatch,
    RevealNotCommitted,
)
from p2pinfer.consensus.fingerprint import FingerprintContext, distance, fingerprint

COMMIT_TAG = b"p2pinfer/votes/commit/1\x00"
OUTPUT_TAG = b"p2pinfer/votes/output/1\x00"
SEAL_TAG = b"p2pinfer/votes/seal/1\x00"
REVEAL_FAULT_TAG = b"p2pinfer/votes/reveal-fault/1\x00"
MAX_COMMIT_BYTES = 1024
#: the largest tensor reveal evidence carries (8192 tokens x 8192 hidden x 4 bytes)
MAX_EVIDENCE_TENSOR_BYTES = 1 << 28
MAX_REVEAL_EVIDENCE_BYTES = MAX_EVIDENCE_TENSOR_BYTES + MAX_CLAIM_BYTES + 64 * 1024
#: the fingerprint of the committed tensor, recomputed by anyone, and the revealed one may
#: differ by float32 summation order (below 1e-6 measured); far above that, the reveal lies
REVEAL_TOLERANCE = 1e-4
_DTYPES = {"float32": ("<f4", torch.float32), "float16": ("<f2", torch.float16),
           "bfloat16": ("<u2", torch.bfloat16)}


def output_digest(activation: torch.Tensor) -> bytes:
    """SHA-256 of an output tensor as sent: tag, msgpack([dtype, shape]), little-endian bytes.
    Raises FingerprintError for a dtype other than float32, float16, bfloat16."""
    dtype, data = _tensor_bytes(activation)
    return hashlib.sha256(OUTPUT_TAG + pack([dtype, list(activation.shape)]) + data).digest()


def _tensor_bytes(activation: torch.Tensor) -> tuple[str, bytes]:
    names = {v[1]: k for k, v in _DTYPES.items()}
    if activation.dtype not in names:
        raise FingerprintError(f"output dtype {activation.dtype} cannot be committed to")
    name = names[activation.dtype]
    t = activation.detach().contiguous().cpu()
    if name == "bfloat16":
        raw = t.view(torch.int16).numpy().astype("<i2").tobytes()
    else:
        raw = t.numpy().astype(_DTYPES[name][0]).tobytes()
    return name, raw


def _tensor_from(dtype: str, shape: list[int], data: bytes) -> torch.Tensor:
    if dtype not in _DTYPES:
        raise MalformedVoteMessage(f"evidence tensor dtype {dtype!r} is not supported")
    if not (1 <= len(shape) <= 3) or not all(type(n) is int and n > 0 for n in shape):
        raise MalformedVoteMessage("evidence tensor shape is not 1..3 positive integers")
    width = 4 if dtype == "float32" else 2
    if int(np.prod(shape)) * width != len(data):
        raise MalformedVoteMessage("evidence tensor data does not match its shape")
    if dtype == "bfloat16":
        raw = np.frombuffer(data, dtype="<i2").astype(np.int16)
        return torch.from_numpy(raw.copy()).view(torch.bfloat16).reshape(shape)
    return torch.from_numpy(np.frombuffer(data, dtype=_DTYPES[dtype][0]).copy()).reshape(shape)


@dataclass(frozen=True)
class OutputCommit:
    """A replica's signed commitment: "my output for (task, stage, step) hashes to `output`"."""

    network_id: str
    task_id: bytes
    stage: int
    step: int
    replicas: int
    replica: str
    output: bytes
    signature: bytes

    @property
    def context(self) -> FingerprintContext:
        return FingerprintContext(self.network_id, self.task_id, self.stage, self.step)

    def signed_bytes(self) -> bytes:
        return COMMIT_TAG + pack(_commit_body(self))

    def encode(self) -> bytes:
        return pack({**_commit_body(self), "sig": self.signature})

    def digest(self) -> bytes:
        """SHA-256 of the canonical encoding: what the seal is made of."""
        return hashlib.sha256(self.encode()).digest()

    def verify(self, keys: PeerKeys) -> None:
        verify_signature(keys, self.replica, self.signature, self.signed_bytes(),
                         "output commitment")


def sign_commit(key: Ed25519PrivateKey, replica: str, context: FingerprintContext,
                replicas: int, output: torch.Tensor) -> OutputCommit:
    """Commit as `replica` to `output` (the tensor exactly as it will be sent)."""
    unsigned = OutputCommit(context.network_id, context.task_id, context.stage, context.step,
                            replicas, replica, output_digest(output), b"\x00" * SIGNATURE_SIZE)
    _check_commit(unsigned)
    return replace(unsigned, signature=key.sign(unsigned.signed_bytes()))


def decode_commit(data: bytes) -> OutputCommit:
    """Decode a canonical commitment; raises MalformedVoteMessage / UnsupportedVersion."""
    reader = Fields(unpack_map(data, MAX_COMMIT_BYTES, "commit"), "commit")
    reader.expect_keys(["v", "t", "net", "task", "stage", "step", "m", "replica", "out", "sig"])
    if reader.str("t", 8) != "commit":
        raise MalformedVoteMessage("message is not a commit")
    commit = OutputCommit(
        network_id=reader.str("net", MAX_NETWORK_ID),
        task_id=reader.bytes("task", MAX_TASK_ID),
        stage=reader.int("stage", 0, MAX_STAGE - 1),
        step=reader.int("step", 0, MAX_STEP - 1),
        replicas=reader.int("m", 1, MAX_REPLICAS),
        replica=reader.str("replica", MAX_PEER_ID),
        output=reader.bytes("out", 32),
        signature=reader.bytes("sig", SIGNATURE_SIZE),
    )
    _check_commit(commit)
    require_canonical(data, commit.encode(), "commit")
    return commit


def seal(commits: Sequence[OutputCommit], route_replicas: Sequence[str]) -> bytes:
    """The step's seal: SHA-256 of the commitments' digests in route order, one per replica.

    Raises RevealNotCommitted unless there is exactly one commitment of one (task, stage, step,
    m) per route replica (a seal is only made once all m replicas have committed)."""
    by_replica = {c.replica: c for c in commits}
    if sorted(by_replica) != sorted(route_replicas) or len(commits) != len(route_replicas):
        raise RevealNotCommitted("a seal needs exactly one commitment per route replica")
    first = commits[0]
    key = (first.context, first.replicas)
    if any((c.context, c.replicas) != key for c in commits) or first.replicas != len(
            route_replicas):
        raise RevealNotCommitted("commitments are for different steps or replica counts")
    return seal_of([by_replica[r].digest() for r in route_replicas])


def seal_of(digests: Sequence[bytes]) -> bytes:
    return hashlib.sha256(SEAL_TAG + b"".join(digests)).digest()


def seal_over(commits: Sequence[OutputCommit], route_replicas: Sequence[str]) -> bytes:
    """The seal a replica makes over the commitments it holds when not all m came in time: one
    commitment from each of more than half of the route's replicas, their digests in route
    order (with all m it is `seal`). Raises RevealNotCommitted otherwise."""
    by_replica = {c.replica: c for c in commits}
    if (len(by_replica) != len(commits) or not set(by_replica) <= set(route_replicas)
            or 2 * len(commits) <= len(route_replicas)):
        raise RevealNotCommitted("a seal needs one commitment from each of more than half of "
                                 "the route's replicas")
    first = commits[0]
    if any((c.context, c.replicas) != (first.context, first.replicas) for c in commits) or \
            first.replicas != len(route_replicas):
        raise RevealNotCommitted("commitments are for different steps or replica counts")
    return seal_of([by_replica[r].digest() for r in route_replicas if r in by_replica])


def sealed_context_over(commits: Sequence[OutputCommit], route_replicas: Sequence[str]
                        ) -> FingerprintContext:
    """The context a replica fingerprints under, sealed over the commitments it holds."""
    ctx = commits[0].context
    return FingerprintContext(ctx.network_id, ctx.task_id, ctx.stage, ctx.step,
                              seal_over(commits, route_replicas))


def find_seal(claim: FingerprintClaim, held: Sequence[OutputCommit],
              route_replicas: Sequence[str], keys: PeerKeys) -> tuple[OutputCommit, ...]:
    """The commitments among `held` (verified ones) that `claim` was revealed under: more than
    half of the route's replicas, the claim's own replica among them. Raises SignatureInvalid /
    UnknownPeer for a bad claim signature and RevealNotCommitted when no such set seals it
    (an unsealed claim, a replica that committed late or not at all, another step's seal)."""
    claim.verify(keys)
    if not claim.sealed:
        raise RevealNotCommitted(f"claim by {claim.replica} was not sealed by commitments")
    order = {r: i for i, r in enumerate(route_replicas)}
    step = (claim.context.unsealed(), claim.replicas)
    usable = sorted((c for c in held if c.replica in order and (c.context, c.replicas) == step),
                    key=lambda c: order[c.replica])
    own = next((c for c in usable if c.replica == claim.replica), None)
    if own is None:
        raise RevealNotCommitted(f"{claim.replica} revealed without a commitment")
    others = [c for c in usable if c is not own]
    need = len(route_replicas) // 2 + 1
    for size in range(len(others), need - 2, -1):  # the largest sets first: usually all m
        for combo in itertools.combinations(others, size):
            chosen = sorted((own, *combo), key=lambda c: order[c.replica])
            if seal_of([c.digest() for c in chosen]) == claim.sealed:
                return tuple(chosen)
    raise RevealNotCommitted(f"claim by {claim.replica} is sealed over commitments this voter "
                             "does not hold")


def sealed_context(commits: Sequence[OutputCommit], route_replicas: Sequence[str]
                   ) -> FingerprintContext:
    """The context replicas fingerprint under once all m commitments are in."""
    ctx = commits[0].context
    return FingerprintContext(ctx.network_id, ctx.task_id, ctx.stage, ctx.step,
                              seal(commits, route_replicas))


def check_reveal(claim: FingerprintClaim, commits: Sequence[OutputCommit],
                 route_replicas: Sequence[str], keys: PeerKeys) -> OutputCommit:
    """Check that a claim was revealed under the seal of these commitments and that the seal
    holds the claim's replica's own commitment; returns that commitment.

    Raises SignatureInvalid / UnknownPeer for a bad signature and RevealNotCommitted when the
    claim is unsealed, sealed over other commitments, or its replica never committed."""
    for commit in commits:
        commit.verify(keys)
    claim.verify(keys)
    if not claim.sealed:
        raise RevealNotCommitted(f"claim by {claim.replica} was not sealed by commitments")
    expected = seal(commits, route_replicas)
    if claim.sealed != expected or claim.context.unsealed() != commits[0].context:
        raise RevealNotCommitted(f"claim by {claim.replica} is sealed over other commitments")
    own = next((c for c in commits if c.replica == claim.replica), None)
    if own is None:
        raise RevealNotCommitted(f"{claim.replica} revealed without a commitment")
    return own


@dataclass(frozen=True)
class RevealMismatchEvidence:
    """Reporter-signed proof that `claim.replica` revealed a fingerprint other than that of the
    output it committed to: its commitment, its claim, the seal's digests and the tensor."""

    network_id: str
    reporter: str
    commit: OutputCommit
    claim: FingerprintClaim
    seal_digests: tuple[bytes, ...]
    tensor: torch.Tensor
    signature: bytes

    @property
    def accused(self) -> str:
        return self.commit.replica

    def signed_bytes(self) -> bytes:
        return REVEAL_FAULT_TAG + pack(_evidence_body(self))

    def encode(self) -> bytes:
        return pack({**_evidence_body(self), "sig": self.signature})

    def digest(self) -> bytes:
        return hashlib.sha256(self.encode()).digest()


def build_reveal_mismatch(commit: OutputCommit, claim: FingerprintClaim,
                          seal_digests: Sequence[bytes], tensor: torch.Tensor, reporter: str,
                          key: Ed25519PrivateKey, keys: PeerKeys) -> RevealMismatchEvidence:
    """Sign reveal-mismatch evidence (checked as every peer will before it is returned)."""
    unsigned = RevealMismatchEvidence(commit.network_id, reporter, commit, claim,
                                      tuple(seal_digests), tensor.detach().cpu(),
                                      b"\x00" * SIGNATURE_SIZE)
    evidence = replace(unsigned, signature=key.sign(unsigned.signed_bytes()))
    verify_reveal_mismatch(evidence, keys, commit.network_id)
    return evidence


def verify_reveal_mismatch(evidence: RevealMismatchEvidence, keys: PeerKeys,
                           network_id: str) -> str:
    """Check reveal-mismatch evidence; returns the accused replica's peer id.

    Raises SignatureInvalid / UnknownPeer (reporter, commitment or claim), RevealNotCommitted
    (the claim is not sealed over these digests, or they do not hold the commitment) and
    EvidenceContextMismatch for everything else that proves no fault: another network, a
    commitment and claim of different replicas or steps, a tensor that does not hash to the
    commitment, or a revealed fingerprint that is the committed tensor's."""
    if evidence.network_id != network_id or evidence.commit.network_id != network_id:
        raise EvidenceContextMismatch("reveal evidence is for another network")
    verify_signature(keys, evidence.reporter, evidence.signature, evidence.signed_bytes(),
                     "reveal evidence")
    commit, claim = evidence.commit, evidence.claim
    commit.verify(keys)
    claim.verify(keys)
    if (claim.replica, claim.context.unsealed(), claim.replicas) != (
            commit.replica, commit.context, commit.replicas):
        raise EvidenceContextMismatch("commitment and claim are not of one replica and step")
    if len(evidence.seal_digests) != commit.replicas:
        raise RevealNotCommitted("the seal does not hold one digest per replica")
    if seal_of(evidence.seal_digests) != claim.sealed:
        raise RevealNotCommitted("the claim is not sealed over these digests")
    if commit.digest() not in evidence.seal_digests:
        raise RevealNotCommitted("the seal does not hold the accused's commitment")
    if output_digest(evidence.tensor) != commit.output:
        raise EvidenceContextMismatch("the tensor is not the one the accused committed to")
    try:
        check_revealed_tensor(evidence.tensor, claim)
    except RevealMismatch:
        return commit.replica
    raise EvidenceContextMismatch("the revealed fingerprint is the committed tensor's")


def check_revealed_tensor(tensor: torch.Tensor, claim: FingerprintClaim) -> float:
    """Recompute the fingerprint of a committed tensor under the claim's sealed context;
    RevealMismatch when it is not the one revealed. Returns the distance."""
    try:
        own = fingerprint(tensor, claim.context, rank=claim.fingerprint.rank)
    except FingerprintError as exc:
        raise RevealMismatch(f"committed tensor cannot be fingerprinted: {exc}") from None
    measured = distance(own, claim.fingerprint)
    if measured > REVEAL_TOLERANCE:
        raise RevealMismatch(f"{claim.replica} revealed a fingerprint {measured:.3g} away from "
                             "the output it committed to")
    return measured


def decode_reveal_mismatch(data: bytes) -> RevealMismatchEvidence:
    """Decode canonical reveal-mismatch evidence (signatures unchecked: call verify)."""
    reader = Fields(unpack_map(data, MAX_REVEAL_EVIDENCE_BYTES, "reveal-fault"),
                    "reveal evidence")
    reader.expect_keys(["v", "t", "net", "reporter", "commit", "claim", "seal", "tensor", "sig"])
    if reader.str("t", 16) != "reveal-fault":
        raise MalformedVoteMessage("message is not reveal evidence")
    network_id = reader.str("net", MAX_NETWORK_ID)
    reporter = reader.str("reporter", MAX_PEER_ID)
    check_peer(reporter)
    commit = decode_commit(reader.bytes("commit", MAX_COMMIT_BYTES))
    claim = decode_claim(reader.bytes("claim", MAX_CLAIM_BYTES))
    digests = reader.list("seal", MAX_REPLICAS)
    if not all(type(d) is bytes and len(d) == 32 for d in digests):
        raise MalformedVoteMessage("reveal evidence seal digests are not 32-byte strings")
    t = Fields(reader.map("tensor"), "reveal evidence tensor")
    t.expect_keys(["dtype", "shape", "data"])
    tensor = _tensor_from(t.str("dtype", 16), t.list("shape", 3),
                          t.bytes("data", MAX_EVIDENCE_TENSOR_BYTES))
    evidence = RevealMismatchEvidence(network_id, reporter, commit, claim, tuple(digests),
                                      tensor, reader.bytes("sig", SIGNATURE_SIZE))
    require_canonical(data, evidence.encode(), "reveal evidence")
    return evidence


def _commit_body(commit: OutputCommit) -> dict[str, Any]:
    return {"v": VERSION, "t": "commit", "net": commit.network_id, "task": commit.task_id,
            "stage": commit.stage, "step": commit.step, "m": commit.replicas,
            "replica": commit.replica, "out": commit.output}


def _evidence_body(evidence: RevealMismatchEvidence) -> dict[str, Any]:
    dtype, data = _tensor_bytes(evidence.tensor)
    return {"v": VERSION, "t": "reveal-fault", "net": evidence.network_id,
            "reporter": evidence.reporter, "commit": evidence.commit.encode(),
            "claim": evidence.claim.encode(), "seal": list(evidence.seal_digests),
            "tensor": {"dtype": dtype, "shape": list(evidence.tensor.shape), "data": data}}


def _check_commit(commit: OutputCommit) -> None:
    if not (1 <= len(commit.network_id) <= MAX_NETWORK_ID):
        raise MalformedVoteMessage("commit network id length out of range")
    if not (1 <= len(commit.task_id) <= MAX_TASK_ID):
        raise MalformedVoteMessage("commit task id length out of range")
    if not (1 <= commit.replicas <= MAX_REPLICAS):
        raise MalformedVoteMessage("commit replica count out of range")
    check_peer(commit.replica)
    if len(commit.output) != 32 or len(commit.signature) != SIGNATURE_SIZE:
        raise MalformedVoteMessage("commit digest or signature has the wrong size")
