"""The reachability record: a failure marks a peer at once, only its own answer clears it."""

from p2pinfer.net.reachability import Reachability


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_a_failure_marks_a_peer_unreachable_until_it_answers():
    clock = Clock()
    r = Reachability(clock=clock, wall=clock)
    assert not r.is_down("a")
    r.failed("a", "dial refused")
    assert r.is_down("a") and r.unreachable() == {"a"}
    assert r.status()["peers"]["a"].startswith("dial refused")
    r.answered("a")
    assert not r.is_down("a")
    assert r.counters == {"marked_unreachable": 1, "recovered": 1}


def test_probes_back_off_exponentially_up_to_the_cap():
    clock = Clock()
    r = Reachability(retry_base_s=1.0, retry_max_s=4.0, clock=clock, wall=clock)
    r.failed("a", "x")
    assert r.due() == []
    clock.t += 1.0
    assert r.due() == ["a"]
    for expected in (2.0, 4.0, 4.0):  # the probe failed again
        r.failed("a", "x")
        clock.t += expected - 0.01
        assert r.due() == []
        clock.t += 0.01
        assert r.due() == ["a"]
    assert r.counters["marked_unreachable"] == 1


def test_failed_at_names_the_last_failure_and_forget_drops_the_peer():
    clock = Clock()
    r = Reachability(clock=clock, wall=clock)
    assert r.failed_at("a") is None
    r.failed("a", "x")
    clock.t = 250.0
    r.failed("a", "y")
    assert r.failed_at("a") == 250.0
    r.forget("a")
    assert r.unreachable() == set() and r.counters["recovered"] == 0


def test_a_long_reason_is_cut():
    r = Reachability()
    r.failed("a", "x" * 5000)
    assert r.status()["peers"]["a"].startswith("x" * 200 + " (")


def test_heard_since_remembers_the_last_frame_of_a_bounded_number_of_peers(monkeypatch):
    from p2pinfer.net import reachability

    monkeypatch.setattr(reachability, "MAX_HEARD_PEERS", 3)
    clock = Clock()
    r = Reachability(clock=clock, wall=clock)
    assert not r.heard_since("a", 0.0)
    r.heard("a")
    assert r.heard_since("a", 100.0) and not r.heard_since("a", 100.5)
    clock.t = 101.0
    for p in ("b", "c", "a"):  # "a" heard again: now the most recent
        r.heard(p)
    r.heard("d")  # a fourth peer: the least recently heard ("b") is forgotten
    assert not r.heard_since("b", 0.0)
    assert all(r.heard_since(p, 101.0) for p in ("a", "c", "d"))
    r.forget("a")
    assert not r.heard_since("a", 0.0)
