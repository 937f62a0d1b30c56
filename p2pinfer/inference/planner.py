"""Route planning on the requester: which peers run which layers.

The middle layers [start, end) are covered by a chain of stages. Every span boundary any
candidate advertises is a graph node; a candidate serving [s, e) gives edges a -> b for every pair
of boundaries with s <= a < b <= e. An edge's cost is the estimated latency of one request on it:
the peer's RTT plus its compute time for b - a layers, slowed by its advertised load, multiplied
by one plus the number of sessions this requester already placed on it (so concurrent requests
spread over the replicas of a span) and weighted by its trust level. The cheapest chain is a
shortest path (as Petals routes its clients). With redundancy m an edge exists only where m
distinct eligible peers cover it, and costs what the m-th best of them does, since the stage
waits for its replicas. Faster peers therefore end up on longer spans.

With `float32_majority` (general mode, m > 1, the default), every stage's replicas must be more
than half float32: a vote whose majority computes in bfloat16 runs at the bfloat16 tolerance,
inside which int8-quantised weights and noise at 1% of RMS cannot be told from honest rounding
(README, "Precision classes"), so such a stage could be outvoted by a cheaper model unseen. A
float32 majority holds every replica to the float32 tolerance of the float32 claims.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass, field

from p2pinfer.errors import P2PInferError
from p2pinfer.inference.task import StagePlan

#: cost multiplier per TEE level: attested peers are preferred when the policy asks for it
TEE_WEIGHT = {"gpu-tee": 1.0, "cpu-tee": 1.15, "simulated": 1.3, "none": 1.3}
DEFAULT_MS_PER_LAYER = 5.0


class NoRouteError(P2PInferError):
    """No chain of eligible peers covers the requested layers."""


@dataclass(frozen=True)
class Candidate:
    """What the planner needs to know about one peer, from its advert and measurements."""

    peer_id: str
    spans: tuple[tuple[int, int], ...]
    #: measured layer-forwards per second for one token (from the advert); 0 = unknown
    throughput: float = 0.0
    load: float = 0.0
    rtt_ms: float = 5.0
    tee_level: str = "none"
    operator: str = ""
    #: route sessions the planning requester itself has open on this peer
    sessions: int = 0
    #: the precision class its advert states ("float32" or "bfloat16"; none stated counts as
    #: bfloat16)
    precision: str = "float32"

    def ms_per_layer(self) -> float:
        base = 1000.0 / self.throughput if self.throughput > 0 else DEFAULT_MS_PER_LAYER
        return base * (1.0 + max(0.0, min(self.load, 10.0)))

    def cost(self, layers: int, prefer_tee: bool) -> float:
        c = self.rtt_ms + layers * self.ms_per_layer()
        # each session we already placed there shares the peer's compute and its link
        c *= 1.0 + max(0, min(self.sessions, 64))
        return c * (TEE_WEIGHT.get(self.tee_level, 1.3) if prefer_tee else 1.0)

    def covers(self, a: int, b: int) -> bool:
        return any(s <= a and b <= e for s, e in self.spans)


@dataclass
class PlanRequest:
    start: int
    end: int
    redundancy: int = 1
    allow: set[str] | None = None
    deny: set[str] = field(default_factory=set)
    #: peers currently banned or backing off (by the requester's own failure record)
    exclude: set[str] = field(default_factory=set)
    #: minimum TEE level ("none", "simulated", "cpu-tee", "gpu-tee")
    min_tee: str = "none"
    prefer_tee: bool = True
    #: with redundancy > 1: more than half of every stage's replicas compute in float32
    float32_majority: bool = False


TEE_ORDER = ("none", "simulated", "cpu-tee", "gpu-tee")


def _eligible(c: Candidate, req: PlanRequest) -> bool:
    if c.peer_id in req.deny or c.peer_id in req.exclude:
        return False
    if req.allow is not None and c.peer_id not in req.allow:
        return False
    level = c.tee_level if c.tee_level in TEE_ORDER else "none"
    return TEE_ORDER.index(level) >= TEE_ORDER.index(req.min_tee)


def plan_route(candidates: Iterable[Candidate], req: PlanRequest) -> list[StagePlan]:
    """The cheapest chain of stages covering [req.start, req.end), each with m replicas."""
    if req.start >= req.end:
        return []
    if req.redundancy < 1:
        raise ValueError("redundancy must be at least 1")
    pool = [c for c in candidates if _eligible(c, req)]
    bounds = {req.start, req.end}
    for c in pool:
        for s, e in c.spans:
            bounds.update(x for x in (s, e) if req.start < x < req.end)
    points = sorted(bounds)
    index = {p: i for i, p in enumerate(points)}

    # at most this many replicas of a stage may compute in a class other than float32
    others_allowed = req.redundancy - (req.redundancy // 2 + 1) \
        if req.float32_majority and req.redundancy > 1 else req.redundancy

    def edge(a: int, b: int) -> tuple[float, tuple[str, ...]] | None:
        covering = [c for c in pool if c.covers(a, b)]
        # distinct operators where adverts name one: replicas must not share an operator
        chosen: list[Candidate] = []
        operators: set[str] = set()
        others = 0
        for c in sorted(covering, key=lambda c: (c.cost(b - a, req.prefer_tee), c.peer_id)):
            if c.operator and c.operator in operators:
                continue
            if c.precision != "float32":
                if others == others_allowed:
                    continue
                others += 1
            chosen.append(c)
            if c.operator:
                operators.add(c.operator)
            if len(chosen) == req.redundancy:
                break
        if len(chosen) < req.redundancy:
            return None
        return chosen[-1].cost(b - a, req.prefer_tee), tuple(c.peer_id for c in chosen)

    # Dijkstra from start to end over boundary points
    dist = {req.start: 0.0}
    prev: dict[int, tuple[int, tuple[str, ...]]] = {}
    heap = [(0.0, req.start)]
    done: set[int] = set()
    while heap:
        d, a = heapq.heappop(heap)
        if a in done:
            continue
        done.add(a)
        if a == req.end:
            break
        for b in points[index[a] + 1:]:
            e = edge(a, b)
            if e is None:
                continue
            cost, replicas = e
            if d + cost < dist.get(b, float("inf")):
                dist[b] = d + cost
                prev[b] = (a, replicas)
                heapq.heappush(heap, (d + cost, b))
    if req.end not in prev:
        covered = sorted({(s, e) for c in pool for s, e in c.spans})
        low = sum(1 for c in pool if c.precision != "float32")
        majority = (f", more than half of them computing in float32 ({low} of the eligible "
                    "peers compute in bfloat16; a request may allow bfloat16 majorities with "
                    "bfloat16_majority, at weaker integrity)"
                    if req.float32_majority and req.redundancy > 1 and low else "")
        raise NoRouteError(
            f"no route covers layers [{req.start}, {req.end}) with {req.redundancy} "
            f"replica(s) per stage{majority} among {len(pool)} eligible peer(s) (spans "
            f"served: {covered})"
        )
    stages: list[StagePlan] = []
    b = req.end
    while b != req.start:
        a, replicas = prev[b]
        stages.append(StagePlan(a, b, replicas))
        b = a
    return stages[::-1]


def least_covered_span(
    served: Iterable[tuple[int, int]], num_layers: int, span_len: int
) -> tuple[int, int]:
    """For `serve.layers = "auto"`: the window of `span_len` layers with the least coverage
    (ties go to the earliest), as a Petals server picks its blocks."""
    span_len = max(1, min(span_len, num_layers))
    cover = [0] * num_layers
    for s, e in served:
        for i in range(max(0, s), min(e, num_layers)):
            cover[i] += 1
    best = None
    for a in range(num_layers - span_len + 1):
        window = cover[a:a + span_len]
        key = (min(window), sum(window), a)
        if best is None or key < best[0]:
            best = (key, a)
    assert best is not None
    a = best[1]
    return a, a + span_len
