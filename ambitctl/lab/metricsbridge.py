"""The lab's metrics bridge: Prometheus (HTTP, host netns) -> the components' metrics unix sockets.

`python -m ambitctl.lab.metricsbridge LAB_DIR PORT` serves on 127.0.0.1:PORT:
- `GET /controller`            -> <labdir>/controller.metrics.sock
- `GET /ztunnel/<node>`        -> <labdir>/<node>/metrics.sock
- `GET /waypoint/<ns>/<name>`  -> <labdir>/waypoints/<ns>.<name>.metrics.sock
Any other path is 404; a component that does not answer is 503 (Prometheus records `up == 0`).
Only these fixed socket paths are reachable: names are checked, never joined blindly.
"""

from __future__ import annotations

import http.server
import re
import socketserver
import sys
from pathlib import Path

from ambit.dataplane.endpoint import fetch
from ambitctl.lab import components, waypoints

NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


def socket_for(base: Path, path: str) -> Path | None:
    parts = path.split("?", 1)[0].strip("/").split("/")
    if parts == ["controller"]:
        return components.controller_metrics_socket(base)
    if len(parts) == 2 and parts[0] == "ztunnel" and NAME.match(parts[1]):
        return components.ztunnel_metrics_socket(base, parts[1])
    if len(parts) == 3 and parts[0] == "waypoint" and all(NAME.match(p) for p in parts[1:]):
        return waypoints.metrics_socket(base, parts[1], parts[2])
    return None


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def serve(base: Path, port: int) -> None:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            sock = socket_for(base, self.path)
            if sock is None:
                return self._reply(404, b"unknown target: /controller, /ztunnel/NODE or /waypoint/NS/NAME\n")
            try:
                status, body = fetch(sock, "/stats/prometheus", 5.0)
            except OSError as e:
                return self._reply(503, f"{sock}: {e}\n".encode())
            self._reply(status, body, "text/plain; version=0.0.4; charset=utf-8")

        def _reply(self, status: int, body: bytes, ctype: str = "text/plain") -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet
            pass

    with _Server(("127.0.0.1", port), Handler) as srv:
        srv.serve_forever()


if __name__ == "__main__":
    serve(Path(sys.argv[1]), int(sys.argv[2]))
