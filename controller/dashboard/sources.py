"""Where the topology view's numbers come from (the I/O edge; the graph itself is graph.py).

- `PrometheusRates`: `rate(...[window])` of Istio's standard metrics over Prometheus's HTTP API,
  when the controller is given `--prometheus-url` (a cluster's Prometheus, or the lab's).
- `DirectRates`: otherwise, the controller scrapes every ztunnel and waypoint itself, every few
  seconds, and keeps a window of scrapes (rates.py). Where their metrics are is a template: a unix
  socket (the lab: `unix:<labdir>/{node}/metrics.sock`) or a URL (`http://{ip}:15020/stats/prometheus`
  for waypoint pods). The controller knows the nodes (from its workloads) and the waypoints (their
  pods carry the Gateway's name); it reads their metrics, it does not import them (the layers).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

from ambit.dataplane.endpoint import fetch
from controller.dashboard.graph import GATEWAY_NAME_LABEL, Mesh, Rate
from controller.dashboard.rates import WANTED, Scrape, Window, parse

log = logging.getLogger("ambit.controller.dashboard")

METRICS_PATH = "/stats/prometheus"


@dataclass(frozen=True)
class Target:
    """One component's metrics endpoint, and the labels Prometheus would give its series."""
    address: str                      # unix:PATH or http://host:port/path
    labels: dict[str, str]

    def read(self, timeout: float = 2.0) -> str:
        if self.address.startswith("unix:"):
            status, body = fetch(self.address[len("unix:"):], METRICS_PATH, timeout)
            if status != 200:
                raise OSError(f"{self.address} answered {status}")
            return body.decode()
        with urllib.request.urlopen(self.address, timeout=timeout) as r:   # noqa: S310 - operator-given URL
            return str(r.read().decode())


def targets(mesh: Mesh, ztunnel_template: str, waypoint_template: str) -> list[Target]:
    """The ztunnel of every node that runs a workload, and every waypoint pod, from the templates
    ({node}; {namespace}, {name} (the Gateway), {pod}, {ip}). An empty template: none of that kind."""
    out: list[Target] = []
    if ztunnel_template:
        for node in sorted({w.node for w in mesh.workloads if w.node}):
            out.append(Target(ztunnel_template.format(node=node), {"job": "ztunnel", "node": node}))
    if waypoint_template:
        for w in mesh.workloads:
            gw = w.labels.get(GATEWAY_NAME_LABEL)
            if gw:
                out.append(Target(waypoint_template.format(namespace=w.namespace, name=gw, pod=w.name,
                                                           ip=(w.ips or [""])[0]),
                                  {"job": "waypoint", "namespace": w.namespace, "gateway": gw, "pod": w.name}))
    return out


class DirectRates:
    """Scrapes the targets every `interval` seconds in a daemon thread; `rates()` over the window."""

    source = "components"

    def __init__(self, mesh: Callable[[], Mesh], ztunnel_template: str, waypoint_template: str,
                 interval: float = 3.0, window: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.mesh, self.zt, self.wp = mesh, ztunnel_template, waypoint_template
        self.interval = interval
        self.window = Window(window)
        self.clock = clock
        self.errors: dict[str, str] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def scrape_once(self) -> None:
        samples = {}
        errors = {}
        for t in targets(self.mesh(), self.zt, self.wp):
            try:
                samples.update(parse(t.read(), t.labels))
            except (OSError, ValueError) as e:
                errors[t.address] = str(e)
        with self._lock:
            self.window.add(Scrape(self.clock(), samples))
            self.errors = errors

    def start(self) -> None:
        def run() -> None:
            while not self._stop.is_set():
                try:
                    self.scrape_once()
                except Exception:  # noqa: BLE001 - the view must keep scraping whatever one pass hit
                    log.exception("dashboard scrape failed")
                self._stop.wait(self.interval)
        threading.Thread(target=run, name="dashboard-scrape", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def rates(self) -> tuple[list[Rate], dict[str, object]]:
        with self._lock:
            return self.window.rates(), {"source": self.source, "windowSeconds": round(self.window.span, 1),
                                         "errors": dict(self.errors)}


class PrometheusRates:
    """`rate(family[window])` for each family the graph uses, from Prometheus's /api/v1/query."""

    source = "prometheus"

    def __init__(self, url: str, window: str = "1m", timeout: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.window_expr = window
        self.timeout = timeout

    def query(self, promql: str) -> list[dict[str, object]]:
        q = urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(f"{self.url}/api/v1/query?{q}", timeout=self.timeout) as r:  # noqa: S310
            body = json.loads(r.read())
        if body.get("status") != "success":
            raise ValueError(f"{promql}: {body.get('error', body)}")
        return list(body["data"]["result"])

    def rates(self) -> tuple[list[Rate], dict[str, object]]:
        out: list[Rate] = []
        errors = {}
        for fam in WANTED:
            promql = f"rate({fam}[{self.window_expr}])"
            try:
                for row in self.query(promql):
                    labels = {k: v for k, v in dict(row["metric"]).items() if k != "__name__"}  # type: ignore[call-overload]
                    out.append(Rate(fam, labels, float(row["value"][1])))  # type: ignore[index]
            except (OSError, ValueError, KeyError) as e:
                errors[promql] = str(e)
        return out, {"source": self.source, "prometheus": self.url, "window": self.window_expr, "errors": errors}

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass
