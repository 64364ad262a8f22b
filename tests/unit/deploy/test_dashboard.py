"""The Grafana dashboard queries Istio's standard metric names and labels, so it also works on Istio
data and Ambit's metrics can be checked against it."""

from __future__ import annotations

import json
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
DASHBOARD = REPO / "deploy" / "grafana" / "ambit-mesh.json"

# Istio's standard metrics (https://istio.io/latest/docs/reference/config/metrics/), as Ambit emits them.
ISTIO_METRICS = {
    "istio_requests_total", "istio_request_duration_milliseconds_bucket",
    "istio_tcp_sent_bytes_total", "istio_tcp_received_bytes_total",
    "istio_tcp_connections_opened_total", "istio_tcp_connections_closed_total",
}
ISTIO_LABELS = {
    "reporter", "source_workload", "source_workload_namespace", "source_principal", "destination_service",
    "destination_workload", "destination_workload_namespace", "destination_principal", "response_code",
    "connection_security_policy", "le",
}


def load() -> dict:
    return json.loads(DASHBOARD.read_text())


def exprs(d: dict) -> list[str]:
    out = []
    for p in d["panels"]:
        out += [t["expr"] for t in p.get("targets", [])]
    out += [v["definition"] for v in d["templating"]["list"] if v["type"] == "query"]
    return out


def test_dashboard_is_valid_grafana_json_with_unique_ids_and_no_overlaps() -> None:
    d = load()
    assert d["uid"] and d["title"] and d["schemaVersion"] >= 30
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    cells = set()
    for p in d["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"panel {p['title']!r} overlaps another"
                cells.add((x, y))
    variables = {v["name"] for v in d["templating"]["list"]}
    for p in d["panels"]:
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}" and p["targets"]
    for e in exprs(d):
        for ref in re.findall(r"\$(\w+)", e):
            assert ref in variables | {"__rate_interval"}, f"undefined variable ${ref} in {e}"


def ztunnel_series() -> set[str]:
    """The sample names ztunnel's registry exposes (counters as `<name>_total`)."""
    from ambit.dataplane.telemetry.metrics import Metrics
    return {f"{fam.name}_total" for fam in Metrics().registry.collect() if fam.type == "counter"}


def test_tcp_panels_use_what_ztunnel_exports() -> None:
    from ambit.dataplane.telemetry.metrics import LABELS
    exported = ztunnel_series()
    assert exported == {m for m in ISTIO_METRICS if m.startswith("istio_tcp_")}
    for e in exprs(load()):
        if "istio_tcp_" not in e:
            continue
        assert set(re.findall(r"\b(istio_tcp_\w+)", e)) <= exported, e
        stripped = re.sub(r'"[^"]*"', '""', e)
        labels = set(re.findall(r"\b([a-z_]+)\s*(?:=~|!~|!=|=)", stripped))
        labels |= {x.strip() for grp in re.findall(r"by \(([^)]*)\)", stripped) for x in grp.split(",")}
        assert labels <= set(LABELS), f"ztunnel has no label {labels - set(LABELS)} ({e})"


def test_every_query_uses_istio_metric_names_and_labels() -> None:
    d = load()
    used = set()
    for e in exprs(d):
        assert e.count("(") == e.count(")"), e
        metrics = set(re.findall(r"\b(istio_\w+)", e))
        assert metrics, f"no Istio metric in {e}"
        assert metrics <= ISTIO_METRICS, f"not an Istio standard metric: {metrics - ISTIO_METRICS}"
        used |= metrics
        stripped = re.sub(r'"[^"]*"', '""', e)                  # label values are free text
        labels = set(re.findall(r"\b([a-z_]+)\s*(?:=~|!~|!=|=)", stripped))
        labels |= {x.strip() for grp in re.findall(r"by \(([^)]*)\)", stripped) for x in grp.split(",")}
        labels |= {x.strip() for grp in re.findall(r"label_values\([^,]+,\s*(\w+)\)", stripped) for x in [grp]}
        assert labels <= ISTIO_LABELS, f"not an Istio label: {labels - ISTIO_LABELS} in {e}"
    assert used >= {"istio_tcp_sent_bytes_total", "istio_tcp_received_bytes_total",
                    "istio_tcp_connections_opened_total", "istio_tcp_connections_closed_total",
                    "istio_requests_total"}
