"""Fault evidence: a self-contained, signed proof that a replica disagreed with a majority.

Byte layout in protocols/votes.md, section "Fault evidence". The evidence carries the accused
replica's signed claim and the signed claims of a majority, each as its exact canonical bytes,
and is signed by the reporter. Any peer can check it with `verify_fault_evidence` knowing only
the peers' public keys and the network's tolerance: every signature verifies, all claims are for
one (network, task, stage, step, m), more than m/2 distinct replicas other than the accused all
match the first majority claim, and the accused claim matches none of them. Only then may the
accused be penalised network-wide (see reputation.py). The checks assume, as the vote does,
that fewer than half of a stage's replicas collude.

Each comparison uses the tolerance of its pair of precision classes (fingerprint.pair_tolerance)
times the network's evidence margin, at most the network's evidence tolerance. When the majority
claims of the accused's own class are by themselves more than m/2 of the replicas, the accused is
judged against them alone (a float32 replica is held to its float32 peers, however close a
bfloat16 replica's claim comes); otherwise it must match none of the majority.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from p2pinfer.consensus.claims import (
    MAX_CLAIM_BYTES,
    MAX_NETWORK_ID,
    MAX_PEER_ID,
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
    DissentNotProven,
    EvidenceContextMismatch,
    EvidenceNotMajority,
    MalformedVoteMessage,
)
from p2pinfer.consensus.fingerprint import distance, pair_tolerance
from p2pinfer.consensus.vote import VoteOutcome

EVIDENCE_TAG = b"p2pinfer/votes/fault/1\x00"
MAX_EVIDENCE_BYTES = (MAX_REPLICAS + 1) * (MAX_CLAIM_BYTES + 16) + 4096


@dataclass(frozen=True)
class FaultEvidence:
    """Reporter-signed evidence that `dissent.replica` disagreed with the `majority` claims."""

    network_id: str
    reporter: str
    dissent: FingerprintClaim
    majority: tuple[FingerprintClaim, ...]
    signature: bytes

    @property
    def accused(self) -> str:
        return self.dissent.replica

    def signed_bytes(self) -> bytes:
        return EVIDENCE_TAG + pack(_evidence_body(self))

    def encode(self) -> bytes:
        return pack({**_evidence_body(self), "sig": self.signature})

    def digest(self) -> bytes:
        """SHA-256 of the canonical encoding; reputation books count each evidence once."""
        return hashlib.sha256(self.encode()).digest()

    def __repr__(self) -> str:
        return (f"FaultEvidence(accused={self.accused}, reporter={self.reporter}, "
                f"stage={self.dissent.stage}, step={self.dissent.step})")


def build_fault_evidence(
    outcome: VoteOutcome,
    dissenter: str,
    reporter: str,
    key: Ed25519PrivateKey,
    keys: PeerKeys,
) -> FaultEvidence:
    """Sign evidence against one dissenting replica of a vote.

    Raises DissentNotProven when the dissenter's claim is within tolerance of some majority
    claim (it disagreed with the centre only): such a dissent is reported in tallies but not
    punished.
    """
    dissent = next((c for c in outcome.dissenting if c.replica == dissenter), None)
    if dissent is None:
        raise DissentNotProven(f"{dissenter} is not among the dissenting replicas of the vote")
    unsigned = FaultEvidence(outcome.context.network_id, reporter, dissent, outcome.agreeing,
                             b"\x00" * SIGNATURE_SIZE)
    evidence = FaultEvidence(unsigned.network_id, reporter, dissent, outcome.agreeing,
                             key.sign(unsigned.signed_bytes()))
    verify_fault_evidence(evidence, keys, outcome.tolerance, outcome.context.network_id)
    return evidence


def verify_fault_evidence(
    evidence: FaultEvidence, keys: PeerKeys, tolerance: float, network_id: str,
    margin: float = 1.0,
) -> str:
    """Check fault evidence as any peer can; returns the accused replica's peer id.

    Two claims are compared at `margin` times their pair's class tolerance, at most
    `tolerance`.

    Raises, naming the failed check: EvidenceContextMismatch (other network, or claims for
    different task/stage/step/m), UnknownPeer / SignatureInvalid (reporter or any claim),
    EvidenceNotMajority (too few distinct replicas, accused among them, or a member not
    matching the first majority claim), DissentNotProven (accused matches a majority claim).
    """
    if evidence.network_id != network_id:
        raise EvidenceContextMismatch(
            f"evidence is for network {evidence.network_id!r}, not {network_id!r}"
        )
    verify_signature(keys, evidence.reporter, evidence.signature, evidence.signed_bytes(),
            "fault evidence")
    dissent = evidence.dissent
    key = (dissent.network_id, dissent.context, dissent.replicas)
    if dissent.network_id != network_id:
        raise EvidenceContextMismatch("accused claim is for another network")
    for claim in evidence.majority:
        if (claim.network_id, claim.context, claim.replicas) != key:
            raise EvidenceContextMismatch(
                f"claim by {claim.replica} is for another task, stage, step or replica count"
            )
    dissent.verify(keys)
    for claim in evidence.majority:
        claim.verify(keys)
    members = [claim.replica for claim in evidence.majority]
    if len(set(members)) != len(members):
        raise EvidenceNotMajority("a replica appears twice in the majority")
    if dissent.replica in members:
        raise EvidenceNotMajority("the accused replica is listed in the majority")
    if 2 * len(members) <= dissent.replicas:
        raise EvidenceNotMajority(
            f"{len(members)} agreeing replicas are not more than half of {dissent.replicas}"
        )
    def limit(a: FingerprintClaim, b: FingerprintClaim) -> float:
        return min(tolerance, margin * pair_tolerance(a.precision, b.precision))

    centre = evidence.majority[0]
    for claim in evidence.majority[1:]:
        if distance(centre.fingerprint, claim.fingerprint) > limit(centre, claim):
            raise EvidenceNotMajority(f"majority claim by {claim.replica} does not match the "
                                      "first majority claim")
    judges = [c for c in evidence.majority if c.precision == dissent.precision]
    if 2 * len(judges) <= dissent.replicas:
        judges = list(evidence.majority)
    for claim in judges:
        measured = distance(dissent.fingerprint, claim.fingerprint)
        if measured <= limit(dissent, claim):
            raise DissentNotProven(
                f"accused fingerprint matches the claim by {claim.replica} "
                f"(distance {measured:.3g} within tolerance {limit(dissent, claim):.3g})"
            )
    return dissent.replica


def decode_fault_evidence(data: bytes) -> FaultEvidence:
    """Decode canonical fault evidence; raises MalformedVoteMessage / UnsupportedVersion.

    Signatures and the fault itself are not checked here: call `verify_fault_evidence`.
    """
    fields = unpack_map(data, MAX_EVIDENCE_BYTES, "fault")
    reader = Fields(fields, "fault evidence")
    reader.expect_keys(["v", "t", "net", "reporter", "dissent", "majority", "sig"])
    network_id = reader.str("net", MAX_NETWORK_ID)
    if not network_id:
        raise MalformedVoteMessage("fault evidence network id is empty")
    reporter = reader.str("reporter", MAX_PEER_ID)
    check_peer(reporter)
    dissent = decode_claim(reader.bytes("dissent", MAX_CLAIM_BYTES))
    encoded = reader.list("majority", MAX_REPLICAS)
    if not encoded:
        raise MalformedVoteMessage("fault evidence has no majority claims")
    majority = []
    for item in encoded:
        if type(item) is not bytes:
            raise MalformedVoteMessage("fault evidence majority holds a non-bytes claim")
        majority.append(decode_claim(item))
    signature = reader.bytes("sig", SIGNATURE_SIZE)
    if len(signature) != SIGNATURE_SIZE:
        raise MalformedVoteMessage("fault evidence signature is not 64 bytes")
    evidence = FaultEvidence(network_id, reporter, dissent, tuple(majority), signature)
    require_canonical(data, evidence.encode(), "fault evidence")
    return evidence


def _evidence_body(evidence: FaultEvidence) -> dict[str, Any]:
    return {
        "v": VERSION, "t": "fault", "net": evidence.network_id, "reporter": evidence.reporter,
        "dissent": evidence.dissent.encode(),
        "majority": [claim.encode() for claim in evidence.majority],
    }

