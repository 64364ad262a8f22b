"""Coordinated-omission correction on real h2load --rps logs."""

from __future__ import annotations

import pytest

from bench import co, parsers
from bench.parsers import Request


def test_requests_held_back_by_a_stall_are_timed_from_their_intended_send(fixture_text):
    # Recorded against a server that stalls 50 ms on every 20th request, at 100 req/s.
    rows = parsers.parse_h2load_log(fixture_text("h2load_stall.tsv"))
    c = co.correct(rows, 100)
    stall = next(i for i, r in enumerate(rows) if r.duration_us > 40_000)
    # The four requests queued behind the 50 ms response each looked fast to h2load...
    assert all(rows[stall + k].duration_us < 1_000 for k in range(1, 5))
    # ...but waited roughly 40, 30, 20 and 10 ms for it.
    for k, waited_ms in zip(range(1, 5), (40, 30, 20, 10), strict=True):
        assert c.corrected_us[stall + k] == pytest.approx(waited_ms * 1000, abs=2_500)
    # The stalled request itself keeps its measured time.
    assert c.corrected_us[stall] == rows[stall].duration_us
    assert c.blocked >= 4 * (len(rows) // 20 - 1)


def test_an_on_time_run_is_left_as_measured(fixture_text):
    rows = parsers.parse_h2load_log(fixture_text("h2load_rps100.tsv"))
    c = co.correct(rows, 100)
    assert c.blocked == 0
    assert c.corrected_us == c.measured_us


def test_timer_lateness_alone_is_not_charged_to_the_server():
    # Sent 0.9 ms late by the generator, but the connection was idle: not coordinated omission.
    rows = [Request(1_000_000, 200, 100), Request(1_010_900, 200, 100), Request(1_020_000, 200, 100)]
    c = co.correct(rows, 100)
    assert c.corrected_us == [100, 100, 100]
    assert c.blocked == 0


def test_correction_never_shortens_a_latency():
    # Request 1 left right after request 0 ended but *before* its slot (early): keep measured.
    rows = [Request(0, 200, 5_000), Request(5_010, 200, 300), Request(20_000, 200, 300)]
    c = co.correct(rows, 100)
    assert c.corrected_us[1] == 300


def test_merge_pools_clients_and_rate_must_be_positive():
    a = co.Corrected([1, 2], [1, 5], 1)
    b = co.Corrected([3], [3], 0)
    m = co.merge([a, b])
    assert (m.measured_us, m.corrected_us, m.blocked, m.n) == ([1, 2, 3], [1, 5, 3], 1, 3)
    with pytest.raises(ValueError, match="rate_per_s=0"):
        co.correct([Request(0, 200, 1)], 0)
    assert co.correct([], 100).n == 0
