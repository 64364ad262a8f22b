"""A lab backend for mirroring tests: answers every request (500, so a shadow answer that leaked to
the client would show) and prints one JSON line per *complete* request to stdout (the pod's log):
method, path, Host and body length. `--delay S` answers S seconds late (a slow shadow).

    python tests/lab/shadow_sink.py --port 8080 [--delay 1]
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    delay = 0.0

    def log_message(self, *a: object) -> None:
        pass

    def _any(self) -> None:
        n = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(n) if n else b""
        if len(body) < n:           # cut short: not a request
            self.close_connection = True
            return
        line = json.dumps({"method": self.command, "path": self.path, "host": self.headers.get("host"),
                           "body": len(body), "t": time.time()})
        with _lock:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
        if self.delay:
            time.sleep(self.delay)
        self.send_response(500)
        self.send_header("content-length", "6")
        self.end_headers()
        self.wfile.write(b"shadow")

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _any


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024
    allow_reuse_address = True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--delay", type=float, default=0.0)
    a = ap.parse_args()
    Handler.delay = a.delay
    Server(("0.0.0.0", a.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
