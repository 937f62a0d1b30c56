"""Redundant stages over a multi-process testnet: a small perturbation, a stalled replica and a
replica that copies instead of computing.

Stage 0's third replica adds noise of 20% RMS (small, but above every calibrated tolerance);
stage 1's third replica stalls on every step, so the stage-2 replica it feeds must fetch its
input from a majority replica instead of waiting; stage 2's third replica tries to copy a
fellow replica's answer (the fetch protocol refuses it: only downstream peers may fetch) and
passes its input on unchanged. The majority still wins every time, the cheaters who answered
are banned on fault evidence, and the staller loses reputation for every missed vote.
"""

import pytest

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

FAULTS = ["perturb", "stall", "copy"]
N = 5


@pytest.fixture(scope="module")
def testnet(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stall")
    net, checkpoint = start_testnet(tmp, FAULTS)
    try:
        yield net, checkpoint, tmp
    finally:
        net.stop()


async def test_majority_wins_past_a_perturbing_a_stalling_and_a_copying_replica(testnet):
    net, checkpoint, tmp = testnet
    reference = LocalModel.load(checkpoint).generate(PROMPT, N)
    perturber, staller, copier = (fault_peer(net, s) for s in range(3))
    async def body(client):
        await wait_for_servers(client, 9)
        c = client.inference.client(str(checkpoint))
        run = c.generate(PROMPT, N, Sampler())
        got = [t async for t in run]
        assert got == reference
        consensus = client.inference.consensus
        def state():
            return consensus_state(client, run.outcome)

        await wait_until_true(lambda: {perturber, copier} <= consensus.banned(), 90,
                              "perturber and copier banned", state)
        # a missing claim is declared after the tally's grace
        await wait_until_true(
            lambda: staller in run.outcome.verification()["stages"][1]["missing"], 60,
            "staller reported missing", state)
        report = run.outcome.verification()
        assert staller not in consensus.banned() or consensus.book.score(staller) < 0.5
        honest = {p for s in run.outcome.route for p in s.replicas} - {perturber, staller, copier}
        assert not honest & set(report["dissenters"])
        assert not honest & consensus.banned()

        # the next request routes around the banned cheaters (m = 2 of the honest replicas)
        from dataclasses import replace

        c2 = client.inference.client(str(checkpoint),
                                     replace(c.settings, redundancy=2, deny=[staller]))
        run2 = c2.generate(PROMPT, N, Sampler())
        got = [t async for t in run2]
        assert got == reference
        assert not {perturber, copier} & {p for s in run2.outcome.route for p in s.replicas}

    await with_client(net, tmp, "client", body)
