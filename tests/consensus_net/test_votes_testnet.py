"""Redundant stages over a multi-process testnet: wrong weights, random output, a skipped layer.

Nine peer processes serve a small random Llama in three stages, three replicas each; the third
replica of every stage cheats in one TEST-ONLY way (`serve.fault_injection`). The requester
generates greedily with m = 3: every stage votes on its input, fetches a majority tensor when
its own copy came from the cheater, and the requester votes on the last stage. The text equals
the local single-process result, every cheater is accused with fault evidence that the
requester verifies (stage votes reach it over gossip) and banned, and later routes avoid them.
"""

import pytest
import trio

from p2pinfer.inference import NoRouteError
from p2pinfer.models import LocalModel
from p2pinfer.models.sampling import Sampler

from .conftest import (
    PROMPT,
    consensus_state,
    fault_peer,
    start_testnet,
    wait_for_servers,
    wait_until_true,
    with_client,
)

FAULTS = ["wrong-weights", "random-output", "skip-layer"]
N = 6


@pytest.fixture(scope="module")
def testnet(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("votes")
    net, checkpoint = start_testnet(tmp, FAULTS)
    try:
        yield net, checkpoint, tmp
    finally:
        net.stop()


async def test_honest_majority_wins_and_every_cheater_is_banned(testnet):
    net, checkpoint, tmp = testnet
    reference = LocalModel.load(checkpoint).generate(PROMPT, N)
    cheaters = {fault_peer(net, s) for s in range(3)}
    async def body(client):
        await wait_for_servers(client, 9)
        c = client.inference.client(str(checkpoint))
        run = c.generate(PROMPT, N, Sampler())
        got = [t async for t in run]
        assert got == reference, run.outcome.verification()["faults"]
        assert all(len(s.replicas) == 3 for s in run.outcome.route)
        consensus = client.inference.consensus
        # stage votes arrive as gossip evidence
        await wait_until_true(lambda: cheaters <= consensus.banned(), 60, "cheaters banned",
                              lambda: consensus_state(client, run.outcome))
        report = run.outcome.verification()
        assert set(report["banned"]) == cheaters
        assert set(report["dissenters"]) == cheaters
        honest = {p for s in run.outcome.route for p in s.replicas} - cheaters
        assert not honest & set(report["dissenters"])
        assert consensus.counters["evidence_rejected"] == 0

        # banned network-wide for this requester's planner: m = 3 has no route any more,
        # m = 2 routes around the cheaters and still gives the reference text
        with pytest.raises(NoRouteError):
            c.plan()
        c2 = client.inference.client(str(checkpoint), _settings(c, redundancy=2))
        run2 = c2.generate(PROMPT, N, Sampler())
        got = [t async for t in run2]
        assert got == reference
        assert not cheaters & {p for s in run2.outcome.route for p in s.replicas}

    await with_client(net, tmp, "client-a", body)


async def test_a_requester_that_joins_later_ends_up_refusing_every_cheater(testnet):
    """Its own votes (or evidence already on the gossip topic) ban the cheaters; until all are
    banned an m = 3 request either has no route or returns the majority answer."""
    net, checkpoint, tmp = testnet
    reference = LocalModel.load(checkpoint).generate(PROMPT, 3)
    cheaters = {fault_peer(net, s) for s in range(3)}

    async def body(client):
        await wait_for_servers(client, 9)
        c = client.inference.client(str(checkpoint))
        consensus = client.inference.consensus
        with trio.fail_after(60):
            while not cheaters <= consensus.banned():
                try:
                    got = [t async for t in c.generate(PROMPT, 3, Sampler())]
                    assert got == reference
                except NoRouteError:
                    await trio.sleep(0.2)
        assert consensus.banned() == cheaters
        c2 = client.inference.client(str(checkpoint), _settings(c, redundancy=2))
        got = [t async for t in c2.generate(PROMPT, 3, Sampler())]
        assert got == reference

    await with_client(net, tmp, "client-b", body)


def _settings(client, **changes):
    from dataclasses import replace

    return replace(client.settings, **changes)



async def test_audits_with_one_replica_catch_the_wrong_weights_peer(testnet):
    import time

    from p2pinfer.consensus import AuditPolicy, ReputationBook

    net, checkpoint, tmp = testnet
    cheater = fault_peer(net, 0)
    honest = [net.peers[3 * s].peer_id for s in (1, 2)]
    async def body(client):
        await wait_for_servers(client, 9)
        consensus = client.inference.consensus
        # earlier tests' evidence may reach this node as gossip; start from a clean slate so
        # that the ban checked below comes from this node's own audit
        await trio.sleep(1.0)
        consensus.book = ReputationBook(time.monotonic)
        consensus.audit_policy = AuditPolicy(base_rate=1.0, min_rate=1.0, max_rate=1.0)
        base = client.inference.client(str(checkpoint))
        c = client.inference.client(str(checkpoint), _settings(
            base, redundancy=1, allow=[cheater, *honest]))
        run = c.generate(PROMPT, 2, Sampler())
        _ = [t async for t in run]
        report = run.outcome.verification()
        assert [s["audits"] for s in report["stages"]] == [1, 1, 1]
        assert [s["audit_failures"] for s in report["stages"]] == [1, 0, 0]
        assert cheater in consensus.banned() and cheater in report["evidence"]
        assert not set(honest) & consensus.banned()

    await with_client(net, tmp, "client-c", body)
