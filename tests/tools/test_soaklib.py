"""The pure parts of the scale and soak tools: per-minute statistics, growth and the verdict."""

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))

from soaklib import (
    RSS_SLACK,
    Outcome,
    PeerReading,
    Verdict,
    by_minute,
    grows,
    growth_rows,
    minute_stats,
    percentile,
    table,
)


def ok(t: float, lat: float = 1.0) -> Outcome:
    return Outcome("generate", t, lat, True)


def test_percentiles_interpolate_and_are_nan_without_values():
    assert percentile([1, 2, 3, 4], 0.5) == 2.5
    assert percentile([10], 0.95) == 10
    assert math.isnan(percentile([], 0.5))


def test_minute_stats_count_wrong_and_failed_apart_and_time_only_successes():
    outs = [ok(1, 0.1), ok(2, 0.3), Outcome("embed", 3, 9.0, False, wrong=True),
            Outcome("generate", 4, 50.0, False, error="timeout")]
    st = minute_stats(outs)
    assert (st.requests, st.ok, st.wrong, st.failed) == (4, 2, 1, 1)
    assert st.success == 0.5
    assert st.p50_ms == 200.0  # the wrong and the failed request's latencies are left out


def test_outcomes_are_bucketed_by_the_minute_they_finished_in():
    buckets = by_minute([ok(0), ok(59.9), ok(60.0), ok(185.0)], 3)
    assert [len(b) for b in buckets] == [2, 1, 1]  # past the end lands in the last minute


def test_a_flat_series_with_noise_is_flat_and_a_steady_climb_grows():
    mib = 2**20
    assert not grows([100 * mib, 200 * mib, 205 * mib, 198 * mib, 203 * mib], RSS_SLACK)
    assert grows([200 * mib, 200 * mib, 240 * mib, 280 * mib, 320 * mib, 360 * mib], RSS_SLACK)
    assert not grows([5], (0.0, 0))
    assert grows([40, 40, 41, 90, 95], (0.25, 16))


def test_growth_rows_follow_each_process_lifetime_separately():
    def r(index, pid, rss, fds=10, tasks=20):
        return PeerReading(index, pid, True, rss << 20, fds, tasks)

    history = [[r(1, 100, 300), r(-1, 7, 500)],
               [r(1, 100, 300), r(-1, 7, 500, fds=10)],
               [r(1, 200, 250), r(-1, 7, 500, fds=12)],  # peer 1 restarted: a new lifetime
               [r(1, 200, 250), r(-1, 7, 500, fds=60)],
               [PeerReading(1, 0, False), r(-1, 7, 500, fds=95)]]
    rows, grew = growth_rows(history)
    assert [row[:3] for row in rows] == [["requester", 7, 5], ["peer 1", 100, 2],
                                         ["peer 1", 200, 2]]
    assert grew == ["requester (pid 7) fds"]


def test_the_verdict_fails_with_exit_1_on_wrong_output_and_3_on_other_failures():
    v = Verdict()
    v.require(True, "never shown")
    assert v.passed and v.exit_code() == 0 and v.line("x") == "VERDICT: PASS (x)"
    v.require(False, "minute 2: empty mesh on peers [4]")
    assert v.exit_code() == 3 and "empty mesh" in v.line("x")
    v.wrong = 2
    assert v.exit_code() == 1 and v.line("x").startswith("VERDICT: FAIL (x): 2 wrong output(s)")


def test_tables_are_markdown_with_aligned_columns():
    out = table(("min", "ok"), [[1, "10/10"], [12, "9/10"]]).splitlines()
    assert out[0] == "| min |    ok |"
    assert out[1] == "|-----|-------|"
    assert out[3] == "|  12 |  9/10 |"
