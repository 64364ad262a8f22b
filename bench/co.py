"""Coordinated-omission correction for fixed-rate runs of h2load (sans-IO).

h2load `--rps R` gives each client (one HTTP/1.1 connection, one request in flight) a timer that
fires every 1/R s (for R <= 100) and adds one request to a backlog; a backlogged request goes out
the moment the previous response ends. Its latency, though, is timed from when it was *sent*, so
a 40 ms stall shows up as one slow request and four fast ones that in truth waited 30, 20, 10 ms:
the classic coordinated omission (Gil Tene). wrk2 fixes this by timing every request from when it
*should* have been sent; Debian has no wrk2, so we do the same from h2load's per-request log.

Rules, per client (the caller runs one h2load process per client, so each log is one client):
- The intended send times are a grid t0 + k/R. t0 is the earliest `start_k - k/R` over the run,
  i.e. the grid is aligned to the request that left most on time.
- Only a request that left immediately after the previous response ended (within `blocked_gap`)
  was held back by the connection; its corrected latency is `end_k - intended_k`.
- Every other request keeps its measured latency. h2load's timer itself fires up to ~1 ms late
  (libev on epoll has millisecond resolution); charging that to the system under test would bury
  a 0.2 ms difference under generator noise, so unblocked requests are not "corrected" by it.
  For blocked requests the correction may include that jitter, so it is an upper bound by at most
  ~1 ms on requests that already waited behind a slow response.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bench.parsers import Request

# h2load sends a backlogged request within a few microseconds of the previous response ending;
# 100 us leaves room for a loaded machine while staying far below the 10 ms request interval.
BLOCKED_GAP_US = 100


@dataclass(frozen=True)
class Corrected:
    measured_us: list[int]       # as h2load timed them
    corrected_us: list[int]      # timed from the intended send time where the request was held back
    blocked: int                 # how many requests were held back by a previous response

    @property
    def n(self) -> int:
        return len(self.measured_us)


def correct(rows: Sequence[Request], rate_per_s: float, blocked_gap_us: int = BLOCKED_GAP_US) -> Corrected:
    """Correct one client's requests (sorted by start) sent at `rate_per_s`."""
    if rate_per_s <= 0:
        raise ValueError(f"co.correct: rate_per_s={rate_per_s} must be positive")
    if not rows:
        return Corrected([], [], 0)
    interval = 1e6 / rate_per_s
    t0 = min(r.start_us - k * interval for k, r in enumerate(rows))
    measured = [r.duration_us for r in rows]
    corrected = list(measured)
    blocked = 0
    for k in range(1, len(rows)):
        r, prev = rows[k], rows[k - 1]
        intended = t0 + k * interval
        if r.start_us - prev.end_us <= blocked_gap_us and r.start_us > intended:
            corrected[k] = max(r.duration_us, round(r.end_us - intended))
            blocked += 1
    return Corrected(measured, corrected, blocked)


def merge(parts: Sequence[Corrected]) -> Corrected:
    """Pool the clients of one run."""
    return Corrected([x for p in parts for x in p.measured_us], [x for p in parts for x in p.corrected_us],
                     sum(p.blocked for p in parts))
