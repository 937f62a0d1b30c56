"""Where a peer with `serve.layers = "auto"` places itself, and when it moves.

A requester needs the middle layers [lo, hi) of a model (the node's k_head and k_tail settings
say which), covered by stages whose replicas serve identical spans. An auto peer first looks at
the peer table, then takes the window that closes most of what nobody serves; when nothing is
missing it joins the stage with the fewest replicas, so that it adds a vote rather than a span no
other peer shares. Peers that start together see nothing and pick the same window; they settle
afterwards (`should_move`): while some layer is uncovered, a peer whose layers others also cover,
and which is not the lowest peer id among those overlapping it, moves to the gap. The lowest id
never moves, so each round keeps one copy of every span and sends the rest to the holes, as
Petals' servers rebalance blocks.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

Span = tuple[int, int]


def coverage(spans: Iterable[Span], lo: int, hi: int) -> list[int]:
    """How many of `spans` serve each layer of [lo, hi)."""
    cover = [0] * max(0, hi - lo)
    for s, e in spans:
        for i in range(max(s, lo), min(e, hi)):
            cover[i - lo] += 1
    return cover


def choose_span(others: Sequence[Span], lo: int, hi: int, length: int = 0) -> Span:
    """The span an auto peer takes in [lo, hi) given what `others` serve. `length` 0 means as
    long as the largest gap (the whole range when nothing is served)."""
    if hi <= lo:
        raise ValueError(f"no layers to serve in [{lo}, {hi})")
    cover = coverage(others, lo, hi)
    gaps = _gaps(cover, lo)
    if gaps:
        if length <= 0:
            return max(gaps, key=lambda g: (g[1] - g[0], -g[0]))
        return _best_window(cover, lo, hi, min(length, hi - lo))
    # nothing missing: add a replica to the stage with the fewest (of the length asked for)
    counts: dict[Span, int] = {}
    for s, e in others:
        if lo <= s < e <= hi and (length <= 0 or e - s == length):
            counts[(s, e)] = counts.get((s, e), 0) + 1
    if counts:
        return min(counts, key=lambda sp: (counts[sp], sp))
    return _best_window(cover, lo, hi, min(length or hi - lo, hi - lo))


def should_move(mine: Span, me: str, others: Sequence[tuple[str, Span]], lo: int,
                hi: int) -> bool:
    """Whether the peer `me` serving `mine` should move: some layer of [lo, hi) is uncovered,
    every layer of `mine` is also served by another peer, and a peer with a lower id overlaps
    `mine` (so of several peers on the same layers, the lowest-id one stays)."""
    spans = [sp for _, sp in others]
    if 0 not in coverage([*spans, mine], lo, hi):
        return False
    if 0 in coverage(spans, max(lo, mine[0]), min(hi, mine[1])):
        return False
    return any(pid < me and s < mine[1] and mine[0] < e for pid, (s, e) in others)


def _gaps(cover: list[int], lo: int) -> list[Span]:
    gaps: list[Span] = []
    start = None
    for i, c in enumerate([*cover, 1]):
        if c == 0 and start is None:
            start = i
        elif c != 0 and start is not None:
            gaps.append((lo + start, lo + i))
            start = None
    return gaps


def _best_window(cover: list[int], lo: int, hi: int, length: int) -> Span:
    """The window of `length` layers covering most uncovered layers, then the least covered
    in total, then the earliest."""
    best = min(range(hi - lo - length + 1),
               key=lambda a: (-cover[a:a + length].count(0), sum(cover[a:a + length]), a))
    return lo + best, lo + best + length
