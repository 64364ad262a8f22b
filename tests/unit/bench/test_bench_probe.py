"""The probe's arithmetic: /proc counters read and divided per request (bench/probe.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench import probe


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
