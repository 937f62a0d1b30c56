"""Where auto peers place themselves, and how peers that started together settle."""

import pytest

from p2pinfer.inference.placement import choose_span, coverage, should_move


def test_a_lone_auto_peer_takes_the_whole_middle_unless_told_a_length():
    assert choose_span([], 1, 29) == (1, 29)
    assert choose_span([], 1, 29, 14) == (1, 15)


def test_the_largest_gap_is_closed_first():
    assert choose_span([(1, 3)], 1, 7) == (3, 7)
    assert choose_span([(1, 3), (4, 5)], 1, 7) == (5, 7)
    assert choose_span([(1, 3)], 1, 7, 2) == (3, 5)
    # a window covering the most missing layers, even if it overlaps a served one
    assert choose_span([(1, 4), (5, 7)], 1, 7, 3) == (2, 5)


def test_with_nothing_missing_a_peer_joins_the_stage_with_fewest_replicas():
    served = [(1, 4), (1, 4), (4, 7)]
    assert choose_span(served, 1, 7) == (4, 7)
    assert choose_span(served, 1, 7, 3) == (4, 7)
    # no stage of the length asked for: the least covered window
    assert choose_span(served, 1, 7, 2) == (4, 6)


def test_bad_range_is_refused():
    with pytest.raises(ValueError, match="no layers"):
        choose_span([], 3, 3)


def test_peers_that_picked_the_same_window_settle_without_holes():
    """Three peers that all chose [1, 3) of the middle [1, 7): each round, every peer that
    `should_move` moves to `choose_span` of the others; within three rounds the middle is
    covered and then nobody moves."""
    placed = {"a": (1, 3), "b": (1, 3), "c": (1, 3)}
    for _ in range(3):
        moves = {}
        for me, mine in placed.items():
            others = [(p, sp) for p, sp in placed.items() if p != me]
            if should_move(mine, me, others, 1, 7):
                moves[me] = choose_span([sp for _, sp in others], 1, 7, 2)
        placed.update(moves)
    assert 0 not in coverage(placed.values(), 1, 7)
    assert placed["a"] == (1, 3)  # the lowest id never moves
    assert not any(should_move(sp, p, [(q, s) for q, s in placed.items() if q != p], 1, 7)
                   for p, sp in placed.items())


def test_a_peer_alone_on_its_layers_never_moves():
    assert not should_move((1, 3), "z", [("a", (3, 5))], 1, 7)  # a gap, but it would open one
    assert not should_move((1, 3), "a", [("z", (1, 3))], 1, 7)  # the lower id stays
    assert should_move((1, 3), "z", [("a", (1, 3))], 1, 7)
    assert not should_move((1, 3), "z", [("a", (1, 3)), ("b", (3, 7))], 1, 7)  # nothing missing
