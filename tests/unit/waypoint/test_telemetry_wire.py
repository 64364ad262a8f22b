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


def test_an_ingress_gateway_reports_as_istios_gateways_the_source_side_with_its_own_workload() -> None:
    """Istio's ingress gateways report the requests they send on with `reporter="source"` and
    themselves as the source (Kiali's ingress node, the dashboards' "requests from the gateway");
    the gateway reported `reporter="waypoint"` and an `unknown` source for every client outside
    the mesh, and `mutual_tls` for a client presenting a certificate."""
    from ambit.configclient import ConfigUpdate
    from ambit.model import IngressGateway, Workload
    from waypoint.app import WaypointProxy
    from waypoint.authz import Waypoint
    from waypoint.config import WaypointConfig
    from waypoint.http.record import RequestRecord
    from waypoint.settings import load

    gw_pod = Workload(uid="u-gw", name="gw-0", namespace="ns", ips=["10.1.0.5"], node="node1",
                      service_account="gw-ambit", identity="spiffe://cluster.local/ns/ns/sa/gw-ambit",
                      labels={"app": "gw", "service.istio.io/canonical-name": "gw-ambit"})
    echo = Workload(uid="u-echo", name="echo-1", namespace="demo", ips=["10.1.0.9"], node="node1",
                    service_account="echo", identity="spiffe://cluster.local/ns/demo/sa/echo", labels={"app": "echo"})
    cfg = WaypointConfig(Waypoint("ns", "gw"), "cluster.local")
    cfg.apply(ConfigUpdate(IngressGateway.TYPE, "1", {}, frozenset(), {"ns/gw": IngressGateway("gw", "ns")}))
    cfg.apply(ConfigUpdate(Workload.TYPE, "1", {}, frozenset(), {w.uid: w for w in (gw_pod, echo)}))
    m = HttpMetrics()
    p = WaypointProxy(load(["--waypoint", "ns/gw", "--pod-name", "gw-0", "--node", "node1",
                            "--gateway-class", "ambit"]), cfg, None, http_metrics=m)
    # a client on the internet, with a client certificate (a MUTUAL listener)
    down = Downstream(source_ip="198.51.100.7", source_identity="spiffe://partner.example/client",
                      destination_port=443, listener="https")
    rec = RequestRecord("GET", "/", "shop.example.com", "HTTP/1.1", down, status=200, service="demo/echo",
                        upstream="10.1.0.9:8080")
    p.telemetry.stats(rec)
    fams = {f.name: f.samples for f in text_string_to_metric_families(m.exposition().decode())}
    (s,) = [s for s in fams["istio_requests"] if s.name == "istio_requests_total"]
    got = s.labels
    assert got["reporter"] == "source"
    assert (got["source_workload"], got["source_workload_namespace"], got["source_canonical_service"]) == \
        ("gw-0", "ns", "gw-ambit")
    assert got["source_principal"] == "spiffe://cluster.local/ns/ns/sa/gw-ambit"
    assert got["connection_security_policy"] == "unknown"
    assert (got["destination_workload"], got["destination_service"]) == ("echo-1", "echo.demo.svc.cluster.local")
    tcp = p.telemetry.tcp_labels(rec).values()      # a TLS-passthrough or TCP route's connection
    assert (tcp["reporter"], tcp["source_workload"], tcp["connection_security_policy"]) == ("source", "gw-0", "unknown")
