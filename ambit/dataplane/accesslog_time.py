"""The timestamp format of access logs and tap events (RFC 3339, UTC, microseconds)."""

from __future__ import annotations

import time


def iso_time(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e6):06d}Z"
