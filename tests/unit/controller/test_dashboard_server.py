"""The topology view's HTTP edge, on a real socket: the page and its assets (no external URL),
the graph JSON, a node's access logs from log files, read-only, and the controller's flags."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.dashboard.graph import Mesh, Rate
from controller.dashboard.server import Dashboard, serve
from controller.settings import load

LB = {"reporter": "source", "source_workload": "shopper", "source_workload_namespace": "shop",
      "destination_workload": "cart-v1", "destination_workload_namespace": "shop",
      "destination_service_name": "cart", "destination_service_namespace": "shop",
      "connection_security_policy": "mutual_tls"}


class Fixed:
    def rates(self) -> tuple[list[Rate], dict[str, object]]:
        return [Rate("istio_tcp_connections_opened_total", LB, 1.5)], {"source": "components", "errors": {}}


@pytest.fixture
def view(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    (tmp_path / "ztunnel-node1.log").write_text(
        "2026 INFO ztunnel: started\n"
        'access {"time": "2026-01-01T00:00:01Z", "src.workload": "shopper", "src.namespace": "shop", "bytes_sent": 7}\n'
        'access {"time": "2026-01-01T00:00:02Z", "src.workload": "other", "src.namespace": "shop"}\n')
    url, stop = serve(Dashboard(lambda: Mesh(), Fixed(), tmp_path), "127.0.0.1:0")
    try:
        yield url, tmp_path
    finally:
        stop()


def get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.headers["Content-Type"], r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read()


def test_page_and_assets_are_served_and_reference_nothing_outside(view: tuple[str, Path]) -> None:
    url, _ = view
    for path, ctype in (("", "text/html"), ("app.js", "text/javascript"), ("style.css", "text/css")):
        status, got, body = get(url + path)
        assert status == 200 and got.startswith(ctype), (path, status, got)
        # no CDN, no internet: every src/href/fetch is relative
        assert not re.search(rb"""(src|href)=["']?(https?:)?//""", body), path
        assert b"https://" not in body.replace(b"http://www.w3.org/2000/svg", b"")


def test_graph_json_and_node_access_logs(view: tuple[str, Path]) -> None:
    url, _ = view
    status, ctype, body = get(url + "api/graph")
    g = json.loads(body)
    assert status == 200 and ctype == "application/json"
    assert {(e["source"], e["target"], e["rate"], e["mtls"]) for e in g["edges"]} == {
        ("wl:shop/shopper", "svc:shop/cart", 1.5, True), ("svc:shop/cart", "wl:shop/cart-v1", 1.5, True)}
    assert g["meta"]["source"] == "components" and g["meta"]["refreshSeconds"] == 3.0
    node = json.loads(get(url + "api/node?id=wl:shop/shopper")[2])
    assert [json.loads(x["line"])["bytes_sent"] for x in node["accessLogs"]["lines"]] == [7]
    assert node["accessLogs"]["lines"][0]["component"] == "ztunnel-node1"
    assert node["traces"] == {"available": False, "message": node["traces"]["message"], "traces": []}
    assert "no tracing backend" in node["traces"]["message"]
    assert get(url + "api/node")[0] == 400 and get(url + "nope")[0] == 404


def test_the_view_is_read_only(view: tuple[str, Path]) -> None:
    url, _ = view
    for method in ("POST", "PUT", "DELETE"):
        req = urllib.request.Request(url + "api/graph", data=b"{}", method=method)
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=5)
        assert e.value.code == 405


def test_without_a_log_dir_the_panel_says_where_logs_are() -> None:
    d = Dashboard(lambda: Mesh(), Fixed(), None).node("wl:shop/shopper")
    assert not d["accessLogs"]["available"] and "kubectl logs" in d["accessLogs"]["message"]


def test_controller_flags_default_to_loopback_and_refuse_a_zero_refresh() -> None:
    s = load(["--kube"], {})
    assert s.dashboard_address == "127.0.0.1:15015" and s.prometheus_url == ""
    with pytest.raises(ValueError, match="dashboard-refresh|dashboard_refresh"):
        load(["--kube", "--dashboard-refresh", "0"], {})
