"""Prometheus metrics of one node's API, in a registry of its own (never the process-global one,
so two nodes in one process keep separate counts).

Request-side series are updated by the app as requests finish; peer and node series are read
from `Node.peers()` and `Node.status()` at each scrape.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from p2pinfer.net.peertable import PeerInfo

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def _flatten(prefix: str, value: Any, out: dict[str, float]) -> None:
    if isinstance(value, (bool, int, float)):
        out[prefix] = float(value)
    elif isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)


class NodeCollector(Collector):
    """Per-peer RTT and load from the peer table, and every numeric counter of `status()`."""

    def __init__(self, peers: Callable[[], list[PeerInfo]],
                 status: Callable[[], dict[str, Any]], sessions: Callable[[], int]) -> None:
        self.peers = peers
        self.status = status
        self.sessions = sessions

    def collect(self) -> Iterator[GaugeMetricFamily]:
        rtt = GaugeMetricFamily("p2pinfer_peer_rtt_ms", "Smoothed ping round trip per peer",
                                labels=["peer"])
        load = GaugeMetricFamily("p2pinfer_peer_load", "Advertised load per peer",
                                 labels=["peer"])
        known = GaugeMetricFamily("p2pinfer_peers", "Peers with a valid advert")
        peers = self.peers()
        for p in peers:
            if p.rtt_ms is not None:
                rtt.add_metric([p.peer_id], float(p.rtt_ms))
            load.add_metric([p.peer_id], float(p.load))
        known.add_metric([], float(len(peers)))
        counters = GaugeMetricFamily(
            "p2pinfer_node_counter", "The node's status counters (rejected adverts and wire "
            "messages by reason, gossip, streams, attestation)", labels=["name"])
        flat: dict[str, float] = {}
        status = self.status()
        _flatten("", status.get("counters", {}), flat)
        for name, value in sorted(flat.items()):
            counters.add_metric([name], value)
        uptime = GaugeMetricFamily("p2pinfer_uptime_seconds", "Seconds since the node started")
        uptime.add_metric([], float(status.get("uptime_s", 0.0)))
        sessions = GaugeMetricFamily("p2pinfer_requester_open_sessions",
                                     "Route sessions this node holds open as a requester")
        sessions.add_metric([], float(self.sessions()))
        yield from (rtt, load, known, counters, uptime, sessions)


class ApiMetrics:
    """The API's series. `registry` is this app's own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("p2pinfer_api_requests", "API requests by outcome",
                                ["endpoint", "model", "mode", "outcome"], registry=r)
        self.tokens_in = Counter("p2pinfer_api_tokens_in", "Prompt tokens received", ["model"],
                                 registry=r)
        self.tokens_out = Counter("p2pinfer_api_tokens_out", "Tokens generated", ["model"],
                                  registry=r)
        self.ttft = Histogram("p2pinfer_api_time_to_first_token_seconds",
                              "From request to first token", ["model"],
                              buckets=_LATENCY_BUCKETS, registry=r)
        self.token_latency = Histogram("p2pinfer_api_token_latency_seconds",
                                       "Between consecutive tokens", ["model"],
                                       buckets=_LATENCY_BUCKETS, registry=r)
        self.open_requests = Gauge("p2pinfer_api_open_requests", "Requests being served",
                                   registry=r)
        self.votes = Counter("p2pinfer_votes", "Replica votes counted in answered requests",
                             registry=r)
        self.dissents = Counter("p2pinfer_dissents", "Dissenting replicas in answered requests",
                                registry=r)
        self.bans = Counter("p2pinfer_bans", "Peers banned during answered requests",
                            registry=r)
        self.audits = Counter("p2pinfer_audits", "Audits run, by result", ["result"], registry=r)
        self.rejected = Counter("p2pinfer_api_rejected", "Requests refused before running",
                                ["reason"], registry=r)

    def watch_node(self, peers: Callable[[], list[PeerInfo]],
                   status: Callable[[], dict[str, Any]], sessions: Callable[[], int]) -> None:
        self.registry.register(NodeCollector(peers, status, sessions))

    def count_verification(self, report: dict[str, Any] | None) -> None:
        if not report:
            return
        for stage in report.get("stages", []):
            self.votes.inc(int(stage.get("votes", 0) or 0))
            self.dissents.inc(len(stage.get("dissenting", []) or []))
            audits = int(stage.get("audits", 0) or 0)
            failed = int(stage.get("audit_failures", 0) or 0)
            self.audits.labels("passed").inc(max(0, audits - failed))
            self.audits.labels("failed").inc(failed)
        self.bans.inc(len(report.get("banned", []) or []))

    def render(self) -> bytes:
        return generate_latest(self.registry)
