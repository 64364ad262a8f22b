"""The topology view's HTTP server: a read-only page and its JSON, in the controller process.

GET /                 the page (static/index.html; plain HTML, vanilla JS and SVG: no CDN, no internet)
GET /app.js, /style.css
GET /api/graph        {"nodes", "edges", "meta"}: graph.build over the current rates and translation
GET /api/node?id=ID   the node's recent access-log lines and traces (from --tracing-url's backend)
Anything but GET/HEAD is 405: the view changes nothing.

A threaded stdlib server (as prometheus_client's metrics server): requests are few (one page
polling every few seconds) and each is a short, synchronous read of state the controller holds.
"""

from __future__ import annotations

import http.server
import json
import logging
import socketserver
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from controller.dashboard import accesslogs, traces
from controller.dashboard.graph import Mesh, Rate, build
from controller.dashboard.tracequery import TraceBackend

log = logging.getLogger("ambit.controller.dashboard")
STATIC = Path(__file__).parent / "static"
ASSETS = {"/": ("index.html", "text/html; charset=utf-8"), "/index.html": ("index.html", "text/html; charset=utf-8"),
          "/app.js": ("app.js", "text/javascript; charset=utf-8"), "/style.css": ("style.css", "text/css; charset=utf-8")}
NO_TRACING = ("no tracing backend configured: the controller was given no --tracing-url, so this view reads "
              "traces from none (the proxies export spans to the Telemetry API's tracing providers; point "
              "--tracing-url at one's query API to list them here)")
NO_LOG_DIR = ("access logs are not readable by the controller here: the proxies write them to stdout "
              "(kubectl logs -n ambit-system ds/ztunnel, kubectl logs deploy/<waypoint>)")


class RateSource(Protocol):
    def rates(self) -> tuple[list[Rate], dict[str, object]]: ...


class Dashboard:
    """What the endpoints answer, independent of HTTP (tests call it directly)."""

    def __init__(self, mesh: Callable[[], Mesh], rates: RateSource, access_log_dir: Path | None = None,
                 refresh_seconds: float = 3.0, tracing: TraceBackend | None = None) -> None:
        self.mesh, self.source, self.access_log_dir = mesh, rates, access_log_dir
        self.refresh_seconds, self.tracing = refresh_seconds, tracing

    def graph(self) -> dict[str, Any]:
        rates, meta = self.source.rates()
        g = build(rates, self.mesh())
        g["meta"] = {**meta, "generatedAt": time.time(), "refreshSeconds": self.refresh_seconds}
        return g

    def node(self, node_id: str) -> dict[str, Any]:
        if self.access_log_dir is None:
            logs: dict[str, Any] = {"available": False, "message": NO_LOG_DIR, "lines": []}
        else:
            logs = {"available": True, "message": f"from {self.access_log_dir}",
                    "lines": accesslogs.recent(self.access_log_dir, node_id)}
        if self.tracing is None:
            spans: dict[str, Any] = {"available": False, "message": NO_TRACING, "traces": []}
        else:
            spans = self.tracing.recent(traces.service_names(node_id, self._canonical(node_id)))
        return {"id": node_id, "accessLogs": logs, "traces": spans}

    def _canonical(self, node_id: str) -> str:
        """A workload's canonical service (Istio: its `app` label), under which its spans are filed."""
        kind, _, rest = node_id.partition(":")
        ns, _, name = rest.partition("/")
        if kind != "wl":
            return ""
        for w in self.mesh().workloads:
            if (w.namespace, w.name) == (ns, name):
                return str(w.labels.get("service.istio.io/canonical-name") or w.labels.get("app") or "")
        return ""


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def parse_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--dashboard-address {address!r}: want HOST:PORT (e.g. 127.0.0.1:15015)")
    return host.strip("[]") or "127.0.0.1", int(port)


def serve(dash: Dashboard, address: str) -> tuple[str, Callable[[], None]]:
    """Start serving in a daemon thread; (the URL, a stop function). Raises OSError if it cannot bind."""
    host, port = parse_address(address)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            url = urllib.parse.urlsplit(self.path)
            try:
                if url.path in ASSETS:
                    name, ctype = ASSETS[url.path]
                    return self._reply(200, (STATIC / name).read_bytes(), ctype)
                if url.path == "/api/graph":
                    return self._json(dash.graph())
                if url.path == "/api/node":
                    node_id = urllib.parse.parse_qs(url.query).get("id", [""])[0]
                    if not node_id:
                        return self._reply(400, b"id is required\n", "text/plain")
                    return self._json(dash.node(node_id))
            except Exception as e:  # noqa: BLE001 - a broken request is this request's 500, not the server's end
                log.exception("dashboard %s", self.path)
                return self._reply(500, f"{type(e).__name__}: {e}\n".encode(), "text/plain")
            self._reply(404, b"not found\n", "text/plain")

        def do_HEAD(self) -> None:  # noqa: N802
            self.do_GET()

        def _refuse(self) -> None:
            self._reply(405, b"the topology view is read-only: use GET\n", "text/plain")

        do_POST = do_PUT = do_DELETE = do_PATCH = _refuse  # noqa: N815

        def _json(self, obj: Any) -> None:
            self._reply(200, json.dumps(obj).encode(), "application/json")

        def _reply(self, status: int, body: bytes, ctype: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet
            pass

    srv = _Server((host, port), Handler)
    t = threading.Thread(target=srv.serve_forever, name="dashboard-http", daemon=True)
    t.start()
    bound = srv.server_address[1]
    url = f"http://{host if ':' not in host else '[' + host + ']'}:{bound}/"

    def stop() -> None:
        srv.shutdown()
        srv.server_close()
    return url, stop
