"""The probe's arithmetic: /proc counters read and divided per request (bench/probe.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench import parsers, probe


def test_counters_of_this_process_are_read_and_grow() -> None:
    pid = os.getpid()
    statuses = [(t / "status").read_text() for t in Path(f"/proc/{pid}/task").iterdir()]
    before = probe.parse_io(Path(f"/proc/{pid}/io").read_text(), statuses)
    fd = os.open("/dev/null", os.O_WRONLY)
    try:
        for _ in range(5):
            os.write(fd, b"x")
    finally:
        os.close(fd)
    after = probe.parse_io(Path(f"/proc/{pid}/io").read_text(), statuses)
    assert set(before) == {"syscr", "syscw", "vcs"}
    assert after["syscw"] - before["syscw"] >= 5


def test_context_switches_are_summed_over_threads() -> None:
    io = "rchar: 1\nwchar: 2\nsyscr: 30\nsyscw: 40\nread_bytes: 0\n"
    statuses = ["Name:\tpython\nvoluntary_ctxt_switches:\t7\nnonvoluntary_ctxt_switches:\t99\n",
                "voluntary_ctxt_switches:\t3\n"]
    assert probe.parse_io(io, statuses) == {"syscr": 30, "syscw": 40, "vcs": 10}


def test_per_request_divides_each_counters_growth() -> None:
    got = probe.per_request({"syscr": 100, "syscw": 50, "vcs": 0}, {"syscr": 1100, "syscw": 2050, "vcs": 500}, 1000)
    assert got == {"syscr": 1.0, "syscw": 2.0, "vcs": 0.5}
    with pytest.raises(ValueError, match="requests=0"):
        probe.per_request({}, {}, 0)


def test_the_connection_load_opens_one_client_per_request_at_the_rate() -> None:
    """--load conn: h2load opens rate/10 clients per 0.1 s period, each sending one request, so the
    connections made equal the requests sent and arrive at `rate` per second."""
    argv = probe.conn_load_argv("http://10.96.0.10:80/", 300, 12)
    opt = dict(zip(argv[1::], argv[2::], strict=False))
    assert argv[0] == "h2load" and "--h1" in argv and argv[-1] == "http://10.96.0.10:80/"
    assert opt["--rate"] == "30" and opt["--rate-period"] == "100ms"
    assert opt["-c"] == opt["-n"] == "3600"
    with pytest.raises(ValueError, match="rate=5"):
        probe.conn_load_argv("http://x/", 5, 10)


def _req(start_ms: float, dur_us: int) -> parsers.Request:
    return parsers.Request(start_us=int(start_ms * 1000), status=200, duration_us=dur_us)


def test_slow_requests_close_in_time_are_one_burst_and_lone_ones_stay_apart() -> None:
    rows = [_req(0, 300), _req(1, 4000), _req(3, 2500), _req(7.5, 1200),    # one stall: 3 clients
            _req(20, 310), _req(40, 1500),                                  # a lone slow one
            _req(60, 999)]                                                  # under the threshold
    got = probe.bursts(rows, threshold_us=1000)
    assert got == [probe.Burst(1000, 3, 4000), probe.Burst(40000, 1, 1500)]
    assert probe.bursts(rows, threshold_us=1000, gap_us=1000) == [
        probe.Burst(1000, 1, 4000), probe.Burst(3000, 1, 2500), probe.Burst(7500, 1, 1200), probe.Burst(40000, 1, 1500)]


def test_the_latency_report_reads_percentiles_and_names_the_largest_burst() -> None:
    rows = [_req(i, 300) for i in range(990)] + [_req(1000 + i * 0.5, 5000 + i) for i in range(6)] + \
           [_req(2000, 2000), _req(3000, 2100), _req(4000, 2200), _req(5000, 2300)]
    lines = probe.latency_report(rows)
    assert lines[0].startswith("latency (1000 requests, µs): p50 300, p90 300, p99 2000,")
    assert lines[0].endswith("max 5005")
    assert "10 requests in 5 bursts, 4 alone" in lines[1]
    assert "largest: 6 at +1.00 s (max 5005)" in lines[1]
    assert probe.latency_report([]) == ["latency: no request logged"]
