"""The timestamp format of access logs and tap events (RFC 3339, UTC, microseconds)."""

from __future__ import annotations

import functools
import time


@functools.lru_cache(maxsize=4)
def second_text(sec: int) -> str:
    """Whole seconds since the epoch as RFC 3339 UTC without a fraction. Cached: every access line
    and flow event of one second shares it, and gmtime + strftime are the costly part of a stamp
    (docs/performance.md, rounds 6 and 9)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))


def iso_time(t: float) -> str:
    if t < 0:       # before 1970 int() rounds up, gmtime() down: no caching there
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e6):06d}Z"
    return f"{second_text(int(t))}.{int(t % 1 * 1e6):06d}Z"
