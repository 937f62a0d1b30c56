"""A replica serving int8-quantised weights is caught and banned on a route with a bfloat16
replica. Nine peer processes serve the small random Llama in three stages of three replicas;
stage 0's third replica computes in bfloat16 (so the requester signs the bfloat16 tolerance
into the task), stage 1's third replica re-quantised its weights to int8 (TEST-ONLY
`serve.fault_injection = "int8-weights"`) and advertises float32 like its two honest fellows.
Before precision classes, one bfloat16 replica loosened every comparison of the route to 1e-1
and int8 weights passed; now the three float32 replicas of stage 1 compare at 1e-3, the int8
replica dissents, its fault is proven at the float32 evidence tolerance, and it is banned."""

import pytest

from p2pinfer.consensus import TOLERANCE_BFLOAT16
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

N = 6


@pytest.fixture(scope="module")
def testnet(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("int8")
    dtypes = ["float32"] * 9
    dtypes[2] = "bfloat16"  # stage 0, third replica
    net, checkpoint = start_testnet(tmp, ["", "int8-weights", ""], peer_dtypes=dtypes)
    try:
        yield net, checkpoint, tmp
    finally:
        net.stop()


async def test_an_int8_replica_is_banned_on_a_route_with_a_bfloat16_replica(testnet):
    net, checkpoint, tmp = testnet
    reference = LocalModel.load(checkpoint).generate(PROMPT, N)
    cheater = fault_peer(net, 1)
    bf16_peer = fault_peer(net, 0)

    async def body(client):
        await wait_for_servers(client, 9)
        c = client.inference.client(str(checkpoint))
        route = c.plan()
        assert bf16_peer in route[0].replicas and cheater in route[1].replicas
        assert c.route_tolerance(route) == TOLERANCE_BFLOAT16
        run = c.generate(PROMPT, N, Sampler())
        got = [t async for t in run]
        consensus = client.inference.consensus
        await wait_until_true(lambda: cheater in consensus.banned(), 60, "int8 replica banned",
                              lambda: consensus_state(client, run.outcome))
        report = run.outcome.verification()
        assert report["banned"] == [cheater], report
        assert cheater in report["dissenters"] and bf16_peer not in report["dissenters"]
        assert consensus.banned() == {cheater}
        assert consensus.counters["evidence_rejected"] == 0
        # the answer is the float32 majority's: the requester took a float32 answer
        assert got == reference

    await with_client(net, tmp, "client-int8", body)
