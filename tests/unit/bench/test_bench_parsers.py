"""Parsers of real, recorded tool output (iperf3 -J, h2load, wrk with bench/lua/conn.lua)."""

from __future__ import annotations

import json

import pytest

from bench import parsers
from bench.parsers import ToolOutputError


def test_iperf3_single_stream_reports_received_rate(fixture_text):
    r = parsers.parse_iperf3(fixture_text("iperf3_1stream.json"))
    assert r.streams == 1
    assert r.bits_per_second == pytest.approx(24589806217.125587)
    assert r.gbit_per_second == pytest.approx(24.59, rel=1e-3)
    assert r.bytes == 3074949120


def test_iperf3_four_streams_sums_all_streams(fixture_text):
    r = parsers.parse_iperf3(fixture_text("iperf3_4streams.json"))
    assert r.streams == 4
    assert r.bits_per_second == pytest.approx(26080134016.859013)


def test_iperf3_error_with_exit_code_zero_is_an_error(fixture_text):
    # iperf3 -J exits 0 on "connection refused": only the JSON says it failed.
    with pytest.raises(ToolOutputError, match="unable to connect to server: Connection refused"):
        parsers.parse_iperf3(fixture_text("iperf3_refused.json"))


def test_iperf3_garbage_names_the_tool():
    with pytest.raises(ToolOutputError, match="iperf3: output is not JSON"):
        parsers.parse_iperf3("iperf3: error - unable to connect")


def test_h2load_summary_of_a_fixed_rate_run(fixture_text):
    s = parsers.parse_h2load_summary(fixture_text("h2load_rps100.out"))
    assert (s.total, s.succeeded, s.failed, s.status_2xx) == (200, 200, 0, 200)
    assert s.req_per_s == pytest.approx(100.0)
    assert s.seconds == pytest.approx(3.0)


def test_h2load_summary_of_a_max_rate_run(fixture_text):
    s = parsers.parse_h2load_summary(fixture_text("h2load_max.out"))
    assert s.req_per_s == pytest.approx(85513.0)
    assert s.total == 85513


def test_h2load_with_no_successful_request_is_an_error(fixture_text):
    with pytest.raises(ToolOutputError, match="no request succeeded"):
        parsers.parse_h2load_summary(fixture_text("h2load_refused.out"))


def test_h2load_with_too_many_failures_is_an_error(fixture_text):
    text = fixture_text("h2load_rps100.out").replace(
        "200 total, 200 started, 200 done, 200 succeeded, 0 failed", "200 total, 200 started, 200 done, 190 succeeded, 10 failed"
    ).replace("200 2xx", "190 2xx")
    with pytest.raises(ToolOutputError, match="10 failed"):
        parsers.parse_h2load_summary(text)
    # ...but a failure rate under the tolerance is a result (and the count is kept).
    s = parsers.parse_h2load_summary(text, max_error_ratio=0.1)
    assert s.failed == 10


def test_h2load_log_rows_are_sorted_by_start(fixture_text):
    rows = parsers.parse_h2load_log(fixture_text("h2load_max_head.tsv"))
    assert len(rows) == 500
    assert all(a.start_us <= b.start_us for a, b in zip(rows, rows[1:], strict=False))
    assert all(r.status == 200 and r.duration_us > 0 for r in rows)
    assert rows[0].end_us == rows[0].start_us + rows[0].duration_us


def test_h2load_log_failed_stream_and_bad_line_name_the_line():
    with pytest.raises(ToolOutputError, match="line 2: a request failed"):
        parsers.parse_h2load_log("1\t200\t5\n2\t-1\t0\n")
    with pytest.raises(ToolOutputError, match="line 1: expected 3"):
        parsers.parse_h2load_log("garbage\n")


def test_wrk_connection_rate(fixture_text):
    r = parsers.parse_wrk(fixture_text("wrk_conn.out"))
    assert r.requests == 19373
    assert r.seconds == pytest.approx(1.100015)
    assert r.per_second == pytest.approx(19373 / 1.100015)
    assert r.latency_us["p99"] == 663


def test_wrk_that_could_not_connect_is_an_error(fixture_text):
    with pytest.raises(ToolOutputError, match="no BENCH-JSON line.*Connection refused"):
        parsers.parse_wrk(fixture_text("wrk_refused.out"))


def test_wrk_errors_over_tolerance_are_an_error(fixture_text):
    text = fixture_text("wrk_conn.out")
    line = next(x for x in text.splitlines() if x.startswith("BENCH-JSON"))
    d = json.loads(line.split(" ", 1)[1])
    d["errors"]["connect"] = 1000
    bad = text.replace(line, "BENCH-JSON " + json.dumps(d))
    with pytest.raises(ToolOutputError, match="'connect': 1000"):
        parsers.parse_wrk(bad)
    d["errors"]["connect"] = 3
    assert parsers.parse_wrk(text.replace(line, "BENCH-JSON " + json.dumps(d))).errors["connect"] == 3
