"""Writes the Grafana dashboards in this directory: `python deploy/grafana/dashboards.py`.

One source for the five dashboards (mesh, service, workload, waypoint, control plane), so their
layout, variables and datasource stay consistent; the JSON files are what Grafana imports (and what
tests/unit/deploy/test_dashboard.py and tests/lab/test_observability.py read). Edit here, run it,
commit both.

Queries use Istio's standard metric names and labels (docs/observability.md), so the traffic
panels also work on Istio's own data: HTTP panels match `reporter=~"waypoint|destination"` (Ambit's
HTTP metrics come from waypoints; Istio's sidecars report `destination`). Health panels use the
`ambit_*` families and the scrape's target labels (`job`, `instance`, `node`, `namespace`, `pod`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DS = {"type": "prometheus", "uid": "${datasource}"}
RATE = "[$__rate_interval]"
HTTP = 'reporter=~"waypoint|destination"'


def variable(name: str, label: str, query: str, *, multi: bool = True) -> dict[str, Any]:
    return {"name": name, "type": "query", "datasource": DS, "label": label, "includeAll": multi, "multi": multi,
            "allValue": ".*", "query": {"query": query, "refId": name}, "definition": query, "refresh": 2,
            "sort": 1, "current": {}}


DATASOURCE = {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Data source",
              "current": {}}


class Layout:
    """Panels placed left to right, wrapping at 24 columns; `row()` starts a new titled row."""

    def __init__(self) -> None:
        self.panels: list[dict[str, Any]] = []
        self.x = self.y = 0
        self.row_h = 0
        self.next_id = 1

    def row(self, title: str) -> None:
        self._newline()
        self.panels.append({"type": "row", "title": title, "id": self._id(), "collapsed": False, "panels": [],
                            "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y}})
        self.y += 1

    def _newline(self) -> None:
        if self.x:
            self.y += self.row_h
        self.x, self.row_h = 0, 0

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    def add(self, kind: str, title: str, exprs: list[str] | str, *, unit: str = "short", w: int = 12,
            h: int = 8, legend: str = "", description: str = "") -> None:
        if self.x + w > 24:
            self._newline()
        exprs = [exprs] if isinstance(exprs, str) else exprs
        p: dict[str, Any] = {
            "type": kind, "title": title, "description": description, "datasource": DS, "id": self._id(),
            "gridPos": {"h": h, "w": w, "x": self.x, "y": self.y},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "targets": [{"refId": chr(ord("A") + i), "expr": e, "datasource": DS,
                         **({"legendFormat": legend} if legend else {})} for i, e in enumerate(exprs)],
        }
        if kind == "stat":
            p["options"] = {"reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "value"}
        elif kind == "timeseries":
            p["options"] = {"legend": {"displayMode": "table", "placement": "bottom"}, "tooltip": {"mode": "multi"}}
        elif kind == "table":
            for t in p["targets"]:
                t["format"], t["instant"] = "table", True
        self.panels.append(p)
        self.x += w
        self.row_h = max(self.row_h, h)


def dashboard(uid: str, title: str, description: str, tags: list[str], variables: list[dict[str, Any]],
              layout: Layout) -> dict[str, Any]:
    return {"title": title, "uid": uid, "description": description, "tags": ["ambit", *tags], "schemaVersion": 39,
            "version": 1, "editable": True, "time": {"from": "now-30m", "to": "now"}, "refresh": "10s",
            "templating": {"list": [DATASOURCE, *variables]}, "annotations": {"list": []}, "panels": layout.panels}


def q(metric: str, sel: str, by: str = "", rate: bool = True, agg: str = "sum") -> str:
    inner = f"rate({metric}{{{sel}}}{RATE})" if rate else f"{metric}{{{sel}}}"
    return f"{agg} by ({by}) ({inner})" if by else f"{agg}({inner})"


def quantiles(metric: str, sel: str, by: str) -> list[str]:
    return [f"histogram_quantile({p}, sum by (le, {by}) (rate({metric}{{{sel}}}{RATE})))" for p in ("0.50", "0.90", "0.99")]


# --- mesh --------------------------------------------------------------------------------------------

def mesh() -> dict[str, Any]:
    ns = 'destination_workload_namespace=~"$namespace", destination_service=~"$service"'
    tcp = f'reporter="destination", {ns}'
    http = f"{HTTP}, {ns}"
    lay = Layout()
    lay.row("Mesh overview")
    lay.add("stat", "TCP connections opened /s", q("istio_tcp_connections_opened_total", tcp), unit="cps", w=4, h=4)
    lay.add("stat", "Bytes received /s", q("istio_tcp_received_bytes_total", tcp), unit="Bps", w=4, h=4)
    lay.add("stat", "Bytes sent /s", q("istio_tcp_sent_bytes_total", tcp), unit="Bps", w=4, h=4)
    lay.add("stat", "mTLS share of new connections",
            f'{q("istio_tcp_connections_opened_total", tcp + ", connection_security_policy=" + chr(34) + "mutual_tls" + chr(34))}'
            f' / {q("istio_tcp_connections_opened_total", tcp)}', unit="percentunit", w=4, h=4)
    lay.add("stat", "HTTP requests /s", q("istio_requests_total", http), unit="reqps", w=4, h=4)
    lay.add("stat", "HTTP success rate (non-5xx)",
            f'{q("istio_requests_total", http + ", response_code!~" + chr(34) + "5.." + chr(34))} / {q("istio_requests_total", http)}',
            unit="percentunit", w=4, h=4)
    lay.row("TCP (ztunnel, L4)")
    lay.add("timeseries", "Connections opened by service", q("istio_tcp_connections_opened_total", tcp, "destination_service"),
            unit="cps", legend="{{destination_service}}")
    lay.add("timeseries", "Connections closed by service", q("istio_tcp_connections_closed_total", tcp, "destination_service"),
            unit="cps", legend="{{destination_service}}")
    lay.add("timeseries", "Bytes received by service (client -> service)",
            q("istio_tcp_received_bytes_total", tcp, "destination_service"), unit="Bps", legend="{{destination_service}}")
    lay.add("timeseries", "Bytes sent by service (service -> client)",
            q("istio_tcp_sent_bytes_total", tcp, "destination_service"), unit="Bps", legend="{{destination_service}}")
    lay.add("timeseries", "Connections by source workload and security policy",
            q("istio_tcp_connections_opened_total", tcp, "source_workload, source_workload_namespace, connection_security_policy"),
            unit="cps", w=24, legend="{{source_workload_namespace}}/{{source_workload}} {{connection_security_policy}}")
    lay.row("HTTP (waypoints, L7)")
    lay.add("timeseries", "Requests by service and response code", q("istio_requests_total", http, "destination_service, response_code"),
            unit="reqps", legend="{{destination_service}} {{response_code}}")
    lay.add("timeseries", "Non-5xx success rate by service",
            f'{q("istio_requests_total", http + ", response_code!~" + chr(34) + "5.." + chr(34), "destination_service")}'
            f' / {q("istio_requests_total", http, "destination_service")}', unit="percentunit", legend="{{destination_service}}")
    lay.add("timeseries", "Request duration by service (p50, p90, p99)",
            quantiles("istio_request_duration_milliseconds_bucket", http, "destination_service"), unit="ms", w=24,
            legend="{{destination_service}}")
    return dashboard("ambit-mesh", "Ambit mesh",
                     "Service traffic through Ambit's ztunnels (TCP) and waypoints (HTTP), from Istio's standard metrics.",
                     ["istio", "mesh"],
                     [variable("namespace", "Namespace", "label_values(istio_tcp_connections_opened_total, destination_workload_namespace)"),
                      variable("service", "Service", 'label_values(istio_tcp_connections_opened_total{destination_workload_namespace=~"$namespace"}, destination_service)')],
                     lay)


# --- service -----------------------------------------------------------------------------------------

def service() -> dict[str, Any]:
    sel = 'destination_service_namespace=~"$namespace", destination_service_name=~"$service"'
    http, tcp = f"{HTTP}, {sel}", f'reporter="destination", {sel}'
    lay = Layout()
    lay.row("HTTP (through waypoints)")
    lay.add("stat", "Requests /s", q("istio_requests_total", http), unit="reqps", w=6, h=4)
    lay.add("stat", "Success rate (non-5xx)",
            f'{q("istio_requests_total", http + ", response_code!~" + chr(34) + "5.." + chr(34))} / {q("istio_requests_total", http)}',
            unit="percentunit", w=6, h=4)
    lay.add("stat", "p99 duration", f"histogram_quantile(0.99, sum by (le) (rate(istio_request_duration_milliseconds_bucket{{{http}}}{RATE})))",
            unit="ms", w=6, h=4)
    lay.add("stat", "Client workloads", f"count(count by (source_workload, source_workload_namespace) (istio_requests_total{{{http}}}))",
            w=6, h=4)
    lay.add("timeseries", "Requests by response code", q("istio_requests_total", http, "response_code"), unit="reqps",
            legend="{{response_code}}")
    lay.add("timeseries", "Requests by client workload", q("istio_requests_total", http, "source_workload, source_workload_namespace"),
            unit="reqps", legend="{{source_workload_namespace}}/{{source_workload}}")
    lay.add("timeseries", "Requests by destination version (canonical revision)",
            q("istio_requests_total", http, "destination_canonical_service, destination_canonical_revision"), unit="reqps",
            legend="{{destination_canonical_service}} {{destination_canonical_revision}}")
    lay.add("timeseries", "Duration (p50, p90, p99)", quantiles("istio_request_duration_milliseconds_bucket", http, "destination_service_name"),
            unit="ms")
    lay.add("timeseries", "Request size (p50, p90, p99)", quantiles("istio_request_bytes_bucket", http, "destination_service_name"),
            unit="decbytes")
    lay.add("timeseries", "Response size (p50, p90, p99)", quantiles("istio_response_bytes_bucket", http, "destination_service_name"),
            unit="decbytes")
    lay.row("TCP (ztunnels)")
    lay.add("timeseries", "Connections opened by client workload",
            q("istio_tcp_connections_opened_total", tcp, "source_workload, source_workload_namespace"), unit="cps",
            legend="{{source_workload_namespace}}/{{source_workload}}")
    lay.add("timeseries", "Connections closed by response flags", q("istio_tcp_connections_closed_total", tcp, "response_flags"),
            unit="cps", legend="{{response_flags}}")
    lay.add("timeseries", "Bytes received (client -> service)", q("istio_tcp_received_bytes_total", tcp, "destination_workload"),
            unit="Bps", legend="{{destination_workload}}")
    lay.add("timeseries", "Bytes sent (service -> client)", q("istio_tcp_sent_bytes_total", tcp, "destination_workload"),
            unit="Bps", legend="{{destination_workload}}")
    return dashboard("ambit-service", "Ambit service",
                     "One service: its HTTP requests (waypoint) and TCP connections (destination ztunnel), by client and version.",
                     ["istio", "service"],
                     [variable("namespace", "Namespace", "label_values(istio_tcp_connections_opened_total, destination_service_namespace)"),
                      variable("service", "Service", 'label_values(istio_tcp_connections_opened_total{destination_service_namespace=~"$namespace"}, destination_service_name)')],
                     lay)


# --- workload ----------------------------------------------------------------------------------------

def workload() -> dict[str, Any]:
    inbound = 'reporter="destination", destination_workload_namespace=~"$namespace", destination_workload=~"$workload"'
    outbound = 'reporter="source", source_workload_namespace=~"$namespace", source_workload=~"$workload"'
    http_in = f'{HTTP}, destination_workload_namespace=~"$namespace", destination_workload=~"$workload"'
    http_out = f'{HTTP}, source_workload_namespace=~"$namespace", source_workload=~"$workload"'
    lay = Layout()
    lay.row("Inbound (to the workload)")
    lay.add("timeseries", "Inbound TCP connections by source", q("istio_tcp_connections_opened_total", inbound, "source_workload, connection_security_policy"),
            unit="cps", legend="{{source_workload}} {{connection_security_policy}}")
    lay.add("timeseries", "Inbound bytes (received, sent)",
            [q("istio_tcp_received_bytes_total", inbound), q("istio_tcp_sent_bytes_total", inbound)], unit="Bps")
    lay.add("timeseries", "Inbound HTTP requests by source and code", q("istio_requests_total", http_in, "source_workload, response_code"),
            unit="reqps", legend="{{source_workload}} {{response_code}}")
    lay.add("timeseries", "Inbound HTTP duration (p50, p90, p99)", quantiles("istio_request_duration_milliseconds_bucket", http_in, "destination_workload"),
            unit="ms")
    lay.row("Outbound (from the workload)")
    lay.add("timeseries", "Outbound TCP connections by destination service",
            q("istio_tcp_connections_opened_total", outbound, "destination_service"), unit="cps", legend="{{destination_service}}")
    lay.add("timeseries", "Outbound bytes (sent to, received from)",
            [q("istio_tcp_received_bytes_total", outbound), q("istio_tcp_sent_bytes_total", outbound)], unit="Bps")
    lay.add("timeseries", "Outbound HTTP requests by destination and code (via waypoints)",
            q("istio_requests_total", http_out, "destination_service, response_code"), unit="reqps", w=24,
            legend="{{destination_service}} {{response_code}}")
    return dashboard("ambit-workload", "Ambit workload",
                     "One workload: inbound and outbound TCP (ztunnel reporters) and HTTP (waypoint).", ["istio", "workload"],
                     [variable("namespace", "Namespace", "label_values(istio_tcp_connections_opened_total, destination_workload_namespace)"),
                      variable("workload", "Workload", 'label_values(istio_tcp_connections_opened_total{destination_workload_namespace=~"$namespace"}, destination_workload)')],
                     lay)


# --- waypoint ----------------------------------------------------------------------------------------

# envoy_cluster_* panels: the waypoint's per-cluster resilience stats (issue 12). Listed by title in
# tests/lab/test_observability.py until a lab test produces retries, ejections and overflows.
ENVOY_CLUSTER_PANELS = ("Retries by cluster", "Outlier ejections active by cluster", "Pending overflows by cluster",
                        "Active requests by cluster")


def waypoint() -> dict[str, Any]:
    wp = 'job="waypoint", namespace=~"$namespace", gateway=~"$waypoint"'
    # an ingress gateway (job "waypoint" too) reports as Istio's gateways, reporter="source"
    http = f'reporter=~"waypoint|source", {wp}'
    lay = Layout()
    lay.row("Health")
    lay.add("stat", "Waypoints up", f"sum(up{{{wp}}})", w=6, h=4)
    lay.add("stat", "Config stream connected", f"min(ambit_config_connected{{{wp}}})", w=6, h=4)
    lay.add("stat", "Certificate expires in", f"min(ambit_certificate_expiry_seconds{{{wp}}})", unit="s", w=6, h=4)
    lay.add("stat", "Config age", f"max(time() - ambit_config_last_update_timestamp_seconds{{{wp}}})", unit="s", w=6, h=4)
    lay.row("Requests")
    lay.add("timeseries", "Requests by waypoint and response code", q("istio_requests_total", http, "pod, response_code"),
            unit="reqps", legend="{{pod}} {{response_code}}")
    lay.add("timeseries", "Requests by destination service and version",
            q("istio_requests_total", http, "destination_service, destination_version"), unit="reqps",
            legend="{{destination_service}} {{destination_version}}")
    lay.add("timeseries", "Requests by response flags", q("istio_requests_total", http, "response_flags"), unit="reqps",
            legend="{{response_flags}}", description="- means none; NR no route, UH no healthy upstream, UF connect failure, URX retries exhausted")
    lay.add("timeseries", "Requests by protocol", q("istio_requests_total", http, "request_protocol"), unit="reqps",
            legend="{{request_protocol}}")
    lay.add("timeseries", "Duration (p50, p90, p99)", quantiles("istio_request_duration_milliseconds_bucket", http, "pod"), unit="ms", w=24)
    lay.row("Opaque TCP (traffic the waypoint relays without parsing HTTP)")
    lay.add("timeseries", "TCP connections opened by destination service",
            q("istio_tcp_connections_opened_total", http, "destination_service"), unit="cps", legend="{{destination_service}}")
    lay.add("timeseries", "TCP bytes received and sent",
            [q("istio_tcp_received_bytes_total", http), q("istio_tcp_sent_bytes_total", http)], unit="Bps")
    lay.row("Upstream clusters (Envoy's cluster stats)")
    lay.add("timeseries", ENVOY_CLUSTER_PANELS[0], f"sum by (cluster_name) (rate(envoy_cluster_upstream_rq_retry{{{wp}}}{RATE}))",
            unit="reqps", legend="{{cluster_name}}")
    lay.add("timeseries", ENVOY_CLUSTER_PANELS[1], f"sum by (cluster_name) (envoy_cluster_outlier_detection_ejections_active{{{wp}}})",
            legend="{{cluster_name}}")
    lay.add("timeseries", ENVOY_CLUSTER_PANELS[2], f"sum by (cluster_name) (rate(envoy_cluster_upstream_rq_pending_overflow{{{wp}}}{RATE}))",
            unit="reqps", legend="{{cluster_name}}")
    lay.add("timeseries", ENVOY_CLUSTER_PANELS[3], f"sum by (cluster_name) (envoy_cluster_upstream_rq_active{{{wp}}})",
            legend="{{cluster_name}}")
    return dashboard("ambit-waypoint", "Ambit waypoint",
                     "Waypoints (L7 proxies): health, requests they route, and their upstream clusters.", ["istio", "waypoint"],
                     [variable("namespace", "Namespace", 'label_values(up{job="waypoint"}, namespace)'),
                      variable("waypoint", "Waypoint", 'label_values(up{job="waypoint", namespace=~"$namespace"}, gateway)')],
                     lay)


# --- control plane -----------------------------------------------------------------------------------

def control_plane() -> dict[str, Any]:
    ctl = 'job="controller"'
    dp = 'job=~"ztunnel|waypoint", node=~"$node"'
    lay = Layout()
    lay.row("Controller")
    lay.add("stat", "Controller up", f"sum(up{{{ctl}}})", w=4, h=4)
    lay.add("stat", "Connected subscribers", f"sum(ambit_config_connected_subscribers{{{ctl}}})", w=4, h=4)
    lay.add("stat", "Config versions served", f"count(ambit_config_version_info{{{ctl}}})", w=4, h=4)
    lay.add("stat", "CA certificates issued", f"sum(ambit_ca_certificates_issued_total{{{ctl}}})", w=4, h=4)
    lay.add("stat", "CA requests refused", f"sum(ambit_ca_requests_refused_total{{{ctl}}})", w=4, h=4)
    lay.add("stat", "CA certificate expires in", f"min(ambit_certificate_expiry_seconds{{{ctl}}})", unit="s", w=4, h=4)
    lay.add("timeseries", "Config pushes by type", q("ambit_config_pushes_total", ctl, "type_url"), unit="ops",
            legend="{{type_url}}")
    lay.add("timeseries", "Config push latency (p50, p99)",
            [f"histogram_quantile({p}, sum by (le) (rate(ambit_config_push_latency_seconds_bucket{{{ctl}}}{RATE})))"
             for p in ("0.50", "0.99")], unit="s")
    lay.add("timeseries", "Subscribers by kind", f"sum by (kind) (ambit_config_connected_subscribers{{{ctl}}})",
            legend="{{kind}}")
    lay.add("timeseries", "Config snapshots translated /s", q("ambit_config_updates_total", ctl), unit="ops")
    lay.row("Data plane (ztunnels and waypoints)")
    lay.add("table", "Config version per proxy and type",
            f'ambit_config_version_info{{{dp}}}', w=24)
    lay.add("timeseries", "Config stream connected", f"ambit_config_connected{{{dp}}}", legend="{{instance}}")
    lay.add("timeseries", "Config age", f"time() - ambit_config_last_update_timestamp_seconds{{{dp}}}", unit="s",
            legend="{{instance}}")
    lay.add("timeseries", "Certificate expires in (earliest per proxy)", f"ambit_certificate_expiry_seconds{{{dp}}}",
            unit="s", legend="{{instance}}")
    lay.add("timeseries", "Certificates by state", f"sum by (instance, state) (ambit_certificates{{{dp}}})",
            legend="{{instance}} {{state}}")
    lay.add("timeseries", "Open connections (ztunnel)", f'sum by (node, direction) (ambit_connections_open{{{dp}}})',
            legend="{{node}} {{direction}}")
    lay.add("timeseries", "Connections refused by limit (ztunnel)",
            f"sum by (node, limit) (rate(ambit_connections_refused_total{{{dp}}}{RATE}))", unit="cps",
            legend="{{node}} {{limit}}")
    lay.add("timeseries", "Pooled HBONE connections (ztunnel)", f"sum by (node) (ambit_hbone_pool_connections{{{dp}}})",
            legend="{{node}}")
    lay.add("timeseries", "Targets up", 'up{job=~"ztunnel|waypoint|controller"}', legend="{{job}} {{instance}}")
    # The node agent's families reach Prometheus through ztunnel's scrape (--merge-metrics-from).
    node = 'job="ztunnel", node=~"$node"'
    lay.row("Capture (node agents) and handshakes")
    lay.add("stat", "Enrolled pods not captured", f"sum(ambit_agent_uncaptured_pods{{{node}}})", w=6, h=8,
            description="Running pods of enrolled namespaces whose capture failed: plaintext from outside the mesh "
                        "reaches them, whatever PeerAuthentication says, until they are repaired "
                        "(agent --repair-pods; alert AmbitPodsUncaptured). Should be 0.")
    lay.add("timeseries", "Pods not captured, per node", f"sum by (node) (ambit_agent_uncaptured_pods{{{node}}})",
            w=9, legend="{{node}}")
    lay.add("timeseries", "Repairs of uncaptured pods", q("ambit_agent_pod_repairs_total", node, "action, result"),
            unit="ops", w=9, legend="{{action}} {{result}}",
            description="failed: the API server refused (RBAC?); limited: held back by the repair rate")
    lay.add("timeseries", "Inbound handshakes that waited for a certificate",
            q("ambit_handshake_certificate_waits_total", dp, "instance, outcome"), unit="ops",
            legend="{{instance}} {{outcome}}",
            description="came: the certificate arrived and the handshake went on; none: refused at the "
                        "handshake deadline (a CA that does not sign for this node's pods)")
    lay.add("timeseries", "Event-loop stalls (past 1 s)",
            f'sum by (instance) (rate(ambit_event_loop_stalls_total{{{dp}, severity="mega_miss"}}{RATE}))',
            unit="ops", legend="{{instance}}",
            description="A proxy's event loop blocked for over a second (its stack is in the proxy's log; past "
                        "--watchdog-kill-after it aborts and restarts; alert AmbitEventLoopStalling)")
    lay.add("timeseries", "Longest event-loop stall since start", f"ambit_event_loop_longest_stall_seconds{{{dp}}}",
            unit="s", legend="{{instance}}")
    lay.add("timeseries", "Scrapes without the node agent's metrics", q("ambit_metrics_merge_failures_total", node,
            "node, reason"), unit="ops", legend="{{node}} {{reason}}",
            description="ztunnel served its own metrics without the agent's (alert AmbitMetricsMergeFailing): "
                        "the capture panels above are blind for that node meanwhile")
    return dashboard("ambit-control-plane", "Ambit control plane",
                     "The controller (config stream, CA) and every proxy's own health (ambit_* metrics).",
                     ["control-plane"], [variable("node", "Node", 'label_values(up{job="ztunnel"}, node)')], lay)


DASHBOARDS = {"ambit-mesh.json": mesh, "ambit-service.json": service, "ambit-workload.json": workload,
              "ambit-waypoint.json": waypoint, "ambit-control-plane.json": control_plane}


def render() -> dict[str, str]:
    return {name: json.dumps(make(), indent=1) + "\n" for name, make in DASHBOARDS.items()}


if __name__ == "__main__":
    for name, text in render().items():
        (HERE / name).write_text(text)
        print(f"wrote {HERE / name}")
