"""The data plane's plain-Python metric families (ztunnel's TCP counters, the waypoint's HTTP ones)
expose exactly what prometheus_client's Counter and Histogram expose for the same updates:
dashboards and Prometheus read the same bytes."""

from __future__ import annotations

import re
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client import metrics as pc_metrics
from prometheus_client.exposition import generate_latest

from ambit.dataplane.telemetry.families import Family
from ambit.dataplane.telemetry.overrides import EXTRA, Pruned

NAMES = ("reporter", "response_code", EXTRA)
# Istio's request-duration buckets (the waypoint's DURATION_BUCKETS)
DURATION_BUCKETS = (0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000,
                    600000, 1800000, 3600000)
SERIES = (("waypoint", "200", ""), ("waypoint", "503", ""), ("waypoint", "200", "team\x00a"))
# on bounds, between them, below the first, above the last finite one, zero, fractions
AMOUNTS = (0, 0.25, 0.5, 0.75, 1, 3, 5, 7.5, 10, 49.9, 50, 1000, 3600000, 3600001, 1e12)


def _registry(counter: Any, histogram: Any) -> CollectorRegistry:
    """The same updates on a counter and a histogram, served as the waypoint serves them."""
    reg = CollectorRegistry()
    reg.register(Pruned([counter, histogram]))
    for i, values in enumerate(SERIES):
        for a in AMOUNTS[i:]:
            counter.labels(*values).inc(a)
            histogram.labels(*values).observe(a)
    return reg


def _prometheus_client() -> CollectorRegistry:
    return _registry(
        Counter("istio_requests", "Requests handled by the waypoint", NAMES, registry=None),
        Histogram("istio_request_duration_milliseconds", "Request duration (ms)", NAMES,
                  buckets=DURATION_BUCKETS, registry=None))


def _families() -> CollectorRegistry:
    return _registry(
        Family("istio_requests", "Requests handled by the waypoint", "counter", NAMES),
        Family("istio_request_duration_milliseconds", "Request duration (ms)", "histogram", NAMES,
               DURATION_BUCKETS))


@pytest.mark.parametrize("created", [True, False])
def test_exposition_is_byte_identical_to_prometheus_client(created: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pc_metrics, "_use_created", created)
    want, got = generate_latest(_prometheus_client()), generate_latest(_families())
    if created:     # creation times differ between the two runs: compare them as a placeholder
        assert got.count(b"_created{") == want.count(b"_created{") == 2 * len(SERIES)
        want, got = (re.sub(rb"(_created\{.*\}) \S+", rb"\1 T", x) for x in (want, got))
    else:
        assert b"_created" not in got
    assert got == want


def test_histogram_buckets_must_be_sorted_and_kind_known() -> None:
    with pytest.raises(ValueError, match="not in sorted order"):
        Family("h", "doc", "histogram", ("a",), (5, 1))
    with pytest.raises(ValueError, match="kind 'gauge'"):
        Family("g", "doc", "gauge", ("a",))
    with pytest.raises(ValueError, match="1 label values for 2 labels"):
        Family("c", "doc", "counter", ("a", "b")).labels("x")
