"""Majority vote over the fingerprint claims of one (task, stage, step).

Paper, section "Consensus-based verification": each stage runs on m replicas and the output
that more than half of them agree on is taken. Agreement is `match` within a tolerance, which
is not transitive, so the vote clusters around a centre: for every claim, the claims that match
it; the centre is the claim with the largest such cluster (ties: the stricter precision class,
then smallest total distance, then smallest replica id). A cluster is a majority when it holds more than m/2 of the m replicas the
task route assigned, so missing replicas count against a majority. Without a majority the vote
raises NoMajorityError; it never picks silently.

Precision classes (protocols/votes.md): two claims are compared at the tolerance of their pair
(`pair_tolerance`, at most the task's tolerance). When the claims of the strictest class present
are by themselves more than m/2 of the replicas, that class decides: the majority must form among
them at their own tolerance, and the looser claims are then judged against its centre. A bfloat16
replica, which matches any float32 claim within bfloat16 noise, can then never make a float32
substitute (int8 weights, 1% noise) agree with an honest float32 replica; when the strict class
is split, the vote has no majority rather than an arbitrary one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from p2pinfer.consensus.claims import FingerprintClaim, VoteTally, sign_tally
from p2pinfer.consensus.codec import PeerKeys
from p2pinfer.consensus.errors import Equivocation, MixedClaims, NoMajorityError
from p2pinfer.consensus.fingerprint import (
    Fingerprint,
    FingerprintContext,
    check_tensor,
    distance,
    pair_tolerance,
    stricter,
)


@dataclass(frozen=True)
class VoteOutcome:
    """Result of a vote: the central majority claim, who agreed with it and who did not."""

    context: FingerprintContext
    replicas: int
    majority: FingerprintClaim
    agreeing: tuple[FingerprintClaim, ...]
    dissenting: tuple[FingerprintClaim, ...]
    tolerance: float

    @property
    def fingerprint(self) -> Fingerprint:
        return self.majority.fingerprint

    @property
    def agreeing_replicas(self) -> tuple[str, ...]:
        return tuple(claim.replica for claim in self.agreeing)

    @property
    def dissenting_replicas(self) -> tuple[str, ...]:
        return tuple(claim.replica for claim in self.dissenting)

    def sign_tally(
        self, key: Ed25519PrivateKey, reporter: str, route_replicas: Sequence[str]
    ) -> VoteTally:
        """The signed tally of this outcome; replicas of the route without a claim are missing.

        Raises MixedClaims when a claim came from a peer that is not in `route_replicas`.
        """
        voted = set(self.agreeing_replicas) | set(self.dissenting_replicas)
        if not voted <= set(route_replicas) or len(set(route_replicas)) != self.replicas:
            raise MixedClaims("the route's replicas do not account for the claims of the vote")
        missing = tuple(peer for peer in set(route_replicas) if peer not in voted)
        return sign_tally(key, reporter, self.context, self.replicas, self.majority.digest(),
                          self.agreeing_replicas, self.dissenting_replicas, missing)

    def tolerance_for(self, precision: str) -> float:
        """The tolerance between the majority centre and a tensor of class `precision`."""
        return pair_tolerance(self.majority.precision, precision, self.tolerance)

    def check_local(self, activation: torch.Tensor, precision: str = "bfloat16") -> float:
        """Check an activation against the majority fingerprint at the tolerance between the
        centre's class and `precision`, the class of whoever will compute on it (a float32
        replica must take a float32-close input: FingerprintMismatch otherwise)."""
        return check_tensor(activation, self.fingerprint, self.context,
                            self.tolerance_for(precision))


def tally(claims: Sequence[FingerprintClaim], keys: PeerKeys, tolerance: float) -> VoteOutcome:
    """Vote over the claims of one (task, stage, step).

    Verifies every signature (UnknownPeer, SignatureInvalid), requires one context and one m
    (MixedClaims), drops exact duplicates, rejects a replica that signed two fingerprints
    (Equivocation) and raises NoMajorityError when no cluster holds more than m/2 replicas.
    """
    if not claims:
        raise MixedClaims("no claims to vote on")
    first = claims[0]
    by_replica: dict[str, FingerprintClaim] = {}
    for claim in claims:
        if (claim.context, claim.replicas) != (first.context, first.replicas):
            raise MixedClaims(
                f"claim by {claim.replica} is for another task, stage, step or replica count"
            )
        claim.verify(keys)
        seen = by_replica.get(claim.replica)
        if seen is not None and seen.fingerprint != claim.fingerprint:
            raise Equivocation(claim.replica)
        by_replica[claim.replica] = claim
    replicas = first.replicas
    unique = sorted(by_replica.values(), key=lambda c: c.replica)
    if len(unique) > replicas:
        raise MixedClaims(f"{len(unique)} replicas claimed for a stage of {replicas}")

    dist = [[distance(a.fingerprint, b.fingerprint) for b in unique] for a in unique]
    tol = [[pair_tolerance(a.precision, b.precision, tolerance) for b in unique]
           for a in unique]
    match = [[dist[i][j] <= tol[i][j] for j in range(len(unique))] for i in range(len(unique))]
    strictest = unique[0].precision
    for claim in unique:
        if stricter(claim.precision, strictest):
            strictest = claim.precision
    decisive = [i for i, c in enumerate(unique) if c.precision == strictest]
    if 2 * len(decisive) <= replicas:
        decisive = list(range(len(unique)))  # no class holds a majority alone: all vote
    best_key: tuple[int, float, float, str] | None = None
    best = 0
    for i in decisive:
        members = [j for j in decisive if match[i][j]]
        # among clusters of one size a centre of the stricter class wins: a float32 replica
        # then checks its input at the float32 tolerance against a float32 output, so it never
        # computes on a bfloat16 replica's output and drifts from its float32 fellows
        own = pair_tolerance(unique[i].precision, unique[i].precision)
        key = (-len(members), own, sum(dist[i][j] for j in members), unique[i].replica)
        if best_key is None or key < best_key:
            best_key, best = key, i
    assert best_key is not None
    size = -best_key[0]
    if 2 * size <= replicas:
        raise NoMajorityError(first.stage, first.step, size, replicas)
    centre = unique[best]
    agreeing = tuple([centre] + [c for j, c in enumerate(unique)
                                 if j != best and match[best][j]])
    dissenting = tuple(c for j, c in enumerate(unique) if not match[best][j])
    return VoteOutcome(first.context, replicas, centre, agreeing, dissenting, tolerance)
