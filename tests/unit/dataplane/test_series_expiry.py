"""Prometheus series of gone pods are dropped, not kept for ever (docs/operations.md, "Memory over
time"). A node's ztunnel and a namespace's waypoint label every series with the peers' workload,
principal, app and version: with pods coming and going (Jobs, bare pods, new versions) a proxy that
keeps every series it ever created grows without bound, in its own memory and in every scrape.
Series not updated for `expiry` seconds go, as Envoy's stats eviction drops unused stats; a series
still in use never does, and one counted again after it went is served again (from zero)."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from ambit.dataplane.telemetry.families import Family
from ambit.dataplane.telemetry.metrics import ConnLabels, Metrics
from ambit.model import Workload
from waypoint.http.record import RequestRecord
from waypoint.request import Downstream
from waypoint.telemetry import HttpMetrics

EXPIRY = 60.0
STEADY = ("steady", "200")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def pod(i: int) -> Workload:
    """A short-lived bare pod (a Job's, say): its own workload name, so its own series."""
    return Workload(uid=f"demo/job-{i}", name=f"job-{i}", namespace="demo", ips=[f"10.0.{i // 250}.{i % 250}"],
                    node="node1", service_account="job", identity="spiffe://cluster.local/ns/demo/sa/job",
                    labels={"app": "job", "version": f"v{i}"})


ECHO = Workload(uid="demo/echo", name="echo", namespace="demo", ips=["10.0.9.9"], node="node1",
                service_account="echo", identity="spiffe://cluster.local/ns/demo/sa/echo", labels={"app": "echo"})


def record() -> RequestRecord:
    down = Downstream(source_identity="spiffe://cluster.local/ns/demo/sa/job", source_ip="10.0.0.1",
                      destination_ip="10.96.0.10", destination_port=80, service="demo/echo",
                      hostname="echo.demo.svc.cluster.local")
    return RequestRecord(method="GET", path="/", authority="echo", protocol="HTTP/1.1", downstream=down, status=200,
                         bytes_received=0, bytes_sent=10, duration_ms=1.0, service="demo/echo")


def series(text: bytes, sample: str) -> dict[str, float]:
    """source_workload -> value of `sample`."""
    return {s.labels["source_workload"]: s.value for f in text_string_to_metric_families(text.decode())
            for s in f.samples if s.name == sample}


def test_a_family_under_churn_holds_only_recent_series_and_keeps_the_busy_one() -> None:
    clock = Clock()
    fam = Family("istio_requests", "requests", "counter", ("source_workload", "response_code"),
                 expiry=EXPIRY, clock=clock)
    for i in range(3000):                   # one new pod a second for 50 minutes, each seen once
        clock.now += 1
        fam.labels(f"job-{i}", "200").inc()
        fam.labels(*STEADY).inc()
    # At most the series of the last 1.5 expiries (a sweep every expiry/2), never all 3000.
    assert len(fam) <= 1.5 * EXPIRY + 2
    assert fam.labels(*STEADY).value == 3000


def test_a_histogram_observing_zero_is_in_use() -> None:
    clock = Clock()
    fam = Family("istio_request_bytes", "bytes", "histogram", ("source_workload", "response_code"), (1, 10),
                 expiry=EXPIRY, clock=clock)
    for i in range(600):
        clock.now += 1
        fam.labels(*STEADY).observe(0)       # the sum never moves, the count does
        fam.labels(f"job-{i}", "200").observe(0)
    assert sum(fam.labels(*STEADY).counts) == 600


def test_without_expiry_every_series_stays() -> None:
    fam = Family("istio_requests", "requests", "counter", ("source_workload", "response_code"))
    for i in range(500):
        fam.labels(f"job-{i}", "200").inc()
    assert len(fam) == 500


def test_the_waypoints_series_of_gone_pods_go_and_a_cached_series_is_not_lost() -> None:
    clock = Clock()
    m = HttpMetrics(expiry=EXPIRY, clock=clock)
    m.observe(record(), pod(0), ECHO)       # job-0 talks once, then is idle (its child stays cached)
    for i in range(1, 1000):
        clock.now += 1
        m.observe(record(), pod(i), ECHO)
    live = series(m.exposition(), "istio_requests_total")
    assert len(live) <= 1.5 * EXPIRY + 2 and "job-0" not in live
    # job-0 again (a long-lived pod that was idle): counted and served, not sent to a dropped child.
    m.observe(record(), pod(0), ECHO)
    assert series(m.exposition(), "istio_requests_total")["job-0"] == 1
    assert series(m.exposition(), "istio_request_duration_milliseconds_count")["job-0"] == 1


def test_ztunnels_series_of_gone_pods_go() -> None:
    clock = Clock()
    m = Metrics(expiry=EXPIRY, clock=clock)
    for i in range(1000):
        clock.now += 1
        labels = ConnLabels("source").source_from(pod(i)).destination_from(ECHO)
        m.conn_opened(labels)
        m.conn_closed(labels, 10, 20)
    live = series(m.exposition(), "istio_tcp_connections_opened_total")
    assert 0 < len(live) <= 1.5 * EXPIRY + 2
