"""The Grafana dashboards in deploy/grafana/: valid Grafana JSON, generated from dashboards.py, and
querying only metric names and labels that something exports (Istio's standard metrics as ztunnel
and the waypoint export them, the `ambit_*` health families, Envoy's cluster stats, and the target
labels of the scrape). tests/lab/test_observability.py runs every query against a real Prometheus."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
GRAFANA = REPO / "deploy" / "grafana"
NAMES = ("ambit-mesh.json", "ambit-service.json", "ambit-workload.json", "ambit-waypoint.json",
         "ambit-control-plane.json")

ISTIO_METRICS = {
    "istio_requests_total", "istio_request_duration_milliseconds_bucket", "istio_request_bytes_bucket",
    "istio_response_bytes_bucket", "istio_tcp_sent_bytes_total", "istio_tcp_received_bytes_total",
    "istio_tcp_connections_opened_total", "istio_tcp_connections_closed_total",
}
TARGET_LABELS = {"job", "instance", "namespace", "pod", "node", "component", "app", "gateway"}
PROMQL_WORDS = {"le"}


def generator():
    spec = importlib.util.spec_from_file_location("dashboards", GRAFANA / "dashboards.py")
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def load(name: str) -> dict:
    return json.loads((GRAFANA / name).read_text())


def exprs(d: dict) -> list[str]:
    out = []
    for p in d["panels"]:
        out += [t["expr"] for t in p.get("targets", [])]
    out += [v["definition"] for v in d["templating"]["list"] if v["type"] == "query"]
    return out


def exported() -> tuple[set[str], set[str]]:
    """(sample names, label names) the components' registries export."""
    from prometheus_client import CollectorRegistry

    from ambit.dataplane.telemetry.health import HealthCollector
    from ambit.dataplane.telemetry.metrics import LABELS, Metrics
    from controller.configserver.metrics import ConfigMetrics
    from controller.health import ControllerHealth
    from waypoint.telemetry.metrics import HTTP_LABELS, HttpMetrics
    names: set[str] = set()
    r = CollectorRegistry()
    Metrics(r)
    HttpMetrics(r)
    ConfigMetrics(r)
    for fam in r.collect():
        names |= {f"{fam.name}{s}" for s in ("", "_total", "_bucket", "_sum", "_count")}
    # the health collectors, with every part present (fakes with the real objects' shape)
    client = type("Client", (), {"connected": True, "updates": 1, "last_update": 1.0,
                                 "versions": lambda self: {"ambit.io/Workload": "v1"}})()
    certs = type("Certs", (), {"expiries": lambda self: {"a": 2.0}})()
    health = HealthCollector(config=client, certs=certs, connections=lambda: {"inbound": 0},
                             refused=lambda: {"x": 0}, pool=lambda: 0)
    from controller.ca.authority import CertificateAuthority, generate_root
    servicer = type("S", (), {"ca": CertificateAuthority(generate_root("cluster.local"), "cluster.local"),
                              "issued": 0, "refused": {}})()
    ctl = type("Ctl", (), {"version": "v", "last_applied_at": 1.0, "snapshots": 1})()
    # the node agent's, merged into ztunnel's scrape, and the merge's own failure counter
    from agent.metrics import AgentMetrics
    from ambit.dataplane.telemetry.merge import MergeFailures
    from ambit.dataplane.watchdog import Watchdog
    for fam in AgentMetrics().registry.collect():
        names |= {s.name for s in fam.samples}
    waits = HealthCollector(config=client, certificate_waits=lambda: {"came": 0, "none": 0})
    for c in (health, ControllerHealth(ctl, servicer), MergeFailures("x"), waits, Watchdog()):
        for fam in c.collect():
            names |= {s.name for s in fam.samples}
    names.add("up")         # Prometheus's own, per target
    labels = set(LABELS) | set(HTTP_LABELS) | {"type_url", "kind", "type", "version", "state", "direction", "limit",
                                               "code", "cluster_name", "action", "result", "outcome", "reason", "severity"}
    return names, labels


def test_the_json_files_are_what_dashboards_py_writes() -> None:
    rendered = generator().render()
    assert sorted(rendered) == sorted(NAMES)
    for name, text in rendered.items():
        assert (GRAFANA / name).read_text() == text, f"{name} is stale: run python deploy/grafana/dashboards.py"


def test_dashboards_are_valid_grafana_json_with_unique_ids_and_no_overlaps() -> None:
    uids = set()
    for name in NAMES:
        d = load(name)
        assert d["uid"] and d["title"] and d["schemaVersion"] >= 30 and d["uid"] not in uids
        uids.add(d["uid"])
        ids = [p["id"] for p in d["panels"]]
        assert len(ids) == len(set(ids)), name
        cells = set()
        for p in d["panels"]:
            g = p["gridPos"]
            assert 0 <= g["x"] and g["x"] + g["w"] <= 24
            for x in range(g["x"], g["x"] + g["w"]):
                for y in range(g["y"], g["y"] + g["h"]):
                    assert (x, y) not in cells, f"{name}: panel {p['title']!r} overlaps another"
                    cells.add((x, y))
        variables = {v["name"] for v in d["templating"]["list"]}
        for p in d["panels"]:
            if p["type"] != "row":
                assert p["datasource"]["uid"] == "${datasource}" and p["targets"], (name, p["title"])
        for e in exprs(d):
            assert e.count("(") == e.count(")"), e
            for ref in re.findall(r"\$(\w+)", e):
                assert ref in variables | {"__rate_interval"}, f"{name}: undefined variable ${ref} in {e}"


def test_every_query_names_only_exported_metrics_and_labels() -> None:
    names, labels = exported()
    envoy = {"envoy_cluster_upstream_rq_retry", "envoy_cluster_outlier_detection_ejections_active",
             "envoy_cluster_upstream_rq_pending_overflow", "envoy_cluster_upstream_rq_active"}
    used: set[str] = set()
    for name in NAMES:
        for e in exprs(load(name)):
            stripped = re.sub(r'"[^"]*"', '""', e)                  # label values are free text
            metrics = set(re.findall(r"\b((?:istio|ambit|envoy_cluster)_\w+|up)\b(?=\s*[{\[),])", stripped))
            assert metrics, f"{name}: no metric in {e}"
            unknown = metrics - names - envoy
            assert not unknown, f"{name}: nothing exports {unknown} ({e})"
            used |= metrics
            found = set(re.findall(r"\b([a-z_]+)\s*(?:=~|!~|!=|=)", stripped))
            found |= {x.strip() for grp in re.findall(r"by \(([^)]*)\)", stripped) for x in grp.split(",")}
            found |= set(re.findall(r"label_values\([^,]+,\s*(\w+)\)", stripped))
            assert found <= labels | TARGET_LABELS | PROMQL_WORDS, f"{name}: no such label {found - labels - TARGET_LABELS} in {e}"
    assert ISTIO_METRICS <= used
