"""Honest replicas on mixed settings are never flagged: a multi-process testnet where every
stage's three replicas run with different torch thread counts (1, 2, 3) serves a run of short
requests with m = 3 (each step is voted on by the two downstream stages' three replicas and by
the requester: several hundred votes in all); no vote ever names a dissenter, nobody is
banned, nobody loses reputation, and every answer equals the local single-process result."""

import pytest

from p2pinfer.models import LocalModel
from p2pinfer.models.sampling import Sampler

from .conftest import PROMPT, start_testnet, wait_for_servers, with_client

REQUESTS = 10
TOKENS = 3


@pytest.fixture(scope="module")
def testnet(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("honest")
    net, checkpoint = start_testnet(tmp, ["", "", ""], threads=[1, 2, 3])
    try:
        yield net, checkpoint, tmp
    finally:
        net.stop()


async def test_honest_replicas_on_mixed_thread_counts_are_never_flagged(testnet):
    net, checkpoint, tmp = testnet
    model = LocalModel.load(checkpoint)
    prompts = [PROMPT[: 2 + i % 5] + [i % 97] for i in range(REQUESTS)]
    async def body(client):
        await wait_for_servers(client, 9)
        c = client.inference.client(str(checkpoint))
        consensus = client.inference.consensus
        heard = 0
        for prompt in prompts:
            got = [t async for t in c.generate(prompt, TOKENS, Sampler())]
            assert got == model.generate(prompt, TOKENS)
            report = c.last_report.to_dict()
            assert report["dissenters"] == [] and report["banned"] == []
            heard += sum(s["votes"] for s in report["stages"])
        assert consensus.counters["votes"] == REQUESTS * TOKENS
        assert consensus.banned() == set()
        assert consensus.counters["evidence_accepted"] == 0
        assert consensus.counters["dissents"] == 0
        peers = {p for s in c.last_route for p in s.replicas}
        assert all(consensus.book.score(p) >= 0.5 for p in peers)
        assert heard > 0

    await with_client(net, tmp, "client", body)
