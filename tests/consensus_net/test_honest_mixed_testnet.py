"""Honest replicas on mixed settings are never flagged: a multi-process testnet where every
stage's three replicas run with different torch thread counts (1, 2, 3), and the third in
bfloat16, serves a run of short requests with m = 3 (each step is voted on by the two
downstream stages' three replicas and by the requester: hundreds of votes in all). No vote ever
names a dissenter, nobody is banned, nobody loses reputation, the task tolerance is the
bfloat16 one because the route's adverts say so, and the answers are those of the float32
model (a bfloat16 replica's activation may be the one forwarded, so a near-tie token may
differ: at most one token in ten may)."""

import os
import time

import pytest

from p2pinfer.consensus import TOLERANCE_BFLOAT16
from p2pinfer.inference.planner import NoRouteError
from p2pinfer.models import LocalModel
from p2pinfer.models.sampling import Sampler

from .conftest import (
    PROMPT,
    consensus_state,
    start_testnet,
    wait_for_servers,
    wait_until_true,
    with_client,
)

#: 100 in the suite; set P2PINFER_HONEST_REQUESTS for a longer run
REQUESTS = int(os.environ.get("P2PINFER_HONEST_REQUESTS", "100"))
TOKENS = 2


@pytest.fixture(scope="module")
def testnet(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("honest")
    net, checkpoint = start_testnet(tmp, ["", "", ""], threads=[1, 2, 3],
                                    dtypes=["float32", "float32", "bfloat16"])
    try:
        yield net, checkpoint, tmp
    finally:
        net.stop()


async def test_honest_replicas_on_mixed_threads_and_dtypes_are_never_flagged(testnet):
    net, checkpoint, tmp = testnet
    model = LocalModel.load(checkpoint)
    prompts = [PROMPT[: 2 + i % 5] + [i % 97] for i in range(REQUESTS)]
    references = [model.generate(p, TOKENS) for p in prompts]

    async def body(client):
        await wait_for_servers(client, 9)
        c = client.inference.client(str(checkpoint))
        consensus = client.inference.consensus
        assert c.route_tolerance(c.plan()) == TOLERANCE_BFLOAT16
        reports = []
        outcome = None
        differing = 0
        t0 = time.monotonic()
        for i, (prompt, reference) in enumerate(zip(prompts, references, strict=True)):
            try:
                run = c.generate(prompt, TOKENS, Sampler())
                got = [t async for t in run]
                outcome = run.outcome
            except NoRouteError as e:  # say which peer dropped out and why
                raise AssertionError(
                    f"request {i}: {e}; backed off: {c.backoff.failures}; banned: "
                    f"{sorted(consensus.banned())}; peers with spans: "
                    f"{len([p for p in client.peers() if p.spans])}; "
                    f"state: {consensus_state(client, outcome)}") from None
            differing += sum(a != b for a, b in zip(got, reference, strict=True))
            report = outcome.verification()
            assert report["dissenters"] == [] and report["banned"] == [], report
            reports.append(outcome.report)  # tallies heard later are added to it in place
        print(f"{REQUESTS} requests in {time.monotonic() - t0:.1f} s; "
              f"{differing} of {REQUESTS * TOKENS} tokens differ from float32")
        assert differing <= REQUESTS * TOKENS // 10

        def heard() -> int:
            return sum(s["votes"] for r in reports for s in r.to_dict()["stages"])

        # the stages' tallies arrive over gossip after each step's late grace
        await wait_until_true(lambda: heard() >= REQUESTS, 60, "tallies heard",
                              lambda: consensus_state(client, outcome))
        for r in reports:
            assert r.to_dict()["dissenters"] == [] and r.to_dict()["banned"] == []
        assert consensus.counters["votes"] == REQUESTS * TOKENS
        assert consensus.banned() == set()
        assert consensus.counters["evidence_accepted"] == 0
        assert consensus.counters["dissents"] == 0
        peers = {p for s in outcome.route for p in s.replicas}
        assert all(consensus.book.score(p) >= 0.5 for p in peers)

    await with_client(net, tmp, "client", body)
