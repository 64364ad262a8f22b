"""The timestamp format of access logs and tap events (RFC 3339, UTC, microseconds)."""

from __future__ import annotations

import time

# The last whole second formatted, and its text: every connection's access line is stamped, and
# strftime(gmtime()) is the costly part of a stamp, the same for all stamps within one second.
# One tuple, replaced whole, so a reader never sees a second with another second's text.
_last: tuple[int, str] = (-1, "")


def iso_time(t: float) -> str:
    global _last
    if t < 0:       # before 1970 int() rounds up, gmtime() down: no caching there
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e6):06d}Z"
    sec = int(t)
    last = _last
    if last[0] != sec:
        last = _last = (sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)))
    return last[1] + f".{int(t % 1 * 1e6):06d}Z"
