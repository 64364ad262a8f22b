"""When a span exporter tries a failed batch again: the OpenTelemetry SDK's OTLP exporters' policy,
shared by Ambit's OTLP/gRPC, OTLP/HTTP and Zipkin exporters.

The SDK's exporters (gRPC and HTTP alike) try a batch at most 6 times, wait 2^n s with ±20 %
jitter after try n, honour a collector's `Retry-After` (HTTP), and never wait past the export's
timeout: a collector that is down costs one batch per timeout, never a growing backlog in the
batch processor's thread. Which failures are transient differs by transport, so the callers say
that; the arithmetic is here, pure (the random source is injected).
"""

from __future__ import annotations

import math
import random
from datetime import UTC
from email.utils import parsedate_to_datetime

MAX_TRIES = 6
JITTER = 0.2
# HTTP statuses the SDK's OTLP/HTTP exporter treats as transient (429, 502, 503, 504).
RETRYABLE_HTTP = frozenset({429, 502, 503, 504})


def delay(attempt: int, remaining: float, rand: random.Random, retry_after: float | None = None) -> float | None:
    """Seconds to wait before trying again after try `attempt` (0-based) failed transiently, or
    None to give up: the last try, or a wait that would pass the deadline (`remaining` seconds).
    A collector's `retry_after` replaces the backoff."""
    if attempt + 1 >= MAX_TRIES:
        return None
    wait = retry_after if retry_after is not None else 2 ** attempt * rand.uniform(1 - JITTER, 1 + JITTER)
    return wait if wait <= remaining else None


def retry_after(value: str | None, now: float) -> float | None:
    """An HTTP `Retry-After` (RFC 9110: delay-seconds, or an HTTP-date) as seconds from `now`
    (epoch seconds), or None when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(seconds, 0.0) if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)     # "-0000": UTC with no zone said, as the SDK reads it
    return max(when.timestamp() - now, 0.0)
