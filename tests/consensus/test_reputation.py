"""Reputation: decay, rewards and penalties, bans with exponential back-off, injected clock."""

from __future__ import annotations

import pytest

from p2pinfer.consensus import ReputationBook, ReputationParams
from p2pinfer.errors import ConfigError


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def book(clock) -> ReputationBook:
    return ReputationBook(clock, ReputationParams(half_life_s=100.0, ban_base_s=60.0,
                                                  ban_max_s=400.0))


def test_new_peer_starts_neutral(book):
    assert book.score("a") == 0.5
    assert not book.is_banned("a")


def test_agreement_raises_and_timeouts_lower_the_score(book):
    book.record_agreement("a")
    assert book.score("a") == pytest.approx(0.51)
    book.record_timeout("b")
    assert book.score("b") == pytest.approx(0.45)
    book.record_dissent("c")
    assert book.score("c") == pytest.approx(0.45)


def test_score_decays_toward_neutral_with_the_half_life(book, clock):
    for _ in range(20):
        book.record_agreement("a")
    assert book.score("a") == pytest.approx(0.7)
    clock.now += 100.0
    assert book.score("a") == pytest.approx(0.6)
    clock.now += 1000.0
    assert book.score("a") == pytest.approx(0.5, abs=1e-3)


def test_score_stays_within_zero_and_one(book):
    for _ in range(100):
        book.record_agreement("a")
    assert book.score("a") == 1.0


def test_repeated_timeouts_ban_the_peer(book, clock):
    for _ in range(7):
        book.record_timeout("a")
    assert book.is_banned("a")
    assert book.score("a") == 0.0
    assert book.banned_until("a") == clock.now + 60.0


def test_ban_ends_on_probation(book, clock):
    for _ in range(7):
        book.record_timeout("a")
    clock.now += 60.0
    assert not book.is_banned("a")
    assert book.score("a") == pytest.approx(book.params.probation_score)


def test_agreement_while_banned_is_ignored(book, clock):
    book.record_verified_fault("a", b"e1")
    book.record_agreement("a")
    clock.now = book.banned_until("a")
    assert book.score("a") == pytest.approx(book.params.probation_score)


def test_verified_fault_bans_at_once_whatever_the_score(book):
    for _ in range(50):
        book.record_agreement("a")
    assert book.record_verified_fault("a", b"evidence-1")
    assert book.is_banned("a")


def test_same_evidence_counts_once(book):
    assert book.record_verified_fault("a", b"evidence-1")
    assert not book.record_verified_fault("a", b"evidence-1")
    assert book.ban_count("a") == 1


def test_bans_back_off_exponentially_up_to_the_cap(book, clock):
    durations = []
    for i in range(5):
        book.record_verified_fault("a", f"e{i}".encode())
        durations.append(book.banned_until("a") - clock.now)
        clock.now = book.banned_until("a")
        assert not book.is_banned("a")
    assert durations == [60.0, 120.0, 240.0, 400.0, 400.0]


def test_fault_during_a_ban_extends_it(book, clock):
    book.record_verified_fault("a", b"e1")
    clock.now += 30.0
    book.record_verified_fault("a", b"e2")
    assert book.banned_until("a") == clock.now + 120.0


def test_two_books_that_see_the_same_events_agree(clock):
    books = [ReputationBook(clock), ReputationBook(clock)]
    for b in books:
        b.record_agreement("a")
        b.record_verified_fault("b", b"e")
        b.record_timeout("c")
    clock.now += 3600.0
    assert [b.score(p) for p in "abc" for b in books[:1]] == [books[1].score(p) for p in "abc"]
    assert books[0].banned_until("b") == books[1].banned_until("b")


@pytest.mark.parametrize("bad", [{"initial": 1.5}, {"half_life_s": 0.0},
                                 {"ban_max_s": 1.0}, {"probation_score": 0.1}])
def test_bad_parameters_are_refused(bad):
    with pytest.raises(ConfigError):
        ReputationParams(**bad)
