"""The peer table: TTL, queries by model and span, smoothed RTT."""

from __future__ import annotations

from p2pinfer.net.adverts import Advert
from p2pinfer.net.peertable import PeerTable


def advert(pid: str, *, model: str = "m", spans=((0, 4),), expires_ms: int = 10_000_000, seq=1):
    return Advert(
        peer_id=pid,
        network_id="n",
        seq=seq,
        issued_ms=0,
        expires_ms=expires_ms,
        addrs=(f"/ip4/127.0.0.1/tcp/1/p2p/{pid}",),
        model=model,
        spans=spans,
    )


def test_rows_expire_with_their_advert_or_after_the_ttl():
    table = PeerTable(ttl_s=30)
    table.upsert(advert("a", expires_ms=1_010_000), now=1000)
    table.upsert(advert("b"), now=1000)
    assert table.expire(now=1005) == []
    assert table.expire(now=1011) == ["a"]  # its advert expired at t = 1010 s
    assert table.expire(now=1029) == []
    assert table.expire(now=1031) == ["b"]  # not refreshed for longer than the TTL
    assert len(table) == 0


def test_touch_refreshes_last_seen():
    table = PeerTable(ttl_s=30)
    table.upsert(advert("a"), now=0)
    table.touch("a", now=25)
    assert table.expire(now=50) == []


def test_serving_filters_by_model_and_layer_and_orders_by_rtt():
    table = PeerTable(ttl_s=30)
    table.upsert(advert("slow", spans=((0, 4),)))
    table.upsert(advert("fast", spans=((2, 6),)))
    table.upsert(advert("unmeasured", spans=((0, 8),)))
    table.upsert(advert("other", model="x"))
    table.record_rtt("slow", 9.0)
    table.record_rtt("fast", 1.0)
    assert [r.peer_id for r in table.serving("m", 3)] == ["fast", "slow", "unmeasured"]
    assert [r.peer_id for r in table.serving("m", 7)] == ["unmeasured"]
    assert [r.peer_id for r in table.covering("m", 0, 4)] == ["slow", "unmeasured"]
    assert table.serving("nope") == []


def test_rtt_is_a_moving_average():
    table = PeerTable(ttl_s=30)
    table.upsert(advert("a"))
    table.record_rtt("a", 10.0)
    table.record_rtt("a", 20.0)
    assert table.get("a").rtt_ms == 10.0 + PeerTable.RTT_ALPHA * 10.0
    table.record_rtt("unknown", 1.0)  # ignored


def test_rows_are_json_able():
    import json

    table = PeerTable(ttl_s=30)
    row = table.upsert(advert("a"), now=12.5)
    d = row.to_dict()
    assert d["peer_id"] == "a" and d["last_seen"] == 12.5 and d["spans"] == [[0, 4]]
    json.dumps(d)
