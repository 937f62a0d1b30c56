"""Majority vote over 3 and 5 replicas, ties and missing replicas, and local checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pinfer.consensus import (
    TOLERANCE_FLOAT32,
    Equivocation,
    Fingerprint,
    FingerprintClaim,
    FingerprintContext,
    FingerprintMismatch,
    MixedClaims,
    NoMajorityError,
    SignatureInvalid,
    UnknownPeer,
    sign_claim,
    tally,
)
from tests.consensus.replicas import CONTEXT, activation, cheat_claim, honest_claim

TOL = TOLERANCE_FLOAT32


def test_three_honest_replicas_agree(peers, keys):
    outcome = tally([honest_claim(p, 3, jitter=i) for i, p in enumerate(peers[:3])], keys, TOL)
    assert set(outcome.agreeing_replicas) == {"peer-0", "peer-1", "peer-2"}
    assert outcome.dissenting == ()


def test_one_cheater_of_three_is_the_dissenter(peers, keys):
    claims = [honest_claim(peers[0], 3), cheat_claim(peers[1], 3), honest_claim(peers[2], 3, 2)]
    outcome = tally(claims, keys, TOL)
    assert set(outcome.agreeing_replicas) == {"peer-0", "peer-2"}
    assert outcome.dissenting_replicas == ("peer-1",)
    assert outcome.majority.replica in {"peer-0", "peer-2"}


def test_two_colluding_cheaters_of_five_are_outvoted(peers, keys):
    claims = [honest_claim(p, 5, jitter=i) for i, p in enumerate(peers[:3])]
    claims += [cheat_claim(peers[3], 5), cheat_claim(peers[4], 5)]
    outcome = tally(claims, keys, TOL)
    assert set(outcome.dissenting_replicas) == {"peer-3", "peer-4"}


def test_three_different_outputs_have_no_majority(peers, keys):
    claims = [honest_claim(peers[0], 3), cheat_claim(peers[1], 3, 7), cheat_claim(peers[2], 3, 8)]
    with pytest.raises(NoMajorityError) as caught:
        tally(claims, keys, TOL)
    assert caught.value.stage == CONTEXT.stage
    assert "stage 1" in str(caught.value)


def test_two_two_one_split_of_five_has_no_majority(peers, keys):
    claims = [honest_claim(peers[0], 5), honest_claim(peers[1], 5, 1),
              cheat_claim(peers[2], 5, 7), cheat_claim(peers[3], 5, 7), cheat_claim(peers[4], 5, 8)]
    with pytest.raises(NoMajorityError):
        tally(claims, keys, TOL)


def test_even_tie_is_not_a_majority(peers, keys):
    claims = [honest_claim(peers[0], 4), honest_claim(peers[1], 4, 1),
              cheat_claim(peers[2], 4), cheat_claim(peers[3], 4)]
    with pytest.raises(NoMajorityError):
        tally(claims, keys, TOL)


def test_missing_replicas_count_against_the_majority(peers, keys):
    assert len(tally([honest_claim(peers[0], 3), honest_claim(peers[1], 3, 1)], keys,
                     TOL).agreeing) == 2
    with pytest.raises(NoMajorityError):
        tally([honest_claim(peers[0], 3)], keys, TOL)
    with pytest.raises(NoMajorityError):
        tally([honest_claim(p, 5, jitter=i) for i, p in enumerate(peers[:2])], keys, TOL)


def test_single_replica_is_its_own_majority(peers, keys):
    assert tally([honest_claim(peers[0], 1)], keys, TOL).majority.replica == "peer-0"


def test_claims_for_different_steps_are_not_mixed(peers, keys):
    other = FingerprintContext(CONTEXT.network_id, CONTEXT.task_id, CONTEXT.stage, 6)
    with pytest.raises(MixedClaims):
        tally([honest_claim(peers[0], 3), honest_claim(peers[1], 3, context=other)], keys, TOL)


def test_claims_with_different_replica_counts_are_not_mixed(peers, keys):
    with pytest.raises(MixedClaims):
        tally([honest_claim(peers[0], 3), honest_claim(peers[1], 5)], keys, TOL)


def test_more_replicas_than_planned_are_refused(peers, keys):
    with pytest.raises(MixedClaims):
        tally([honest_claim(p, 2, jitter=i) for i, p in enumerate(peers[:3])], keys, TOL)


def test_empty_vote_is_refused(keys):
    with pytest.raises(MixedClaims):
        tally([], keys, TOL)


def test_replica_signing_two_fingerprints_is_equivocation(peers, keys):
    with pytest.raises(Equivocation) as caught:
        tally([honest_claim(peers[0], 3), cheat_claim(peers[0], 3), honest_claim(peers[1], 3)],
              keys, TOL)
    assert caught.value.replica == "peer-0"


def test_repeated_identical_claim_counts_once(peers, keys):
    claim = honest_claim(peers[0], 3)
    with pytest.raises(NoMajorityError):
        tally([claim, claim, cheat_claim(peers[1], 3)], keys, TOL)


def test_vote_refuses_forged_and_unknown_claims(peers, keys):
    claims = [honest_claim(p, 3, jitter=i) for i, p in enumerate(peers[:3])]
    with pytest.raises(UnknownPeer):
        tally(claims, {k: v for k, v in keys.items() if k != "peer-2"}, TOL)
    swapped = keys | {"peer-1": peers[0].key.public_key()}
    with pytest.raises(SignatureInvalid):
        tally(claims, swapped, TOL)


def test_local_activation_is_checked_against_the_majority(peers, keys):
    outcome = tally([honest_claim(p, 3, jitter=i) for i, p in enumerate(peers[:3])], keys, TOL)
    assert outcome.check_local(activation() + 1e-7) <= TOL
    with pytest.raises(FingerprintMismatch):
        outcome.check_local(activation(99))
    with pytest.raises(FingerprintMismatch):
        outcome.check_local(activation() + 0.01 * torch.randn(activation().shape))


def test_centre_is_chosen_deterministically(peers, keys):
    claims = [honest_claim(p, 3, jitter=i + 1) for i, p in enumerate(peers[:3])]
    first = tally(claims, keys, TOL).majority
    assert tally(list(reversed(claims)), keys, TOL).majority == first


def test_outcome_signs_a_tally_naming_missing_replicas(peers, keys):
    claims = [honest_claim(peers[0], 5), honest_claim(peers[1], 5, 1),
              honest_claim(peers[2], 5, 2), cheat_claim(peers[3], 5)]
    outcome = tally(claims, keys, TOL)
    route = [p.peer_id for p in peers[:5]]
    signed = outcome.sign_tally(peers[6].key, peers[6].peer_id, route)
    signed.verify(keys)
    assert signed.missing == ("peer-4",)
    assert signed.dissenting == ("peer-3",)
    assert signed.majority_digest == outcome.majority.digest()


def test_tally_refuses_a_route_that_does_not_hold_the_voters(peers, keys):
    outcome = tally([honest_claim(p, 3, jitter=i) for i, p in enumerate(peers[:3])], keys, TOL)
    with pytest.raises(MixedClaims):
        outcome.sign_tally(peers[6].key, peers[6].peer_id, ["peer-0", "peer-1", "peer-7"])


def _group_claim(peer, m: int, group: int, jitter: int) -> FingerprintClaim:
    """Group 0 is the honest output (with float jitter); each other group one shared forgery."""
    values = np.random.default_rng(group).standard_normal((2, 8)).astype("<f4")
    if group == 0:
        values = values + np.float32(1e-7) * np.random.default_rng(100 + jitter).standard_normal(
            (2, 8)).astype("<f4")
    fp = Fingerprint(hidden=64, tokens=2, rank=8, values=values.astype("<f4").tobytes())
    return sign_claim(peer.key, peer.peer_id, CONTEXT, m, fp)


@settings(deadline=None, max_examples=60)
@given(st.integers(1, 7).flatmap(lambda m: st.tuples(
    st.just(m), st.lists(st.integers(0, 2), min_size=0, max_size=m))))
def test_vote_returns_the_group_holding_more_than_half_or_raises(peers, keys, case):
    m, groups = case
    claims = [_group_claim(peers[i], m, g, i) for i, g in enumerate(groups)]
    sizes = {g: groups.count(g) for g in set(groups)}
    winners = [g for g, n in sizes.items() if 2 * n > m]
    if not claims or not winners:
        with pytest.raises((NoMajorityError, MixedClaims)):
            tally(claims, keys, TOL)
        return
    outcome = tally(claims, keys, TOL)
    expected = {peers[i].peer_id for i, g in enumerate(groups) if g == winners[0]}
    assert set(outcome.agreeing_replicas) == expected
    assert set(outcome.dissenting_replicas) == {c.replica for c in claims} - expected
