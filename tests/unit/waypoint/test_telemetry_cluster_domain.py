"""The waypoint's metrics name a Service without a host of its own (a tunnel to `ns/name`) by its
FQDN under the waypoint's `--cluster-domain`, as the controller names it: under cluster.local in
another cluster's domain, `destination_service` selected no Service a dashboard or SLO names."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from waypoint.app import WaypointProxy
from waypoint.authz import Waypoint
from waypoint.config import WaypointConfig
from waypoint.http.record import RequestRecord
from waypoint.request import Downstream
from waypoint.settings import load
from waypoint.telemetry import HttpMetrics


def test_a_services_fqdn_in_metrics_is_under_the_waypoints_cluster_domain() -> None:
    s = load(["--waypoint", "demo/waypoint", "--pod-name", "waypoint-0", "--node", "n1",
              "--cluster-domain", "corp.example"], {})
    m = HttpMetrics()       # as the waypoint's process edge makes it (waypoint/serve.py)
    p = WaypointProxy(s, WaypointConfig(Waypoint("demo", "waypoint"), s.trust_domain, s.cluster_domain), None,
                      http_metrics=m)
    down = Downstream(source_ip="10.1.0.7", destination_port=80, service="demo/echo")
    rec = RequestRecord("GET", "/", "echo", "HTTP/1.1", down, status=200, upstream="10.1.0.9:8080")
    p.telemetry.stats(rec)
    fams = {f.name: f.samples for f in text_string_to_metric_families(m.exposition().decode())}
    (sample,) = [x for x in fams["istio_requests"] if x.name == "istio_requests_total"]
    assert sample.labels["destination_service"] == "echo.demo.svc.corp.example"
    # an opaque tunnel routed to a Service (a TCP route's backend) is named alike
    rec = RequestRecord("CONNECT", "", "", "", down, status=200, service="demo/db", upstream="10.1.0.9:5432")
    assert p.telemetry.tcp_labels(rec).values()["destination_service"] == "db.demo.svc.corp.example"
