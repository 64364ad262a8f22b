"""The span exporters' retry rule (waypoint/telemetry/export_retry.py), shared by OTLP/gRPC,
OTLP/HTTP and Zipkin: the backoff, `Retry-After`, the try loop and the failure log, without
sockets (clock, random source and waits injected)."""

from __future__ import annotations

import logging
import random

import pytest

from waypoint.telemetry import export_retry
from waypoint.telemetry.export_retry import Failure


def test_delay_follows_the_sdk_exporters() -> None:
    rand = random.Random(7)
    d0, d2 = export_retry.delay(0, 10, rand), export_retry.delay(2, 10, rand)
    assert d0 is not None and 0.8 <= d0 <= 1.2                                   # 2^0 s ± 20 %
    assert d2 is not None and 3.2 <= d2 <= 4.8                                   # 2^2 s ± 20 %
    assert export_retry.delay(export_retry.MAX_TRIES - 1, 1000, rand) is None    # the last try
    assert export_retry.delay(3, 5.0, rand) is None                              # 8 s would pass the deadline
    assert export_retry.delay(0, 10, rand, retry_after=7.0) == 7.0               # the collector's word wins ...
    assert export_retry.delay(0, 5, rand, retry_after=7.0) is None               # ... but not past the deadline


@pytest.mark.parametrize(("value", "expected"), [
    (None, None), ("3", 3.0), (" 0 ", 0.0), ("-4", 0.0), ("inf", None), ("soon", None),
    ("Thu, 01 Jan 1970 00:01:40 GMT", 60.0),          # an HTTP-date: 100 s after the epoch, "now" is 40 s
    ("Thu, 01 Jan 1970 00:00:10 GMT", 0.0),           # already past
    ("Thu, 01 Jan 1970 00:01:40 -0000", 60.0),        # no zone said: UTC, as the SDK reads it
])
def test_retry_after_reads_seconds_and_http_dates(value: str | None, expected: float | None) -> None:
    assert export_retry.retry_after(value, now=40.0) == expected


class Clock:
    """Time that passes only when the loop waits (or a try says it took some)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.waits: list[float] = []
        self.stopped = False

    def __call__(self) -> float:
        return self.now

    def wait(self, seconds: float) -> bool:          # the exporter's stop event
        self.waits.append(seconds)
        self.now += seconds
        return self.stopped


def run(results: list[Failure | None], timeout: float = 10.0, stop_after: int | None = None,
        ) -> tuple[Failure | None, int, Clock]:
    clock, tries = Clock(), []

    def send(deadline: float) -> Failure | None:
        assert deadline == timeout                    # one deadline for every try
        tries.append(clock.now)
        if stop_after is not None and len(tries) >= stop_after:
            clock.stopped = True
        return results[min(len(tries), len(results)) - 1]
    out = export_retry.attempts(send, timeout, random.Random(1), clock, clock)  # type: ignore[arg-type]
    return out, len(tries), clock


def test_a_delivered_batch_is_tried_once() -> None:
    assert run([None])[:2] == (None, 1)


def test_transient_failures_are_tried_again_until_delivered() -> None:
    busy = Failure("HTTP 503", True)
    out, tries, clock = run([busy, busy, None])
    assert out is None and tries == 3 and len(clock.waits) == 2


def test_a_failure_that_is_not_transient_ends_at_once() -> None:
    bad = Failure("HTTP 400", False)
    out, tries, clock = run([bad, None])
    assert out is bad and tries == 1 and clock.waits == []


def test_retry_after_is_waited_and_the_deadline_ends_the_tries() -> None:
    out, tries, clock = run([Failure("HTTP 429", True, retry_after=0.5)] * 3 + [None])
    assert out is None and clock.waits == [0.5, 0.5, 0.5]
    down = Failure("refused", True)
    out, tries, clock = run([down], timeout=5.0)      # 1 + 2 s waited; 4 s more would pass the 5 s deadline
    assert out is down and tries == 3 and sum(clock.waits) <= 5.0


def test_a_stopping_exporter_waits_no_more() -> None:
    out, tries, clock = run([Failure("refused", True)], stop_after=1)
    assert out is not None and tries == 1 and len(clock.waits) == 1


def test_the_failure_log_says_each_reason_once_and_when_export_works_again(
        caplog: pytest.LogCaptureFixture) -> None:
    fl = export_retry.FailureLog("http://collector:4318/v1/traces")
    with caplog.at_level(logging.INFO, logger="ambit.waypoint.tracing"):
        for f in (Failure("refused", True), Failure("refused", True), Failure("HTTP 400", False), None, None,
                  Failure("refused", True)):
            fl.report(f, 128)
    assert [r.getMessage() for r in caplog.records] == [
        "spans to http://collector:4318/v1/traces: export failed (refused); batch of 128 dropped",
        "spans to http://collector:4318/v1/traces: export failed (HTTP 400); batch of 128 dropped",
        "spans to http://collector:4318/v1/traces: exported again",
        "spans to http://collector:4318/v1/traces: export failed (refused); batch of 128 dropped",
    ]
