"""The lab's HTTP echo app: replies with JSON saying who answered and what it saw.

Tests and the demo read `peer` to check source-IP preservation, `version` to see load balancing
and routing, and `headers` to see what the mesh added (forwarded, traceparent, ...).

It can also misbehave on its own, so retries, outlier detection and least-request balancing are
shown without request tricks: `--fail-every N` fails every Nth request, `--fail-ratio R` a random
share R of them, with `--fail-status` (default 503) or, with `--fail-mode reset`, by closing the
connection without an answer; `--delay S` answers every request S seconds late. A request header
`x-echo-status` still picks the status of one answer, and `x-echo-delay` delays one answer.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import socket
import sys
import threading
import time
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
        srv: Server = self.server  # type: ignore[assignment]
        delay = srv.delay + float(self.headers.get("x-echo-delay", "0") or 0)
        if delay > 0:
            time.sleep(delay)
        if srv.should_fail():
            if srv.fail_mode == "reset":
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            status = srv.fail_status
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
    delay = 0.0
    fail_every = 0
    fail_ratio = 0.0
    fail_status = 503
    fail_mode = "status"

    def __init__(self, *a: object, **kw: object) -> None:
        super().__init__(*a, **kw)  # type: ignore[arg-type]
        self._count = itertools.count(1)
        self._lock = threading.Lock()

    def handle_error(self, request: object, client_address: tuple[str, int]) -> None:
        """A peer that went away mid-request (its proxy restarted, the client gave up) is one line:
        socketserver's default prints a traceback, which reads as a crash of the app."""
        e = sys.exc_info()[1]
        if isinstance(e, ConnectionError):
            print(f"echo: connection from {client_address[0]}:{client_address[1]} lost: "
                  f"{type(e).__name__}: {e}", file=sys.stderr, flush=True)
            return
        super().handle_error(request, client_address)  # type: ignore[arg-type]

    def should_fail(self) -> bool:
        with self._lock:
            n = next(self._count)
        if self.fail_every and n % self.fail_every == 0:
            return True
        return bool(self.fail_ratio) and random.random() < self.fail_ratio


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--delay", type=float, default=0.0, help="answer every request this many seconds late")
    ap.add_argument("--fail-every", type=int, default=0, help="fail every Nth request (0: never)")
    ap.add_argument("--fail-ratio", type=float, default=0.0, help="fail this share of requests at random")
    ap.add_argument("--fail-status", type=int, default=503, help="the status of a failed answer")
    ap.add_argument("--fail-mode", choices=("status", "reset"), default="status",
                    help="fail with --fail-status, or by closing the connection without an answer")
    args = ap.parse_args()
    srv = Server(("0.0.0.0", args.port), EchoHandler)
    srv.delay, srv.fail_every, srv.fail_ratio = args.delay, args.fail_every, args.fail_ratio
    srv.fail_status, srv.fail_mode = args.fail_status, args.fail_mode
    srv.serve_forever()


if __name__ == "__main__":
    main()
