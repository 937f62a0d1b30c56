import itertools

import pytest

from p2pinfer.inference.planner import (
    Candidate,
    NoRouteError,
    PlanRequest,
    least_covered_span,
    plan_route,
)


def c(pid, *spans, tp=100.0, rtt=2.0, load=0.0, tee="none", op=""):
    return Candidate(pid, tuple(spans), throughput=tp, rtt_ms=rtt, load=load, tee_level=tee,
                     operator=op)


def covers(route, start, end):
    assert route[0].start == start and route[-1].end == end
    assert all(a.end == b.start for a, b in itertools.pairwise(route))


def test_chain_covers_the_middle_layers():
    route = plan_route([c("a", (0, 4)), c("b", (4, 8)), c("x", (8, 12))], PlanRequest(2, 10))
    covers(route, 2, 10)
    assert [s.replicas for s in route] == [("a",), ("b",), ("x",)]


def test_heavier_span_goes_to_the_stronger_peer():
    slow = c("slow", (0, 12), tp=50)
    fast = c("fast", (4, 12), tp=1000)
    route = plan_route([slow, fast], PlanRequest(0, 12))
    assert [(s.start, s.end, s.replicas[0]) for s in route] == [(0, 4, "slow"), (4, 12, "fast")]


def test_one_peer_serving_everything_is_one_stage_when_it_is_cheapest():
    route = plan_route([c("a", (0, 12)), c("b", (0, 6), tp=100, rtt=50)], PlanRequest(0, 12))
    assert len(route) == 1 and route[0].replicas == ("a",)


def test_redundancy_picks_m_distinct_peers_per_stage():
    peers = [c(f"p{i}", (0, 6)) for i in range(3)] + [c(f"q{i}", (6, 12)) for i in range(3)]
    route = plan_route(peers, PlanRequest(0, 12, redundancy=3))
    assert [len(set(s.replicas)) for s in route] == [3, 3]


def test_replicas_of_a_stage_come_from_distinct_operators():
    peers = [c("a1", (0, 4), op="acme"), c("a2", (0, 4), op="acme"), c("b", (0, 4), op="bob"),
             c("z", (0, 4), tp=1, op="zed")]
    route = plan_route(peers, PlanRequest(0, 4, redundancy=3))
    assert set(route[0].replicas) == {"a1", "b", "z"} or set(route[0].replicas) == {"a2", "b", "z"}


def test_not_enough_replicas_is_a_clear_error():
    with pytest.raises(NoRouteError, match="2 replica"):
        plan_route([c("a", (0, 4))], PlanRequest(0, 4, redundancy=2))


def test_gap_in_coverage_is_a_clear_error():
    with pytest.raises(NoRouteError, match=r"\[0, 8\)"):
        plan_route([c("a", (0, 3)), c("b", (4, 8))], PlanRequest(0, 8))


def test_deny_allow_and_exclude_lists_are_honoured():
    peers = [c("a", (0, 8), tp=1000), c("b", (0, 8))]
    assert plan_route(peers, PlanRequest(0, 8, deny={"a"}))[0].replicas == ("b",)
    assert plan_route(peers, PlanRequest(0, 8, exclude={"a"}))[0].replicas == ("b",)
    assert plan_route(peers, PlanRequest(0, 8, allow={"b"}))[0].replicas == ("b",)


def test_tee_peers_are_preferred_and_minimum_level_enforced():
    plain = c("plain", (0, 8), tp=110)
    tee = c("tee", (0, 8), tp=100, tee="gpu-tee")
    assert plan_route([plain, tee], PlanRequest(0, 8))[0].replicas == ("tee",)
    with pytest.raises(NoRouteError):
        plan_route([plain], PlanRequest(0, 8, min_tee="cpu-tee"))


def test_loaded_peer_is_avoided():
    route = plan_route([c("busy", (0, 8), load=3.0), c("idle", (0, 8))], PlanRequest(0, 8))
    assert route[0].replicas == ("idle",)


def test_sessions_the_requester_placed_spread_the_next_ones_over_the_replicas():
    placed = {"a": 0, "b": 0, "c": 0}
    for _ in range(6):
        pool = [Candidate(p, ((0, 8),), throughput=100.0, rtt_ms=2.0, sessions=n)
                for p, n in placed.items()]
        placed[plan_route(pool, PlanRequest(0, 8))[0].replicas[0]] += 1
    assert placed == {"a": 2, "b": 2, "c": 2}


def test_least_covered_span_picks_the_gap():
    assert least_covered_span([(0, 4), (4, 8)], 12, 4) == (8, 12)
    assert least_covered_span([], 12, 4) == (0, 4)
    assert least_covered_span([(0, 12)], 6, 20) == (0, 6)


def prec(pid, span, precision, tp=100.0):
    return Candidate(pid, (span,), throughput=tp, rtt_ms=2.0, precision=precision)


def test_redundant_stages_keep_a_float32_majority_even_when_bfloat16_peers_are_faster():
    # the three fastest peers compute in bfloat16; a float32 majority takes two slower float32
    peers = [prec(f"bf{i}", (0, 4), "bfloat16", tp=1000.0) for i in range(3)] + \
        [prec(f"f{i}", (0, 4), "float32", tp=10.0 + i) for i in range(3)]
    req = PlanRequest(0, 4, redundancy=3, float32_majority=True)
    [stage] = plan_route(peers, req)
    # the fastest bfloat16 peer and the two fastest float32 ones
    assert set(stage.replicas) == {"bf0", "f2", "f1"}
    # without the policy the planner takes the fastest three
    assert set(plan_route(peers, PlanRequest(0, 4, redundancy=3))[0].replicas) == \
        {"bf0", "bf1", "bf2"}


@pytest.mark.parametrize("m, float32_needed", [(2, 2), (3, 2), (4, 3), (5, 3)])
def test_a_stage_without_a_float32_majority_is_never_built(m, float32_needed):
    have = float32_needed - 1
    peers = [prec(f"f{i}", (0, 4), "float32") for i in range(have)] + \
        [prec(f"bf{i}", (0, 4), "bfloat16") for i in range(m)]
    with pytest.raises(NoRouteError, match="more than half of them computing in float32"):
        plan_route(peers, PlanRequest(0, 4, redundancy=m, float32_majority=True))
    peers.append(prec("f-last", (0, 4), "float32", tp=1.0))
    [stage] = plan_route(peers, PlanRequest(0, 4, redundancy=m, float32_majority=True))
    assert sum(1 for p in stage.replicas if p.startswith("f")) == float32_needed


def test_the_float32_majority_does_not_constrain_single_replica_routes():
    [stage] = plan_route([prec("bf", (0, 4), "bfloat16")],
                         PlanRequest(0, 4, redundancy=1, float32_majority=True))
    assert stage.replicas == ("bf",)
