"""The topology view in a real headless browser (Debian's chromium + chromium-driver, Selenium),
served by the lab's real controller, after real traffic: L4 through the ztunnels (shop/shopper ->
cart) and HTTP through a waypoint (default/frontend -> myapp, via default/waypoint).

Both data paths of the controller, one lab: first with the lab's Prometheus (`lab up --prometheus`
passes `--prometheus-url`), then without it: the test gives the controller's process in the lab
state the flags of a lab without Prometheus, the supervisor restarts the controller, and the view
scrapes the ztunnels' and the waypoint's metrics sockets itself. In each mode the rendered DOM must show the right edges with
non-zero rates, the mTLS lock, the waypoint in the HTTP path, a policy on the node it selects, and
clicking a node must list its access-log lines. The lab runs its trace collector (`lab up
--tracing`): a client span of frontend's, through the waypoint, must be listed as a trace of
frontend's with its spans linked. Screenshots go to the artifacts
(AMBIT_UPDATE_SCREENSHOT=1 also writes docs/img/topology.png).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from ambitctl.lab import dashboard
from ambitctl.lab import state as labstate
from tests.lab.labctl import REPO, Lab, artifacts, running_lab
from tests.lab.test_tracing import CLIENT_SCRIPT

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root"),
    pytest.mark.skipif(not (shutil.which("chromium") and shutil.which("chromedriver")),
                       reason="needs Debian's chromium and chromium-driver (make setup installs them)"),
]

SPEC = Path(__file__).parent / "specs" / "observability.yaml"
GATEWAY = {
    "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
    "metadata": {"name": "waypoint", "namespace": "default", "labels": {"ambit.io/waypoint-for": "service"},
                 "annotations": {"lab.ambit.io/node": "node2"}},
    "spec": {"gatewayClassName": "ambit-waypoint", "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]},
}
# Selects cart only and denies a namespace nobody calls from: it changes no traffic here, and the
# view must show it on cart-v1 (and not on shopper).
POLICY = {
    "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
    "metadata": {"name": "deny-nowhere", "namespace": "shop"},
    "spec": {"selector": {"matchLabels": {"app": "cart"}}, "action": "DENY",
             "rules": [{"from": [{"source": {"namespaces": ["nowhere"]}}]}]},
}
L4 = ("wl:shop/shopper", "svc:shop/cart", "wl:shop/cart-v1")
HTTP_IN = ("wl:default/frontend", "wp:default/waypoint")
HTTP_OUT = ("wp:default/waypoint", "svc:default/myapp")
SCREENSHOT = REPO / "docs" / "img" / "topology.png"


class Traffic:
    """Real clients through the mesh, round after round, while the browser looks."""

    def __init__(self, lab: Lab) -> None:
        self.lab, self.rounds, self.failures = lab, 0, []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def one_round(self) -> None:
        for pod, url, opts in (("shop/shopper", "http://cart/?n=[1-4]", ["--fail", "-H", "Connection: close"]),
                               ("default/frontend", "http://myapp/?n=[1-10]", ["--fail"]),
                               # one 500 per round (not retried by default: Istio retries 503), for the error rate
                               ("default/frontend", "http://myapp/?fail=1", ["-H", "x-echo-status: 500"])):
            p = self.lab.exec(pod, "curl", "-sS", "-m", "10", "-o", "/dev/null", *opts, url, timeout=40)
            if p.returncode != 0:
                self.failures.append(f"{pod} -> {url}: {p.stderr.strip()}")
        self.rounds += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            self.one_round()
            self._stop.wait(0.5)

    def __enter__(self) -> Traffic:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join(timeout=60)


def graph(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url + "api/graph", timeout=10) as r:
        return dict(json.loads(r.read()))


def active_edges(g: dict[str, Any]) -> set[tuple[str, str]]:
    return {(e["source"], e["target"]) for e in g["edges"] if e["rate"] > 0}


def wanted_edges() -> set[tuple[str, str]]:
    return {L4[:2], L4[1:], HTTP_IN, HTTP_OUT}


@pytest.fixture(scope="module")
def tlab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with running_lab(tmp_path_factory.mktemp("tvlab"), "tv", SPEC, "topology-view-lab", "--prometheus",
                     "--tracing") as lab:
        f = tmp_path_factory.mktemp("tvcfg") / "cfg.yaml"
        f.write_text(yaml.safe_dump_all([GATEWAY, POLICY]))
        lab.ambit("apply", "-f", str(f))
        lab.wait_for(lambda: [w for w in lab.status()["waypoints"] if w["ready"]], timeout=30, what="waypoint ready")
        lab.wait_for(lambda: lab.exec("default/frontend", "curl", "-sf", "-m", "3", "-o", "/dev/null",
                                      "http://myapp/").returncode == 0, timeout=30, interval=0.5,
                     what="myapp through the waypoint")
        yield lab


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or "chromium"
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1500,1000"):
        opts.add_argument(a)
    drv = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "chromedriver"), options=opts)
    try:
        yield drv
    finally:
        drv.quit()


def dom_edges(drv: Any) -> dict[tuple[str, str], dict[str, Any]]:
    """The edges as drawn: the SVG <g class="edge"> elements' data, and whether a lock is drawn."""
    rows = drv.execute_script("""
        return [...document.querySelectorAll('#graph g.edge')].map(g => ({
          source: g.dataset.source, target: g.dataset.target, protocol: g.dataset.protocol,
          rate: parseFloat(g.dataset.rate), p99: g.dataset.p99Ms, bytes: parseFloat(g.dataset.bytesPerSecond),
          mtls: g.dataset.mtls, locks: g.querySelectorAll('.lock').length,
          errorRate: parseFloat(g.dataset.errorRate), cls: g.getAttribute('class'),
          label: g.querySelector('text.label').textContent}));""")
    return {(r["source"], r["target"]): r for r in rows}


def click_node(drv: Any, node_id: str) -> None:
    """A real click on the node's circle; the page redraws every few seconds, so an element found
    just before a redraw is stale: find it again."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    for _ in range(5):
        try:
            drv.find_element(By.CSS_SELECTOR, f'#graph g.node[data-id="{node_id}"]').click()
            return
        except StaleElementReferenceException:
            continue
    raise AssertionError(f"could not click {node_id}: the page kept redrawing it")


def check_page(drv: Any, lab: Lab, url: str, source: str, shot: str) -> dict[tuple[str, str], dict[str, Any]]:
    from selenium.webdriver.common.by import By
    drv.get(url)

    def drawn() -> dict[tuple[str, str], dict[str, Any]] | None:
        if drv.find_element(By.ID, "status").get_attribute("data-source") != source:
            return None
        e = dom_edges(drv)
        # (Prometheus may draw a round's 200s a scrape before the round's 500)
        return e if all(k in e and e[k]["rate"] > 0 for k in wanted_edges()) and e[HTTP_IN]["errorRate"] > 0 else None
    edges = lab.wait_for(drawn, timeout=45, interval=1.0, what=f"the page draws the traffic ({source})")
    # L4: shopper -> cart -> cart-v1, mutual TLS, connections and bytes
    for k in (L4[:2], L4[1:]):
        e = edges[k]
        assert e["protocol"] == "tcp" and e["mtls"] == "true" and e["locks"] == 1 and e["bytes"] > 0, e
    # HTTP: the waypoint is in the path; requests, a p99 and bytes on the edge; locked
    for k in (HTTP_IN, HTTP_OUT):
        e = edges[k]
        assert e["protocol"] == "http" and e["mtls"] == "true" and e["locks"] == 1, e
        assert float(e["p99"]) > 0 and e["bytes"] > 0 and "req/s" in e["label"] and "p99" in e["label"], e
        # one request in eleven answers 500: an error rate, and the edge drawn red
        assert 0 < e["errorRate"] < 0.5 and "errors" in e["cls"].split(), e
    for k in (L4[:2], L4[1:]):
        assert edges[k]["errorRate"] == 0 and "errors" not in edges[k]["cls"].split(), edges[k]
    # (an idle edge may remain from the readiness probe's first requests, sent before ztunnel knew the
    # waypoint: drawn dashed, with no rate; the traffic now never bypasses the waypoint)
    bypass = edges.get(("wl:default/frontend", "svc:default/myapp"))
    assert bypass is None or bypass["rate"] == 0, f"HTTP bypassing the waypoint is drawn: {bypass}"
    assert any(k[0] == "svc:default/myapp" and k[1] in ("wl:default/myapp-v1", "wl:default/myapp-v2")
               and v["rate"] > 0 for k, v in edges.items())
    kinds = drv.execute_script("return Object.fromEntries([...document.querySelectorAll('#graph g.node')]"
                               ".map(g => [g.dataset.id, g.dataset.kind]))")
    assert kinds["wp:default/waypoint"] == "waypoint" and kinds["wl:default/frontend"] == "workload"
    # the table under the graph lists the same edges
    rows = {(r.get_attribute("data-source"), r.get_attribute("data-target"))
            for r in drv.find_elements(By.CSS_SELECTOR, "#edges tr.edge-row")}
    assert wanted_edges() <= rows
    drv.save_screenshot(str(artifacts("topology-view") / f"{shot}.png"))
    # it refreshes live: the page polls the graph again without a reload
    status = drv.find_element(By.ID, "status")
    before = status.get_attribute("data-updated")
    lab.wait_for(lambda: status.get_attribute("data-updated") not in (before, ""), timeout=15, what="a live refresh")

    # clicking cart-v1: its policy, its access-log lines (ztunnel's, naming it), no traces (L4 only)
    click_node(drv, "wl:shop/cart-v1")
    panel = drv.find_element(By.ID, "panel")
    lab.wait_for(lambda: panel.get_attribute("data-node") == "wl:shop/cart-v1"
                 and panel.get_attribute("data-loaded") == "true"
                 and drv.find_elements(By.CSS_SELECTOR, "#panel-logs .log-line"), timeout=15, what="panel loaded")
    policies = [li.text for li in drv.find_elements(By.CSS_SELECTOR, "#panel-policies li.policy")]
    assert policies == ["AuthorizationPolicy shop/deny-nowhere: DENY (selector)"], policies
    lines = [d.text for d in drv.find_elements(By.CSS_SELECTOR, "#panel-logs .log-line")]
    assert lines and all(line.startswith("ztunnel-node") and '"cart-v1"' in line for line in lines), lines[:3]
    traces_note = drv.find_element(By.ID, "panel-traces").text
    assert "from the zipkin API" in traces_note and "cart-svc.shop" in traces_note and "none yet" in traces_note
    # frontend: the waypoint's request lines are among its logs
    click_node(drv, "wl:default/frontend")
    lab.wait_for(lambda: panel.get_attribute("data-node") == "wl:default/frontend" and any(
        d.text.startswith("waypoint-default-waypoint") for d in drv.find_elements(By.CSS_SELECTOR, "#panel-logs .log-line")),
        timeout=15, what="frontend's waypoint access-log lines")
    assert not [li for li in drv.find_elements(By.CSS_SELECTOR, "#panel-policies li.policy")]
    drv.save_screenshot(str(artifacts("topology-view") / f"{shot}-panel.png"))
    return edges


def test_prometheus_mode_renders_the_traffic(tlab: Lab, browser: Any) -> None:
    url = tlab.ambit("dashboard").stdout.strip()
    st = tlab.status()
    assert url == st["dashboard"] and url.startswith("http://127.0.0.1:")
    with Traffic(tlab) as t:
        started = time.monotonic()
        edges = check_page(browser, tlab, url, "prometheus", "prometheus")
        print(f"prometheus mode: drawn after {time.monotonic() - started:.1f}s, {t.rounds} traffic rounds; "
              + "; ".join(f"{a}->{b}: {e['label']}" for (a, b), e in sorted(edges.items())))
    assert not t.failures, t.failures
    meta = graph(url)["meta"]
    assert meta["source"] == "prometheus" and meta["prometheus"] == st["prometheus"] and not meta["errors"]
    if os.environ.get("AMBIT_UPDATE_SCREENSHOT"):
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(artifacts("topology-view") / "prometheus.png", SCREENSHOT)


def test_without_prometheus_the_controller_scrapes_the_proxies(tlab: Lab, browser: Any) -> None:
    """Replace --prometheus-url in the controller's process with the flags a lab without Prometheus
    gives it: the supervisor restarts it, and the view reads the ztunnels' and the waypoint's
    metrics sockets itself."""
    url = tlab.status()["dashboard"]
    old_pid = tlab.proc_pid("controller")
    with labstate.editing(tlab.dir) as st:
        argv = st.proc("controller").argv
        i = argv.index("--prometheus-url")
        argv[i:i + 2] = dashboard.direct_args(tlab.dir)     # what a lab without Prometheus passes
    tlab.wait_for(lambda: tlab.proc_pid("controller") not in (None, old_pid), timeout=20, what="controller restarted")

    def serving() -> bool:
        try:
            return graph(url)["meta"]["source"] == "components"
        except OSError:
            return False
    tlab.wait_for(serving, timeout=20, interval=0.3, what="the restarted controller serves the view")
    with Traffic(tlab) as t:
        started = time.monotonic()
        edges = check_page(browser, tlab, url, "components", "components")
        print(f"direct mode: drawn after {time.monotonic() - started:.1f}s, {t.rounds} traffic rounds; "
              + "; ".join(f"{a}->{b}: {e['label']}" for (a, b), e in sorted(edges.items())))
    assert not t.failures, t.failures
    meta = graph(url)["meta"]
    assert meta["source"] == "components" and not meta["errors"] and meta["windowSeconds"] > 0


def test_a_trace_through_the_waypoint_is_listed_with_its_linked_spans(tlab: Lab, browser: Any) -> None:
    """frontend makes a client span of its own (OpenTelemetry SDK, exported to the lab's collector)
    around one request to myapp; the waypoint adds its server and client spans. Clicking frontend
    lists the trace; clicking the trace lists its spans, each under its parent."""
    from selenium.webdriver.common.by import By
    t = labstate.load(tlab.dir).tracing
    p = tlab.exec("default/frontend", sys.executable, "-c", CLIENT_SCRIPT, "root", "http://myapp/traced",
                  f"{t['ip']}:{t['grpc_port']}", "frontend.default", timeout=120)
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout.strip().splitlines()[-1])
    assert r["status"] == 200
    tid, root = r["trace_id"], r["span_id"]
    url = tlab.status()["dashboard"]

    def listed() -> dict[str, Any] | None:     # the waypoint's batch processor exports within seconds
        with urllib.request.urlopen(url + "api/node?id=wl:default/frontend", timeout=10) as resp:
            rows = json.loads(resp.read())["traces"]["traces"]
        return next((x for x in rows if x["traceId"] == tid and x["spanCount"] >= 3), None)
    tlab.wait_for(listed, timeout=30, interval=1.0, what="the trace in the view's API")

    browser.get(url)
    tlab.wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, '#graph g.node[data-id="wl:default/frontend"]'),
                  timeout=30, what="frontend drawn")
    click_node(browser, "wl:default/frontend")
    sel = f'#panel-trace-list .trace-row[data-trace-id="{tid}"]'
    rows = tlab.wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, sel), timeout=15, what="the trace listed")
    assert int(rows[0].get_attribute("data-span-count")) >= 3 and rows[0].get_attribute("data-status") == "ok"
    assert "frontend.default" in rows[0].text and "waypoint.default" in rows[0].text
    rows[0].click()
    tlab.wait_for(lambda: browser.find_element(By.ID, "panel-spans").get_attribute("data-trace-id") == tid,
                  timeout=10, what="the trace's spans shown")
    spans = [(d.get_attribute("data-span-id"), d.get_attribute("data-parent-id"), int(d.get_attribute("data-depth")),
              d.text) for d in browser.find_elements(By.CSS_SELECTOR, "#panel-spans .span-row")]
    ids = {s[0] for s in spans}
    assert len(spans) >= 3 and spans[0][:3] == (root, "", 0), spans
    assert all(parent in ids for _, parent, depth, _ in spans[1:]), spans        # every other span is linked
    server = next(s for s in spans if s[1] == root and "[SERVER]" in s[3])        # client -> waypoint
    assert server[3].startswith("waypoint.default: myapp.default.svc.cluster.local:80/*")
    assert any(s[1] == server[0] and s[2] == 2 and "router outbound|80||myapp" in s[3] for s in spans), spans
    browser.save_screenshot(str(artifacts("topology-view") / "traces-panel.png"))
