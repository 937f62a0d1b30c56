"""Routing over an in-process loopback network: a stage that stops answering is replaced after
a timeout adapted to its measured step times, and concurrent requests spread over the replicas
of a span.
"""

import re
import time

import pytest
import trio

from p2pinfer.inference.testing import STALL_LATE_STEP
from p2pinfer.models import LocalModel
from p2pinfer.models.sampling import Sampler

from .conftest import network, save_checkpoint

PROMPT = [3, 17, 42, 8, 64, 5]
N = 12


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_checkpoint("llama", tmp_path_factory.mktemp("route") / "llama", seed=3)


async def test_a_stalling_stage_is_replaced_well_under_the_configured_step_timeout(
        tmp_path, checkpoint):
    reference = LocalModel.load(checkpoint).generate(PROMPT, N)
    # one peer serves all middle layers (the cheapest route: one hop) and stops answering
    # from step STALL_LATE_STEP on; two honest peers split the same layers
    spans = [[1, 5], [1, 3], [3, 5]]
    serve = [{"fault_injection": "stall-late"}, {}, {}]
    async with network(tmp_path, str(checkpoint), spans, serve=serve,
                       step_timeout_s=30.0, k_head=1, k_tail=1) as (client, stages):
        staller = stages[0].peer_id
        # the honest peers look far away (as measured RTTs, smoothed by later pings), so
        # the first route is the staller's one hop whatever the measured throughputs
        for honest in stages[1:]:
            client.table.get(honest.peer_id).rtt_ms = 300.0
        c = client.inference.client(str(checkpoint))
        assert [s.replicas for s in c.plan()] == [(staller,)]
        t0 = time.monotonic()
        run = c.generate(PROMPT, N, Sampler())
        got = [t async for t in run]
        elapsed = time.monotonic() - t0
        outcome = run.outcome
        assert got == reference
        assert outcome.replans == 1
        assert staller not in {p for s in outcome.route for p in s.replicas}
        # the stalled step was given up on after max(floor, factor x typical step time):
        # seconds, not the configured 30 s
        failure = re.fullmatch(r"step (\d+) got no answer in ([\d.]+) s", outcome.failures[0])
        assert failure is not None, outcome.failures
        assert int(failure[1]) == STALL_LATE_STEP
        assert float(failure[2]) <= 10.0
        assert elapsed < 20.0, outcome.timings()
        assert staller in c.backoff.excluded()


async def test_six_concurrent_generations_use_all_three_replicas_of_a_span(
        tmp_path, checkpoint):
    reference = LocalModel.load(checkpoint).generate(PROMPT, 4)
    async with network(tmp_path, str(checkpoint), [[1, 5]] * 3,
                       k_head=1, k_tail=1, step_timeout_s=60.0) as (client, stages):
        c = client.inference.client(str(checkpoint))
        routes: list[str] = []
        texts: list[list[int]] = []
        failures: list[str] = []

        async def one() -> None:
            run = c.generate(PROMPT, 4, Sampler())
            texts.append([t async for t in run])
            failures.extend(run.outcome.failures)
            routes.append(run.outcome.route[0].replicas[0])

        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                for _ in range(6):
                    nursery.start_soon(one)
        assert texts == [reference] * 6
        used = {pid: routes.count(pid) for pid in set(routes)}
        assert set(used) == {s.peer_id for s in stages}, (used, failures)
        assert max(used.values()) <= 3, (used, failures)
        # every placed session was released when its request ended
        assert not c.placed
