"""Command lines of the load tools, and why each tool (sans-IO).

- iperf3 (`-J`): bulk TCP throughput, one and four streams.
- h2load (nghttp2, C): request latency. Debian 12 has no wrk2; of what it has, h2load is the only
  C generator with a fixed request rate (`--rps`) that keeps a backlog instead of silently
  slowing down, and its `--log-file` gives every request's send time and duration, from which
  bench.co corrects coordinated omission exactly where a request waited behind a slow response.
  wrk has no rate option; hey (Go) and siege have no per-request log. `--rps` is exact only up to
  100 req/s per client (its timer ticks at max(10 ms, 1/rps)), so a rate of R runs ceil(R/100)
  single-connection h2load processes, one log each.
- wrk (C) with a Lua script that sends HTTP/1.0 requests: the server closes after each response
  and wrk reconnects, so requests/s is new connections/s.
"""

from __future__ import annotations

import math
from pathlib import Path

LUA_CONN = Path(__file__).with_name("lua") / "conn.lua"


def iperf3_argv(host: str, port: int, streams: int, seconds: int) -> list[str]:
    return ["iperf3", "-c", host, "-p", str(port), "-P", str(streams), "-t", str(seconds), "-J",
            "--connect-timeout", "5000"]


def _ms(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"


def _proto(h2: bool) -> list[str]:
    """HTTP/1.1 (`--h1`), or h2load's default for an http:// URL: h2c with prior knowledge."""
    return [] if h2 else ["--h1"]


def h2load_rate_argv(url: str, rps: float, seconds: float, warmup: float, log: Path, h2: bool = False) -> list[str]:
    """One client, one connection, one request in flight, `rps` requests per second."""
    if not 0 < rps <= 100:
        raise ValueError(f"h2load_rate_argv: rps={rps} per client must be in (0, 100] "
                         f"(h2load's rate timer is coarser above 100)")
    return ["h2load", *_proto(h2), "-c", "1", "-m", "1", "--rps", f"{rps:g}", "-D", _ms(seconds),
            "--warm-up-time", _ms(warmup), f"--log-file={log}", url]


def h2load_max_argv(url: str, clients: int, seconds: float, warmup: float, log: Path, h2: bool = False) -> list[str]:
    """Closed loop: `clients` keep-alive connections, each sending its next request on a response."""
    return ["h2load", *_proto(h2), "-c", str(clients), "-m", "1", "-D", _ms(seconds), "--warm-up-time", _ms(warmup),
            f"--log-file={log}", url]


def wrk_conn_argv(url: str, clients: int, seconds: float, lua: Path = LUA_CONN) -> list[str]:
    """New connections per second: wrk with one HTTP/1.0 request per connection."""
    return ["wrk", "-t", "1", "-c", str(clients), "-d", f"{max(1, math.ceil(seconds))}s", "--timeout", "5s",
            "-s", str(lua), url]


def split_rate(rate: int, per_client: int) -> list[float]:
    """Rates of the h2load processes that together send `rate` req/s, none above `per_client`."""
    if rate <= 0 or per_client <= 0:
        raise ValueError(f"split_rate: rate={rate} and per_client={per_client} must be positive")
    n = math.ceil(rate / per_client)
    return [rate / n] * n
