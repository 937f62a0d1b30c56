"""Which peers answered this node lately: dead peers leave routes at once.

A failed dial, a stream that could not be opened or a missed ping marks a peer unreachable
at once; only a direct answer from the peer itself (a dial, an opened stream, a pong) marks it
reachable again. Adverts relayed by gossip say nothing about whether their author is still
alive, so they never clear the mark: the planner leaves an unreachable peer out of new routes
although its advert is still in the peer table. A peer marked unreachable is probed again
after `retry_base_s`, doubling up to `retry_max_s`, and at once when it issues an advert newer
than its last failure (a restarted peer announces itself), so one that comes back is usable
again.

It also remembers when each peer was last heard from (any frame it sent on any stream), so a
probe that gets no pong in time can tell a connection that is only slow (frames kept arriving
meanwhile: keep it) from a stale one (nothing at all: close it and dial afresh).
Pure data structure: no I/O (the node runs the probes).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

#: peers whose last frame time is remembered (least recently heard forgotten first)
MAX_HEARD_PEERS = 4096


@dataclass
class DownPeer:
    """Why and since when a peer is unreachable, and when to probe it again."""

    reason: str
    since: float
    failures: int
    next_probe: float
    #: Unix seconds of the last failure (an advert issued after it is worth a probe)
    failed_at: float = 0.0


class Reachability:
    """Unreachable peers of one node, with counters for `status`."""

    def __init__(self, *, retry_base_s: float = 1.0, retry_max_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.retry_base_s, self.retry_max_s, self.clock = retry_base_s, retry_max_s, clock
        self.wall = wall
        self._down: dict[str, DownPeer] = {}
        self._heard: dict[str, float] = {}
        self.counters: dict[str, int] = {"marked_unreachable": 0, "recovered": 0}

    def failed(self, peer_id: str, reason: str) -> None:
        """The peer did not answer (dial, stream or ping): unreachable from now on."""
        now = self.clock()
        row = self._down.get(peer_id)
        if row is None:
            self.counters["marked_unreachable"] += 1
            row = DownPeer(reason[:200], now, 0, now)
            self._down[peer_id] = row
        row.failures += 1
        row.reason = reason[:200]
        row.failed_at = self.wall()
        row.next_probe = now + min(self.retry_max_s,
                                   self.retry_base_s * 2 ** (row.failures - 1))

    def answered(self, peer_id: str) -> None:
        """The peer itself answered: reachable again."""
        if self._down.pop(peer_id, None) is not None:
            self.counters["recovered"] += 1

    def heard(self, peer_id: str) -> None:
        """A frame arrived from the peer (called for every frame read: keep it cheap)."""
        heard = self._heard
        if peer_id in heard:
            del heard[peer_id]  # re-inserted last: the dict stays ordered by time heard
        elif len(heard) >= MAX_HEARD_PEERS:
            del heard[next(iter(heard))]
        heard[peer_id] = self.clock()

    def heard_since(self, peer_id: str, since: float) -> bool:
        """Whether a frame arrived from the peer at or after `since` (this table's clock)."""
        return self._heard.get(peer_id, float("-inf")) >= since

    def is_down(self, peer_id: str) -> bool:
        return peer_id in self._down

    def unreachable(self) -> set[str]:
        return set(self._down)

    def due(self) -> list[str]:
        """Unreachable peers whose next probe is due."""
        now = self.clock()
        return [pid for pid, row in self._down.items() if row.next_probe <= now]

    def failed_at(self, peer_id: str) -> float | None:
        """Unix seconds of the peer's last failure; None if it is not unreachable."""
        row = self._down.get(peer_id)
        return None if row is None else row.failed_at

    def forget(self, peer_id: str) -> None:
        """Drop a peer that left the peer table (nothing to route to, nothing to probe)."""
        self._down.pop(peer_id, None)
        self._heard.pop(peer_id, None)

    def status(self) -> dict[str, object]:
        # per-peer detail as text only (metrics export the numbers, not one series per peer)
        now = self.clock()
        return {**self.counters, "unreachable": len(self._down),
                "peers": {pid: f"{row.reason} ({now - row.since:.0f} s ago)"
                          for pid, row in sorted(self._down.items())[:32]}}
