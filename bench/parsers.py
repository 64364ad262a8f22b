"""Turn the load tools' output into numbers (sans-IO).

Each parser takes the text a tool printed (or wrote) and returns a small dataclass; a run that
failed - even one whose exit code was 0, as iperf3 does on "connection refused" - raises
ToolOutputError naming the tool and what was wrong, so a broken scenario never becomes a
plausible-looking zero in the results.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass


class ToolOutputError(ValueError):
    """A tool's output says the run failed or cannot be read."""


# A run with more failed requests than this (as a fraction) is an error, not a result; fewer are
# recorded with the result. A mesh that drops one request in ten thousand under a connection storm
# should be reported, not crash the suite.
MAX_ERROR_RATIO = 0.01


# ----- iperf3 -------------------------------------------------------------------------------

@dataclass(frozen=True)
class IperfResult:
    streams: int
    seconds: float
    bytes: int
    bits_per_second: float          # as received by the server (what got through)
    retransmits: int
    sender_cpu_percent: float
    receiver_cpu_percent: float

    @property
    def gbit_per_second(self) -> float:
        return self.bits_per_second / 1e9


def parse_iperf3(text: str) -> IperfResult:
    """`iperf3 -c ... -J` output."""
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise ToolOutputError(f"iperf3: output is not JSON ({e}); first bytes: {text[:120]!r}") from e
    if not isinstance(d, dict):
        raise ToolOutputError("iperf3: JSON output is not an object")
    if d.get("error"):
        raise ToolOutputError(f"iperf3: {d['error']}")
    end = d.get("end") or {}
    recv, sent = end.get("sum_received"), end.get("sum_sent")
    if not recv or "bits_per_second" not in recv:
        raise ToolOutputError("iperf3: no end.sum_received in the output (the test did not finish)")
    cpu = end.get("cpu_utilization_percent") or {}
    return IperfResult(
        streams=int(d.get("start", {}).get("test_start", {}).get("num_streams", len(end.get("streams", [])))),
        seconds=float(recv.get("seconds", 0.0)),
        bytes=int(recv.get("bytes", 0)),
        bits_per_second=float(recv["bits_per_second"]),
        retransmits=int((sent or {}).get("retransmits", 0)),
        sender_cpu_percent=float(cpu.get("host_total", 0.0)),
        receiver_cpu_percent=float(cpu.get("remote_total", 0.0)),
    )


# ----- h2load -------------------------------------------------------------------------------

@dataclass(frozen=True)
class H2loadSummary:
    seconds: float
    req_per_s: float
    total: int
    started: int
    done: int
    succeeded: int
    failed: int
    errored: int
    timeout: int
    status_2xx: int


_FINISHED = re.compile(r"^finished in ([\d.]+)(ms|s), ([\d.]+) req/s", re.M)
_REQUESTS = re.compile(
    r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout",
    re.M)
_STATUS = re.compile(r"^status codes: (\d+) 2xx", re.M)


def parse_h2load_summary(text: str, max_error_ratio: float = MAX_ERROR_RATIO) -> H2loadSummary:
    """h2load's stdout summary. Raises if no request succeeded or too many failed."""
    f, r, s = _FINISHED.search(text), _REQUESTS.search(text), _STATUS.search(text)
    if not (f and r and s):
        raise ToolOutputError(f"h2load: no summary in the output (did it start?); last lines: "
                              f"{' | '.join(text.strip().splitlines()[-3:])!r}")
    seconds = float(f.group(1)) / (1000.0 if f.group(2) == "ms" else 1.0)
    total, started, done, ok, failed, errored, timeout = (int(x) for x in r.groups())
    out = H2loadSummary(seconds=seconds, req_per_s=float(f.group(3)), total=total, started=started, done=done,
                        succeeded=ok, failed=failed, errored=errored, timeout=timeout, status_2xx=int(s.group(1)))
    if out.succeeded == 0:
        raise ToolOutputError("h2load: no request succeeded (server unreachable or refusing connections)")
    bad = out.failed + out.errored + out.timeout + (out.succeeded - out.status_2xx)
    if bad > max_error_ratio * max(out.total, 1):
        raise ToolOutputError(f"h2load: {out.failed} failed, {out.errored} errored, {out.timeout} timed out, "
                              f"{out.succeeded - out.status_2xx} non-2xx of {out.total} requests")
    return out


@dataclass(frozen=True)
class Request:
    """One row of h2load's --log-file: when the request was sent and how long it took."""

    start_us: int       # wall clock, microseconds since the epoch
    status: int         # HTTP status, -1 for a failed stream
    duration_us: int    # until the end of the response

    @property
    def end_us(self) -> int:
        return self.start_us + self.duration_us


def parse_h2load_log(text: str, what: str = "h2load log") -> list[Request]:
    """Rows of `--log-file`, sorted by start time. Failed streams (status -1) raise."""
    rows: list[Request] = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) < 3:
            raise ToolOutputError(f"{what}: line {i}: expected 3 tab-separated columns, got {line!r}")
        try:
            req = Request(int(cols[0]), int(cols[1]), int(cols[2]))
        except ValueError as e:
            raise ToolOutputError(f"{what}: line {i}: {e}") from e
        if req.status < 0:
            raise ToolOutputError(f"{what}: line {i}: a request failed (status -1)")
        rows.append(req)
    rows.sort(key=lambda r: r.start_us)
    return rows


# ----- wrk (with bench/lua/conn.lua) ---------------------------------------------------------

@dataclass(frozen=True)
class WrkResult:
    seconds: float
    requests: int
    errors: dict[str, int]
    latency_us: dict[str, float]

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


_WRK_JSON = re.compile(r"^BENCH-JSON (\{.*\})\s*$", re.M)


def parse_wrk(text: str, max_error_ratio: float = MAX_ERROR_RATIO) -> WrkResult:
    """The BENCH-JSON line our Lua `done()` prints. Raises when too many requests failed."""
    m = _WRK_JSON.search(text)
    if not m:
        raise ToolOutputError(f"wrk: no BENCH-JSON line in the output; wrk said: {text.strip()[:200]!r}")
    d = json.loads(m.group(1))
    res = WrkResult(seconds=d["duration_us"] / 1e6, requests=int(d["requests"]),
                    errors={k: int(v) for k, v in d["errors"].items()},
                    latency_us={k: float(v) for k, v in d["latency_us"].items()})
    if res.requests == 0:
        raise ToolOutputError("wrk: no request completed")
    bad = {k: v for k, v in res.errors.items() if v}
    if sum(bad.values()) > max_error_ratio * res.requests:
        raise ToolOutputError(f"wrk: errors during the run: {bad} (of {res.requests} requests)")
    return res
