"""Commit before the seed (protocols/votes.md): replicas commit to their outputs, the seed
derives from all m commitments, claims revealed under it count only if their replica
committed, and a replica that reveals a fingerprint other than its committed output's is
caught with evidence anyone can check."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import trio

from p2pinfer.consensus import fingerprint, sign_claim
from p2pinfer.consensus.claimbox import ClaimBox, try_vote, wait_majority
from p2pinfer.consensus.commit import (
    build_reveal_mismatch,
    check_reveal,
    check_revealed_tensor,
    decode_commit,
    decode_reveal_mismatch,
    find_seal,
    output_digest,
    seal,
    sealed_context,
    sealed_context_over,
    sign_commit,
    verify_reveal_mismatch,
)
from p2pinfer.consensus.errors import (
    EvidenceContextMismatch,
    MalformedVoteMessage,
    RevealMismatch,
    RevealNotCommitted,
    SignatureInvalid,
)
from tests.consensus.conftest import NETWORK
from tests.consensus.replicas import CONTEXT, activation


def outputs(n: int = 3) -> list[torch.Tensor]:
    x = activation()
    return [x + 1e-7 * torch.randn(x.shape, generator=torch.Generator().manual_seed(i))
            for i in range(n)]


def commit_round(peers, outs):
    route = [p.peer_id for p in peers[:len(outs)]]
    commits = [sign_commit(p.key, p.peer_id, CONTEXT, len(outs), out)
               for p, out in zip(peers, outs, strict=False)]
    return route, commits


def reveal(peer, ctx, out, m=3):
    return sign_claim(peer.key, peer.peer_id, ctx, m, fingerprint(out, ctx))


def test_the_seed_exists_only_once_every_replica_committed(peers):
    outs = outputs()
    route, commits = commit_round(peers, outs)
    with pytest.raises(RevealNotCommitted):
        seal(commits[:2], route)
    ctx = sealed_context(commits, route)
    assert ctx.sealed and ctx.seed() != CONTEXT.seed()
    # another output from any replica gives another seed
    _, other = commit_round(peers, [outs[0], outs[1], outs[2] * 1.01])
    assert seal(other, route) != ctx.sealed


def test_commit_round_trips_and_is_signed(peers, keys):
    out = outputs(1)[0]
    commit = sign_commit(peers[0].key, peers[0].peer_id, CONTEXT, 3, out)
    assert decode_commit(commit.encode()) == commit
    assert commit.output == output_digest(out)
    commit.verify(keys)
    with pytest.raises(SignatureInvalid):
        dataclasses.replace(commit, output=bytes(32)).verify(keys)
    with pytest.raises(MalformedVoteMessage):
        decode_commit(commit.encode()[:-1])
    assert output_digest(out.to(torch.bfloat16)) != output_digest(out)


def test_honest_reveals_are_checked_and_match(peers, keys):
    outs = outputs()
    route, commits = commit_round(peers, outs)
    ctx = sealed_context(commits, route)
    for peer, out in zip(peers, outs, strict=False):
        claim = reveal(peer, ctx, out)
        assert check_reveal(claim, commits, route, keys).replica == peer.peer_id
        assert check_revealed_tensor(out, claim) <= 1e-6


def test_a_late_revealing_replica_does_not_count(peers, keys):
    """A replica that did not commit before the seal (it waited to learn the seed from the
    others' claims) cannot reveal into the vote: an unsealed claim, one sealed without its
    commitment, or one sealed over a set it completed late are all refused."""
    outs = outputs()
    route, commits = commit_round(peers, outs)
    ctx = sealed_context(commits, route)
    late = peers[2]
    with pytest.raises(RevealNotCommitted):
        check_reveal(reveal(late, CONTEXT, outs[2]), commits, route, keys)
    # it commits only after seeing the seed and reveals a shaped output under its own seal
    shaped = outs[0].clone()
    relate = sign_commit(late.key, late.peer_id, CONTEXT, 3, shaped)
    own_set = commits[:2] + [relate]
    claim = reveal(late, sealed_context(own_set, route), shaped)
    with pytest.raises(RevealNotCommitted):
        check_reveal(claim, commits, route, keys)
    # and a claim under the others' seal by a peer off the route has no commitment in it
    stranger = peers[4]
    with pytest.raises(RevealNotCommitted):
        check_reveal(reveal(stranger, ctx, outs[0]), commits, route, keys)


def test_a_replica_revealing_another_output_is_caught_with_evidence(peers, keys):
    outs = outputs()
    route, commits = commit_round(peers, outs)
    ctx = sealed_context(commits, route)
    liar = peers[1]
    # it committed to outs[1] and sent it, then learned the seed and revealed the fingerprint
    # of a corrected output (or copied a fellow's claim)
    lie = reveal(liar, ctx, outs[1] + 0.05 * torch.randn(outs[1].shape))
    check_reveal(lie, commits, route, keys)  # properly sealed, so it counts in the vote...
    with pytest.raises(RevealMismatch):  # ...but the holder of its tensor sees the lie
        check_revealed_tensor(outs[1], lie)
    digests = [c.digest() for c in commits]
    evidence = build_reveal_mismatch(commits[1], lie, digests, outs[1], peers[3].peer_id,
                                     peers[3].key, keys)
    decoded = decode_reveal_mismatch(evidence.encode())
    assert verify_reveal_mismatch(decoded, keys, NETWORK) == liar.peer_id
    assert decoded.encode() == evidence.encode()
    with pytest.raises(EvidenceContextMismatch):
        verify_reveal_mismatch(decoded, keys, "othernet")


def test_reveal_evidence_cannot_frame_an_honest_replica(peers, keys):
    outs = outputs()
    route, commits = commit_round(peers, outs)
    ctx = sealed_context(commits, route)
    honest = reveal(peers[1], ctx, outs[1])
    digests = [c.digest() for c in commits]
    # the true tensor: its fingerprint is the revealed one
    with pytest.raises(EvidenceContextMismatch):
        build_reveal_mismatch(commits[1], honest, digests, outs[1], peers[3].peer_id,
                              peers[3].key, keys)
    # another tensor: it does not hash to the commitment
    with pytest.raises(EvidenceContextMismatch):
        build_reveal_mismatch(commits[1], honest, digests, outs[1] * 2, peers[3].peer_id,
                              peers[3].key, keys)
    # a seal that does not hold the commitment
    with pytest.raises(RevealNotCommitted):
        build_reveal_mismatch(commits[1], honest, digests[:1] + [bytes(32)] + digests[2:],
                              outs[1] * 2, peers[3].peer_id, peers[3].key, keys)


def test_a_box_counts_claims_revealed_under_a_seal_it_can_reproduce(peers, keys):
    """The voter's view (ClaimBox.counted for a sealed step): replicas that sealed over all
    commitments, or over a majority of them when one came too late, count; an unsealed claim,
    a claim by a replica that never committed, and a seal over a minority do not; claims
    under different seals are never mixed, the largest group is the vote's."""
    outs = outputs()
    route, commits = commit_round(peers, outs)
    key = (CONTEXT.task_id, CONTEXT.stage, CONTEXT.step)
    box = ClaimBox(keys)
    everyone = sealed_context(commits, route)
    a, b, c = (reveal(p, everyone, o) for p, o in zip(peers, outs, strict=False))
    for claim in (a, b):
        box.add(claim)
    assert box.counted(key, route, sealed=True) == []  # no commitment held yet
    assert box.counted(key, route) == [a, b]  # an unsealed step counts every claim
    for commit in commits:
        box.add_commit(commit)
    assert box.counted(key, route, sealed=True) == [a, b]
    # the third replica's commitment came after the first two sealed over theirs: they seal
    # over the majority they held, it over all three; the two groups never mix
    pair = sealed_context_over(commits[:2], route)
    assert pair.sealed != everyone.sealed
    box2 = ClaimBox(keys)
    for commit in commits:
        box2.add_commit(commit)
    a2, b2 = reveal(peers[0], pair, outs[0]), reveal(peers[1], pair, outs[1])
    for claim in (a2, b2, c):
        box2.add(claim)
    assert box2.counted(key, route, sealed=True) == [a2, b2]
    assert [x.replica for x in find_seal(a2, commits, route, keys)] == route[:2]
    # a seal over a minority (one commitment of three) is no seal
    with pytest.raises(RevealNotCommitted):
        sealed_context_over(commits[:1], route)
    # unsealed claims and a replica without a commitment are not counted
    box3 = ClaimBox(keys)
    for commit in commits[:2]:
        box3.add_commit(commit)
    box3.add(reveal(peers[0], CONTEXT, outs[0]))
    box3.add(reveal(peers[2], everyone, outs[2]))
    assert box3.counted(key, route, sealed=True) == []
    # a second, different commitment by the same replica does not replace its first
    box3.add_commit(sign_commit(peers[0].key, peers[0].peer_id, CONTEXT, 3, outs[0] * 2))
    assert box3.commits(key, route)[0] == commits[0]


async def test_a_sealed_vote_waits_for_the_commitments_it_needs(peers, keys):
    outs = outputs()
    route, commits = commit_round(peers, outs)
    key = (CONTEXT.task_id, CONTEXT.stage, CONTEXT.step)
    ctx = sealed_context(commits, route)
    box = ClaimBox(keys)
    for peer, out in zip(peers, outs, strict=False):
        box.add(reveal(peer, ctx, out))
    async with trio.open_nursery() as nursery:
        async def commit_later() -> None:
            for commit in commits:
                await trio.sleep(0.01)
                box.add_commit(commit)
        nursery.start_soon(commit_later)
        with trio.fail_after(5):
            outcome = await wait_majority(box, key, route, 1e-3, sealed=True)
    assert outcome.context.sealed == ctx.sealed and len(outcome.agreeing_replicas) == 3


def test_a_replica_that_sealed_early_reveals_again_under_the_full_seal(peers, keys):
    """X sealed over {X, Y} (Z's commitment came after its grace), Y and Z over all three: the
    groups never mix, so X also reveals under the full seal once Z's commitment is in, and the
    full group holds the majority."""
    outs = outputs()
    route, commits = commit_round(peers, outs)
    key = (CONTEXT.task_id, CONTEXT.stage, CONTEXT.step)
    box = ClaimBox(keys)
    for commit in commits:
        box.add_commit(commit)
    full = sealed_context(commits, route)
    early = reveal(peers[0], sealed_context_over(commits[:2], route), outs[0])
    y, z = reveal(peers[1], full, outs[1]), reveal(peers[2], full, outs[2] * 3)  # z cheats
    for claim in (early, y, z):
        box.add(claim)
    assert len(box.counted(key, route, sealed=True)) == 2  # {y, z}: no majority agrees
    assert try_vote(box.counted(key, route, sealed=True), keys, 1e-3) is None
    again = reveal(peers[0], full, outs[0])
    box.add(again)
    counted = box.counted(key, route, sealed=True)
    assert counted == [y, z, again]
    outcome = try_vote(counted, keys, 1e-3)
    assert sorted(outcome.agreeing_replicas) == sorted(route[:2])
