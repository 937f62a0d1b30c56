"""Commit before the seed (protocols/votes.md): replicas commit to their outputs, the seed
derives from all m commitments, claims revealed under it count only if their replica
committed, and a replica that reveals a fingerprint other than its committed output's is
caught with evidence anyone can check."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from p2pinfer.consensus import fingerprint, sign_claim
from p2pinfer.consensus.commit import (
    build_reveal_mismatch,
    check_reveal,
    check_revealed_tensor,
    decode_commit,
    decode_reveal_mismatch,
    output_digest,
    seal,
    sealed_context,
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
