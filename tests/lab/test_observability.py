"""Metrics the way a user reads them: a real Prometheus (`ambit lab up --prometheus`, Debian's
package) scraping the controller, both ztunnels and a waypoint of a real lab, queried over its HTTP
API (/api/v1/query) after real traffic: L4 through ztunnels (namespace `shop`) and HTTP through a
waypoint (namespace `default`). Then every panel of every dashboard in deploy/grafana/ is run
against it, and must return data.

Layout (tests/lab/specs/observability.yaml): shop/shopper (node1) -> cart (cart-v1 on node2,
canonical name/revision from Istio's labels); default/frontend (node1) -> myapp (v1 node1, v2 node2)
and shop/shopper -> frontend through the waypoint on node2; myapp-v1 -> cart at L4. (A pod calling
its own Service through the waypoint is refused when the waypoint picks that same pod: ztunnel
rejects `Forwarded: for=<its own IP>`; so no pod here does.)
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from ambitctl.commands import install
from ambitctl.lab.components import AGENT_ARGS_ENV, ZTUNNEL_ARGS_ENV
from ambitctl.lab.prometheus import query
from tests.lab.labctl import Lab, running_lab
from tests.unit.dataplane.test_istio_labels import HTTP_ONLY, ISTIO_DOC_LABELS

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root")

SPEC = Path(__file__).parent / "specs" / "observability.yaml"
GRAFANA = Path(__file__).resolve().parents[2] / "deploy" / "grafana"
GATEWAY = {
    "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
    "metadata": {"name": "waypoint", "namespace": "default", "labels": {"ambit.io/waypoint-for": "service"},
                 "annotations": {"lab.ambit.io/node": "node2"}},
    "spec": {"gatewayClassName": "ambit-waypoint", "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]},
}
# A config change just before the queries, so the controller's push-latency histogram has
# observations in the last minute (its panels are rates over the dashboard's interval).
PROBE_SERVICE = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "probe", "namespace": "shop"},
                 "spec": {"selector": {"app": "nothing"}, "ports": [{"name": "http", "port": 81, "targetPort": 8080}]}}
TARGET_LABELS = {"__name__", "job", "instance", "namespace", "pod", "node", "component", "app", "gateway"}

# Panels allowed to return no data, with the reason. The lead removes an entry once a lab test
# produces what the panel shows.
# Panels allowed to be empty after this lab's traffic, with the reason (none: every panel has data,
# the envoy_cluster_* ones included, which every waypoint cluster exports from its first request).
NO_DATA_YET: dict[tuple[str, str], str] = {}

ROUNDS, L4_CONNS, HTTP_REQS, MIXED = 2, 4, 20, 3      # per round


OPAQUE_CLIENT = r"""
import socket, sys
with socket.create_connection((sys.argv[1], 80), timeout=20) as s:
    s.sendall(b"\x00\x01 not http\r\n\r\n")
    s.shutdown(socket.SHUT_WR)
    while s.recv(65536):
        pass
"""


def curl(lab: Lab, pod: str, url: str, *opts: str) -> None:
    p = lab.exec(pod, "curl", "-sS", "--fail", "-m", "20", "-o", "/dev/null", *opts, url, timeout=60)
    assert p.returncode == 0, f"{pod} -> {url}: {p.stderr}"


def traffic(lab: Lab) -> None:
    """One round: L4 (a new TCP connection per request: Connection: close) and HTTP via the waypoint."""
    curl(lab, "shop/shopper", f"http://cart/?n=[1-{L4_CONNS}]", "-H", "Connection: close")
    curl(lab, "default/frontend", f"http://myapp/?n=[1-{HTTP_REQS}]")
    curl(lab, "shop/shopper", f"http://frontend.default.svc.cluster.local/?m=[1-{MIXED}]")  # via the waypoint
    curl(lab, "default/myapp-v1", "http://cart.shop.svc.cluster.local/")       # myapp-v1 as an L4 client
    # bytes that are not HTTP to a waypointed Service: the waypoint relays them as opaque TCP
    p = lab.exec("shop/shopper", sys.executable, "-c", OPAQUE_CLIENT, "frontend.default.svc.cluster.local", timeout=60)
    assert p.returncode == 0, p.stderr


def apply(lab: Lab, docs: list[dict], name: str) -> Path:
    f = lab.tmp / f"{name}.yaml"  # type: ignore[attr-defined]
    f.write_text(yaml.safe_dump_all(docs))
    lab.ambit("apply", "-f", str(f))
    return f


def prom(lab: Lab) -> str:
    return lab.prom  # type: ignore[attr-defined, no-any-return]


def vector(lab: Lab, promql: str) -> list[dict[str, Any]]:
    data = query(prom(lab), promql)
    assert data["resultType"] == "vector", (promql, data["resultType"])
    return list(data["result"])


def scalar(lab: Lab, promql: str) -> float:
    r = vector(lab, promql)
    return float(r[0]["value"][1]) if r else math.nan


def running(pid: int) -> bool:
    """A process that runs (a killed one waiting to be reaped by init does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@pytest.fixture(scope="module")
def olab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    pids: list[int] = []
    data = None
    # As `ambit install` runs them: each node's agent serves its metrics and ztunnel merges them
    # into the one scrape the pod's annotation names (the dashboards' capture panels read them there).
    env = {AGENT_ARGS_ENV: f"--metrics-port {install.AGENT_METRICS_PORT}",
           ZTUNNEL_ARGS_ENV: f"--merge-metrics-from {install.AGENT_METRICS_URL}"}
    with running_lab(tmp_path_factory.mktemp("olab"), "ob", SPEC, "observability-lab", "--prometheus",
                     env=env) as lab:
        procs = lab.status()["processes"]
        pids = [procs[p]["pid"] for p in ("prometheus", "metrics-bridge")]
        data = lab.dir / "prometheus" / "data"
        assert all(pids) and data.is_dir()
        lab.tmp = tmp_path_factory.mktemp("ocfg")  # type: ignore[attr-defined]
        lab.prom = lab.status()["prometheus"]  # type: ignore[attr-defined]
        assert lab.prom.startswith("http://127.0.0.1:")  # type: ignore[attr-defined]
        apply(lab, [GATEWAY], "gateway")
        lab.wait_for(lambda: [w for w in lab.status()["waypoints"] if w["ready"]], timeout=30, what="waypoint ready")
        lab.wait_for(lambda: lab.exec("default/frontend", "curl", "-sf", "-m", "3", "-o", "/dev/null",
                                      "http://myapp/").returncode == 0, timeout=30, interval=0.5,
                     what="myapp through the waypoint")
        # The waypoint's target is discovered (file_sd) and scraped before any traffic, and every
        # round is scraped before the next: the counters then rise inside the dashboards' rate()
        # windows, as they would under steady traffic.
        lab.wait_for(lambda: scalar(lab, 'sum(up{job=~"waypoint|ztunnel|controller"})') == 4, timeout=30,
                     interval=0.5, what="Prometheus scraping all four targets")
        started = time.monotonic()
        for i in range(ROUNDS):
            traffic(lab)
            want = (i + 1) * HTTP_REQS
            lab.wait_for(lambda want=want: scalar(
                lab, 'sum(istio_requests_total{reporter="waypoint", source_workload="frontend"})') >= want,
                timeout=20, interval=0.5, what=f"round {i + 1} scraped")
        apply(lab, [PROBE_SERVICE], "probe")
        lab.traffic_s = time.monotonic() - started  # type: ignore[attr-defined]
        # Prometheus has it all once both ztunnels agree on the L4 connections and the waypoint's
        # count is complete.
        want_http = ROUNDS * HTTP_REQS

        def caught_up() -> bool:
            src = scalar(lab, 'sum(istio_tcp_connections_closed_total{reporter="source", source_workload="shopper", destination_workload="cart-v1"})')
            dst = scalar(lab, 'sum(istio_tcp_connections_closed_total{reporter="destination", source_workload="shopper", destination_workload="cart-v1"})')
            http = scalar(lab, 'sum(istio_requests_total{reporter="waypoint", source_workload="frontend"})')
            pushes = scalar(lab, 'sum(rate(ambit_config_push_latency_seconds_count[1m]))')
            opaque = scalar(lab, 'sum(istio_tcp_connections_closed_total{reporter="waypoint", source_workload="shopper"})')
            assert src == dst == ROUNDS * L4_CONNS and http >= want_http and pushes > 0 and opaque == ROUNDS, \
                (src, dst, http, pushes, opaque)
            return True
        lab.wait_for(caught_up, timeout=40, interval=1.0, what="Prometheus has scraped the traffic")
        yield lab
    # `lab down` (running_lab's exit) stops Prometheus and the bridge and removes the TSDB
    deadline = time.monotonic() + 10
    while any(running(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(running(p) for p in pids), f"prometheus/metrics-bridge still running after lab down: {pids}"
    assert data is not None and not data.parent.exists(), f"{data.parent} left behind"


# --- the scrape ------------------------------------------------------------------------------------

def test_prometheus_scrapes_every_component_with_kubernetes_like_target_labels(olab: Lab) -> None:
    got = {(r["metric"]["job"], r["metric"].get("namespace"), r["metric"].get("pod"), r["metric"].get("node", ""),
            r["metric"].get("app"), r["value"][1]) for r in vector(olab, "up")}
    assert got == {
        ("controller", "ambit-system", "ambit-controller", "", "ambit-controller", "1"),
        ("ztunnel", "ambit-system", "ztunnel-node1", "node1", "ztunnel", "1"),
        ("ztunnel", "ambit-system", "ztunnel-node2", "node2", "ztunnel", "1"),
        ("waypoint", "default", "waypoint-0", "node2", "waypoint", "1"),
    }
    [wp] = vector(olab, 'up{job="waypoint"}')
    assert wp["metric"]["gateway"] == "waypoint" and wp["metric"]["component"] == "waypoint"


# --- Istio's metrics -------------------------------------------------------------------------------

def test_ztunnel_tcp_metrics_have_istios_full_label_set_from_both_reporters(olab: Lab) -> None:
    rows = vector(olab, 'istio_tcp_connections_opened_total{source_workload="shopper", destination_workload="cart-v1"}')
    by_reporter = {r["metric"]["reporter"]: r for r in rows}
    assert set(by_reporter) == {"source", "destination"}, rows
    for reporter, r in by_reporter.items():
        m = r["metric"]
        assert set(m) - TARGET_LABELS == set(ISTIO_DOC_LABELS) - HTTP_ONLY      # key by key: Istio's list
        assert {k: m[k] for k in sorted(set(m) - TARGET_LABELS)} == {
            "reporter": reporter,
            "source_workload": "shopper", "source_workload_namespace": "shop",
            "source_principal": "spiffe://cluster.local/ns/shop/sa/shopper", "source_app": "shopper",
            "source_version": "v7", "source_canonical_service": "shopper", "source_canonical_revision": "v7",
            "source_cluster": "Kubernetes",
            "destination_workload": "cart-v1", "destination_workload_namespace": "shop",
            "destination_principal": "spiffe://cluster.local/ns/shop/sa/cart", "destination_app": "cart",
            "destination_version": "v1", "destination_service": "cart.shop.svc.cluster.local",
            "destination_service_name": "cart", "destination_service_namespace": "shop",
            "destination_canonical_service": "cart-svc", "destination_canonical_revision": "r1",
            "destination_cluster": "Kubernetes",
            "request_protocol": "tcp", "response_flags": "-", "connection_security_policy": "mutual_tls",
        }
        assert m["node"] == ("node1" if reporter == "source" else "node2")      # each side's own ztunnel
        assert float(r["value"][1]) == ROUNDS * L4_CONNS
    # the two reporters agree on the bytes of the same connections
    sel = 'source_workload="shopper", destination_workload="cart-v1"'
    for fam in ("istio_tcp_received_bytes_total", "istio_tcp_sent_bytes_total"):
        per = {r["metric"]["reporter"]: float(r["value"][1]) for r in vector(olab, f"sum by (reporter) ({fam}{{{sel}}})")}
        assert per["source"] == per["destination"] > 0, (fam, per)
        print(f"{fam}: {per}")


def test_waypoint_http_metrics_have_istios_full_label_set(olab: Lab) -> None:
    rows = vector(olab, 'istio_requests_total{reporter="waypoint", source_workload="frontend"}')
    assert rows
    for r in rows:
        m = r["metric"]
        # grpc_response_status is "" on a plain HTTP request (as Istio's is), and Prometheus stores
        # no empty label; the exposition has all 25 (tests/unit/dataplane/test_istio_labels.py)
        assert set(m) - TARGET_LABELS == set(ISTIO_DOC_LABELS) - {"grpc_response_status"}
        assert (m["destination_service"], m["destination_service_name"], m["destination_canonical_service"],
                m["response_code"], m["source_canonical_service"], m["job"], m["pod"]) == \
            ("myapp.default.svc.cluster.local", "myapp", "myapp", "200", "frontend", "waypoint", "waypoint-0")
        assert m["destination_canonical_revision"] == m["destination_version"] in ("v1", "v2")
    per_version = {r["metric"]["destination_version"]: float(r["value"][1]) for r in
                   vector(olab, 'sum by (destination_version) (istio_requests_total{reporter="waypoint", source_workload="frontend"})')}
    print(f"requests frontend -> myapp by version: {per_version}")
    assert sum(per_version.values()) >= ROUNDS * HTTP_REQS and set(per_version) == {"v1", "v2"}


# --- each component's own health ---------------------------------------------------------------------

def test_every_component_exports_its_health_under_ambit(olab: Lab) -> None:
    connected = {r["metric"]["instance"]: r["value"][1] for r in vector(olab, "ambit_config_connected")}
    assert connected == {"ztunnel-node1": "1", "ztunnel-node2": "1", "default/waypoint-0": "1"}
    expiry = {r["metric"]["instance"]: float(r["value"][1]) for r in vector(olab, "ambit_certificate_expiry_seconds")}
    print(f"certificate expiry (s): {expiry}")
    assert set(expiry) == {"controller", "ztunnel-node1", "ztunnel-node2", "default/waypoint-0"}
    assert all(23 * 3600 < expiry[i] <= 24 * 3600 for i in ("ztunnel-node1", "ztunnel-node2", "default/waypoint-0"))
    assert expiry["controller"] > 9 * 365 * 86400            # the lab CA's 10-year root
    issued = scalar(olab, "ambit_ca_certificates_issued_total")
    valid = scalar(olab, 'sum(ambit_certificates{state="valid"})')
    assert issued >= valid >= 6, (issued, valid)               # 5 pods' identities and the waypoint's
    assert scalar(olab, "sum(ambit_ca_requests_refused_total)") == 0
    subs = {r["metric"]["kind"]: float(r["value"][1]) for r in vector(olab, "ambit_config_connected_subscribers")}
    print(f"config subscribers: {subs}")
    assert subs.get("ztunnel") == 2 and subs.get("waypoint") == 1
    # both ztunnels hold the Services of the version the controller serves (the last change, the
    # probe Service in `shop`, was a Service); the waypoint's stream is scoped to what it serves
    # (`default`), so the probe never reached it and its Services keep an earlier version
    def consistent() -> bool:
        [served] = [r["metric"]["version"] for r in vector(olab, 'ambit_config_version_info{job="controller"}')]
        held = {r["metric"]["instance"]: r["metric"]["version"]
                for r in vector(olab, 'ambit_config_version_info{job=~"ztunnel|waypoint", type="Service"}')}
        assert len(held) == 3 and held["ztunnel-node1"] == held["ztunnel-node2"] == served, (served, held)
        return True
    olab.wait_for(consistent, timeout=10, interval=0.5, what="proxies on the served config version")
    age = {r["metric"]["instance"]: float(r["value"][1])
           for r in vector(olab, "time() - ambit_config_last_update_timestamp_seconds")}
    assert all(0 <= a < 300 for a in age.values()), age
    opened = {(r["metric"]["node"], r["metric"]["direction"]) for r in vector(olab, "ambit_connections_open")}
    assert opened == {(n, d) for n in ("node1", "node2") for d in ("inbound", "outbound")}
    assert scalar(olab, "sum(ambit_hbone_pool_connections)") >= 1


# --- the dashboards ----------------------------------------------------------------------------------

def label_values(lab: Lab, definition: str) -> list[str]:
    """Grafana's `label_values(metric{...}, label)`, asked of Prometheus."""
    m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", definition.strip())
    assert m, definition
    return sorted({r["metric"].get(m.group(2), "") for r in vector(lab, f"count by ({m.group(2)}) ({m.group(1)})")} - {""})


def substitute(expr: str, values: dict[str, str]) -> str:
    out = expr.replace("$__rate_interval", "1m").replace("$__interval", "15s").replace("$__range", "5m")
    for name in sorted(values, key=len, reverse=True):
        out = out.replace(f"${{{name}}}", values[name]).replace(f"${name}", values[name])
    return out


def fresh_minute(lab: Lab) -> None:
    """What a dashboard shows is the last minute: its rates look back `$__rate_interval` (1m here),
    and a ratio or a quantile of rates that are all zero has no data, as Grafana shows an idle mesh.
    The other tests of this module, and under `make test` another lab beside it, can take longer
    than that since the fixture's rounds; so one more round of traffic and one more config push
    (the probe Service's port changes) are made, and scraped, before the panels are read."""
    http = 'sum(istio_requests_total{reporter="waypoint", source_workload="frontend"})'
    opaque = 'sum(istio_tcp_connections_closed_total{reporter="waypoint", source_workload="shopper"})'
    pushes = 'sum(ambit_config_push_latency_seconds_count{job="controller"})'
    before = [scalar(lab, q) for q in (http, opaque, pushes)]
    probe = json.loads(json.dumps(PROBE_SERVICE))
    probe["spec"]["ports"][0]["port"] = 82
    apply(lab, [probe], "probe-again")
    traffic(lab)
    lab.wait_for(lambda: scalar(lab, http) >= before[0] + HTTP_REQS and scalar(lab, opaque) > before[1]
                 and scalar(lab, pushes) > before[2], timeout=30, interval=0.5,
                 what="one more round of traffic and a config push scraped")


def test_every_dashboard_panel_returns_data_through_prometheus(olab: Lab) -> None:
    fresh_minute(olab)
    failures, ran, excused = [], 0, []
    for f in sorted(GRAFANA.glob("*.json")):
        d = json.loads(f.read_text())
        values: dict[str, str] = {}
        for v in d["templating"]["list"]:
            if v["type"] != "query":
                continue
            # every variable offers values; the panels are checked with all of them selected (what
            # a multi-value variable renders as: a regex alternation)
            opts = label_values(olab, substitute(v["definition"], values))
            if not opts:
                failures.append(f"{f.name}: variable ${v['name']} offers no values ({v['definition']})")
            values[v["name"]] = "(" + "|".join(opts) + ")" if opts else ".*"
        for p in d["panels"]:
            for t in p.get("targets", []):
                expr = substitute(t["expr"], values)
                ran += 1
                try:
                    result = query(prom(olab), expr)["result"]
                except ValueError as e:
                    failures.append(f"{f.name}: panel {p['title']!r}: query fails: {e}")
                    continue
                samples = [float(r["value"][1]) for r in result] if isinstance(result, list) else [float(result[1])]
                if not any(not math.isnan(x) for x in samples):
                    if (f.name, p["title"]) in NO_DATA_YET:
                        excused.append(f"{f.name}: {p['title']!r}: {NO_DATA_YET[(f.name, p['title'])]}")
                        continue
                    failures.append(f"{f.name}: panel {p['title']!r}: no data for {expr}")
    print(f"{ran} queries run; excused: {excused}")
    assert not failures, "\n".join(failures)
    assert ran >= 80


# --- targets follow the lab --------------------------------------------------------------------------

def test_a_deleted_waypoint_leaves_the_scrape_targets(olab: Lab) -> None:
    """File-based discovery: the lab rewrites the targets when the Gateway goes (runs last)."""
    f = olab.tmp / "gateway.yaml"  # type: ignore[attr-defined]
    olab.ambit("delete", "-f", str(f))

    def gone() -> bool:
        with urllib.request.urlopen(f"{prom(olab)}/api/v1/targets?state=active", timeout=5) as r:
            active = json.loads(r.read())["data"]["activeTargets"]
        return not [t for t in active if t["labels"]["job"] == "waypoint"]
    olab.wait_for(gone, timeout=30, interval=0.5, what="the waypoint's target removed")
    # its series go stale (Prometheus marks a vanished target's series), the others stay
    olab.wait_for(lambda: not vector(olab, 'up{job="waypoint"}'), timeout=15, interval=0.5, what="waypoint series stale")
    assert {r["value"][1] for r in vector(olab, 'up{job=~"ztunnel|controller"}')} == {"1"}
