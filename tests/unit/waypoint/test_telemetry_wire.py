"""The waypoint's telemetry for real requests: a real client through the engine on loopback, the
route chosen by the real route table (controller translation), and the labels read back from the
Prometheus exposition, compared with what Istio's proxy reports in the same case."""

from __future__ import annotations

import dataclasses
import random
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.unit.waypoint.harness import Origin, Proxy
from tests.unit.waypoint.support import namespace, service, table_of, to
from waypoint.request import Decision, Downstream, Forward, RequestHead
from waypoint.routing import route
from waypoint.telemetry import HttpMetrics

NS = "demo"


def _vs(dest_host: str) -> dict[str, Any]:
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "r", "namespace": NS},
            "spec": {"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": dest_host}}]}]}}


SERVICE_ENTRY = {
    "apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry", "metadata": {"name": "ext", "namespace": NS},
    "spec": {"hosts": ["api.example.com"], "location": "MESH_EXTERNAL", "resolution": "DNS",
             "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}]}}


@pytest.fixture(scope="module")
def origin() -> Iterator[Origin]:
    o = Origin()
    yield o
    o.close()


def _through(origin: Origin, objs: list[dict[str, Any]]) -> dict[str, str]:
    """One GET to Service demo/reviews through the engine, routed by `objs`' route table (the
    chosen backend reached on the local origin); the istio_requests_total labels it counted."""
    table = table_of([namespace(NS, **{"ambit.io/dataplane-mode": "ambient"}),
                      service("reviews", NS, {"http": 80}, ip="10.96.0.11"), *objs])

    def decide(head: RequestHead, down: Downstream) -> Decision:
        d = route(table, head, to("reviews", ns=NS), random.Random(1))
        assert isinstance(d, Forward), d
        return dataclasses.replace(d, port=origin.port)

    proxy = Proxy(decide)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{proxy.port}/", timeout=5) as r:
            assert r.status == 200
        (rec,) = proxy.find(lambda r: True)
    finally:
        proxy.close()
    m = HttpMetrics()
    m.observe(rec, None, None)
    fams = {f.name: f.samples for f in text_string_to_metric_families(m.exposition().decode())}
    (sample,) = [s for s in fams["istio_requests"] if s.name == "istio_requests_total"]
    return sample.labels


def test_a_request_routed_to_a_service_entry_reports_its_host_as_destination_service(origin: Origin) -> None:
    """Istio names the destination by the ServiceEntry's host; the waypoint made up
    `api.example.com.demo.svc.cluster.local`, a Service no dashboard or SLO selects."""
    labels = _through(origin, [SERVICE_ENTRY, _vs("api.example.com")])
    assert labels["destination_service"] == "api.example.com"
    assert labels["destination_service_name"] == "api.example.com"
    assert labels["destination_service_namespace"] == NS


def test_a_request_routed_to_another_service_reports_that_services_fqdn(origin: Origin) -> None:
    labels = _through(origin, [service("ratings", NS, {"http": 80}, ip="10.96.0.12"), _vs("ratings")])
    assert labels["destination_service"] == "ratings.demo.svc.cluster.local"
    assert labels["destination_service_name"] == "ratings"
