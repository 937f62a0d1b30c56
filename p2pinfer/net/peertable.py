"""The peer table: what this node knows about other peers, kept fresh by adverts and pings.

Entries come from validated adverts (`AdvertValidator`); an entry lives until its advert
expires or `ttl_s` after it was last refreshed, whichever is sooner. RTT is measured by the
node's ping protocol and kept per peer as a smoothed value. Pure data structure: no I/O.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from .adverts import Advert, Hardware


@dataclass
class PeerInfo:
    """One row of the peer table. `advert` holds the served model, spans, hardware, load."""

    peer_id: str
    addrs: list[str]
    advert: Advert
    #: Unix seconds when the advert was last accepted or re-confirmed
    last_seen: float
    #: smoothed round-trip time of our ping protocol, None until measured
    rtt_ms: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def model(self) -> str:
        return self.advert.model

    @property
    def spans(self) -> tuple[tuple[int, int], ...]:
        return self.advert.spans

    @property
    def roles(self) -> tuple[str, ...]:
        return self.advert.roles

    @property
    def load(self) -> float:
        return self.advert.load

    @property
    def throughput(self) -> float:
        return self.advert.throughput

    @property
    def tee_digest(self) -> bytes | None:
        return self.advert.tee_digest

    @property
    def hardware(self) -> Hardware:
        return self.advert.hardware

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form, as `p2pinfer peers` prints it."""
        d = self.advert.to_dict()
        d.update(
            peer_id=self.peer_id,
            addrs=list(self.addrs),
            last_seen=round(self.last_seen, 3),
            rtt_ms=None if self.rtt_ms is None else round(self.rtt_ms, 3),
        )
        return d


class PeerTable:
    """Peers keyed by peer id, with TTL and queries by model and layer span."""

    #: weight of a new RTT sample in the moving average
    RTT_ALPHA = 0.3

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._peers: dict[str, PeerInfo] = {}

    def __len__(self) -> int:
        return len(self._peers)

    def __contains__(self, peer_id: object) -> bool:
        return peer_id in self._peers

    def upsert(self, advert: Advert, *, now: float | None = None) -> PeerInfo:
        now = time.time() if now is None else now
        row = self._peers.get(advert.peer_id)
        if row is None:
            row = PeerInfo(advert.peer_id, list(advert.addrs), advert, now)
            self._peers[advert.peer_id] = row
        else:
            row.advert = advert
            row.addrs = list(advert.addrs)
            row.last_seen = now
        return row

    def touch(self, peer_id: str, *, now: float | None = None) -> None:
        row = self._peers.get(peer_id)
        if row is not None:
            row.last_seen = time.time() if now is None else now

    def record_rtt(self, peer_id: str, rtt_ms: float) -> None:
        row = self._peers.get(peer_id)
        if row is None:
            return
        if row.rtt_ms is None:
            row.rtt_ms = rtt_ms
        else:
            row.rtt_ms += self.RTT_ALPHA * (rtt_ms - row.rtt_ms)

    def get(self, peer_id: str) -> PeerInfo | None:
        return self._peers.get(peer_id)

    def remove(self, peer_id: str) -> None:
        self._peers.pop(peer_id, None)

    def expire(self, *, now: float | None = None) -> list[str]:
        """Drop stale rows; returns the dropped peer ids."""
        now = time.time() if now is None else now
        gone = [
            pid
            for pid, row in self._peers.items()
            if row.advert.expires_ms <= now * 1000 or now - row.last_seen > self.ttl_s
        ]
        for pid in gone:
            del self._peers[pid]
        return gone

    def peers(self) -> list[PeerInfo]:
        return sorted(self._peers.values(), key=lambda r: r.peer_id)

    def serving(self, model: str, layer: int | None = None) -> list[PeerInfo]:
        """Peers serving `model` (and, if given, a span that covers `layer`), lowest RTT first."""
        rows = [r for r in self._peers.values() if r.advert.serves(model, layer)]
        return sorted(rows, key=lambda r: (r.rtt_ms is None, r.rtt_ms or 0.0, r.peer_id))

    def covering(self, model: str, start: int, end: int) -> list[PeerInfo]:
        """Peers with one span that covers all of [start, end)."""
        return [
            r
            for r in self.serving(model)
            if any(a <= start and end <= b for a, b in r.advert.spans)
        ]
