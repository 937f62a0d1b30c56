"""A redundant route absorbs faults of a minority of a stage's replicas and fails at once when
the faults leave a stage too few replicas for a majority (instead of waiting out the step)."""

from __future__ import annotations

import pytest
import trio

from p2pinfer.identity import NodeIdentity
from p2pinfer.inference.client import RequestOutcome, RequestSettings, RouteSession, StageFailure
from p2pinfer.inference.task import StagePlan, Task


def session(route: list[StagePlan]) -> RouteSession:
    task = Task.create(NodeIdentity.generate(), network_id="n", model_id="m",
                       requester_addrs=["/ip4/127.0.0.1/tcp/1"], route=route)
    return RouteSession(None, task, RequestSettings(), None, RequestOutcome("general"))


def pending(s: RouteSession) -> list[object]:
    items = []
    while True:
        try:
            items.append(s.result_recv.receive_nowait())
        except trio.WouldBlock:
            return items


async def test_one_faulty_replica_of_three_is_absorbed_the_second_fails_the_route():
    s = session([StagePlan(1, 4, ("a", "b", "c")), StagePlan(4, 7, ("d", "e", "f"))])
    s.fail(0, "a", "stage 0 closed its hop")
    s.fail(0, "a", "again, the same replica")
    s.fail(1, "d", "a replica of another stage")
    assert pending(s) == []
    s.fail(0, "b", "unattested")
    [failure] = pending(s)
    assert isinstance(failure, StageFailure)
    assert (failure.stage, failure.peer_id) == (0, "b")
    assert "lost its majority" in str(failure) and "unattested" in str(failure)


@pytest.mark.parametrize("stage, peer", [(None, None), (0, "not-in-route"), (2, "a"),
                                         (0, None)])
async def test_faults_naming_no_replica_of_a_stage_do_not_count(stage, peer):
    s = session([StagePlan(1, 4, ("a", "b", "c")), StagePlan(4, 7, ("d",))])
    for _ in range(3):
        s.fail(stage, peer, "the route's result hop closed")
    assert pending(s) == []


async def test_a_single_replica_stage_in_a_redundant_route_fails_on_its_first_fault():
    s = session([StagePlan(1, 4, ("a", "b", "c")), StagePlan(4, 7, ("d",))])
    s.fail(1, "d", "downstream-lost")
    [failure] = pending(s)
    assert failure.peer_id == "d"
