"""The lab's HTTP echo app: replies with JSON saying who answered and what it saw.

Tests and the demo read `peer` to check source-IP preservation, `version` to see load balancing
and routing, and `headers` to see what the mesh added (forwarded, traceparent, ...).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def _headers(items: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Header names lower-cased; a header sent more than once is joined with "," (RFC 9110 5.3),
    so a test sees both the client's value and one a proxy appended (Gateway API's `add`)."""
    out: dict[str, str] = {}
    for k, v in items:
        k = k.lower()
        out[k] = f"{out[k]},{v}" if k in out else v
    return out


class EchoHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ambit-echo/1"
    # The head and the body leave in separate writes; with Nagle on, the body waits for the
    # client's delayed ACK (~40 ms) on a keep-alive connection, which made every request after the
    # first in a burst that slow.
    disable_nagle_algorithm = True

    def _reply(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        labels = json.loads(os.environ.get("POD_LABELS", "{}"))
        status = int(self.headers.get("x-echo-status", "200"))
        reply = {
            "pod": os.environ.get("POD_NAME", socket.gethostname()),
            "namespace": os.environ.get("POD_NAMESPACE", ""),
            "version": labels.get("version", ""),
            "peer": f"{self.client_address[0]}:{self.client_address[1]}",
            "method": self.command,
            "path": self.path,
            "headers": _headers(self.headers.items()),
            "body_bytes": len(body),
        }
        size = int(self.headers.get("x-echo-size", "0") or 0)
        out = json.dumps(reply).encode() + b"\n"
        if size > len(out):
            out = out + b"." * (size - len(out))
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(out)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _reply

    def log_message(self, fmt: str, *args: object) -> None:
        if os.environ.get("ECHO_ACCESS_LOG"):
            super().log_message(fmt, *args)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024
    allow_reuse_address = True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, default=8080)
    args = ap.parse_args()
    srv = Server(("0.0.0.0", args.port), EchoHandler)
    srv.serve_forever()


if __name__ == "__main__":
    main()
