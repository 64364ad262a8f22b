"""How a span exporter sends a batch and tries it again: the OpenTelemetry SDK's OTLP exporters'
policy, shared by Ambit's OTLP/gRPC, OTLP/HTTP and Zipkin exporters.

The SDK's exporters (gRPC and HTTP alike) try a batch at most 6 times, wait 2^n s with ±20 %
jitter after try n, honour a collector's `Retry-After` (HTTP), and never wait past the export's
timeout: a collector that is down costs one batch per timeout, never a growing backlog in the
batch processor's thread. Which failures are transient differs by transport, so each exporter's
one try says so in the `Failure` it returns; `attempts` runs the tries and `FailureLog` says
what happened, once per change. The arithmetic is pure (the random source and the clock are
injected); the waits are on the exporter's stop event, so a shutdown ends them.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime

log = logging.getLogger("ambit.waypoint.tracing")

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


@dataclass(frozen=True)
class Failure:
    """One try that did not deliver: why (for the log), whether trying again may help, and how
    long the collector asked us to wait (`Retry-After`), if it did."""

    why: str
    transient: bool
    retry_after: float | None = None


def attempts(send: Callable[[float], Failure | None], timeout: float, rand: random.Random,
             stopping: threading.Event, clock: Callable[[], float] = time.monotonic) -> Failure | None:
    """Calls `send(deadline)` (a `clock()` time) until it delivers (None), fails for good, or
    waiting again would pass the deadline or the exporter stops; returns the last failure, or
    None when the batch was delivered."""
    deadline = clock() + timeout
    failure: Failure | None = None
    for attempt in range(MAX_TRIES):
        failure = send(deadline)
        if failure is None:
            return None
        wait = delay(attempt, deadline - clock(), rand, failure.retry_after) if failure.transient else None
        if wait is None or stopping.wait(wait):
            return failure
    return failure


class FailureLog:
    """An exporter's failures in the log: one warning per distinct reason, not per batch (a
    collector that is down fails every batch the same way), and one line when export works again."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self._last = ""

    def report(self, failure: Failure | None, spans: int) -> None:
        if failure is None:
            if self._last:
                log.info("spans to %s: exported again", self.endpoint)
                self._last = ""
            return
        if failure.why != self._last:
            log.warning("spans to %s: export failed (%s); batch of %d dropped", self.endpoint, failure.why, spans)
        self._last = failure.why
