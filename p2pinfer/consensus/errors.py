"""Errors raised by p2pinfer.consensus.

Every failed check has its own type so a node can tell "the replica disagreed" from "the message
was forged" from "there was no majority at all". Malformed bytes from the wire raise
`MalformedVoteMessage`, a `WireError`.
"""

from __future__ import annotations

from p2pinfer.errors import P2PInferError, WireError


class ConsensusError(P2PInferError):
    """Base class of every consensus failure."""


class MalformedVoteMessage(WireError):
    """A claim, tally or fault evidence from the wire is malformed, oversized or not canonical."""


class FingerprintError(ConsensusError):
    """A tensor cannot be fingerprinted (wrong shape, non-finite values, over the limits)."""


class FingerprintMismatch(ConsensusError):
    """A tensor or fingerprint is farther from the expected fingerprint than the tolerance."""

    def __init__(self, what: str, distance: float, tolerance: float) -> None:
        super().__init__(f"{what}: distance {distance:.3g} exceeds tolerance {tolerance:.3g}")
        self.distance = distance
        self.tolerance = tolerance


class SignatureInvalid(ConsensusError):
    """An Ed25519 signature on a claim, tally or evidence does not verify."""

    def __init__(self, what: str, signer: str) -> None:
        super().__init__(f"invalid signature on {what} by {signer}")
        self.signer = signer


class UnknownPeer(ConsensusError):
    """No public key is known for the peer that signed a statement."""

    def __init__(self, peer: str) -> None:
        super().__init__(f"no public key known for peer {peer}")
        self.peer = peer


class MixedClaims(ConsensusError):
    """Claims handed to one vote are for different (network, task, stage, step, replicas)."""


class Equivocation(ConsensusError):
    """One replica signed two different fingerprints for the same (task, stage, step)."""

    def __init__(self, replica: str) -> None:
        super().__init__(f"replica {replica} signed two different fingerprints for one step")
        self.replica = replica


class NoMajorityError(ConsensusError):
    """No cluster of matching fingerprints holds more than half of the stage's replicas."""

    def __init__(self, stage: int, step: int, largest: int, replicas: int) -> None:
        super().__init__(
            f"no majority for stage {stage} step {step}: largest agreeing group has "
            f"{largest} of {replicas} replicas, more than {replicas // 2} needed"
        )
        self.stage = stage
        self.step = step
        self.largest = largest
        self.replicas = replicas


class EvidenceError(ConsensusError):
    """Fault evidence does not prove a fault; the subclass names the failed check."""


class EvidenceContextMismatch(EvidenceError):
    """Claims in the evidence are not all for the same network, task, stage, step and m."""


class EvidenceNotMajority(EvidenceError):
    """The claimed majority is too small, repeats a replica, or does not agree with itself."""


class DissentNotProven(EvidenceError):
    """The accused replica's fingerprint matches one of the majority claims."""


class DistributionDrift(ConsensusError):
    """A peer's outputs diverge from the stage's reference distribution beyond the threshold."""

    def __init__(self, peer: str, divergence: float, threshold: float) -> None:
        super().__init__(
            f"outputs of {peer} drift from the reference distribution: divergence "
            f"{divergence:.3g} above threshold {threshold:.3g}"
        )
        self.peer = peer
        self.divergence = divergence
        self.threshold = threshold


class RevealError(ConsensusError):
    """A revealed claim does not follow the replica's commitment; the subclass says how."""


class RevealNotCommitted(RevealError):
    """The claim's seal does not contain the replica's commitment (it was not committed before
    the seed, or it was sealed over another set of commitments): the claim does not count."""


class RevealMismatch(RevealError):
    """The replica revealed a fingerprint that is not the one of the output it committed to."""
