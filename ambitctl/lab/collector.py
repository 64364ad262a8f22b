"""The lab's trace collector (`ambit lab up --tracing`): OTLP gRPC and HTTP and Zipkin ingest, the
most recent spans in memory, and Zipkin's v2 query API over them. A small stand-in for a Jaeger or
Zipkin server, so the topology view lists traces in a lab with nothing else installed.

It runs as a pod of the lab (ambitctl/lab/tracing.py): in its netns, so the waypoints reach it at
its pod IP; its query API is served on that IP's HTTP port and on a unix socket in the lab dir,
which the controller (in the host netns) reads.

    python -m ambitctl.lab.collector --grpc-port 4317 --http-port 9411 --query-socket PATH
"""

from __future__ import annotations

import argparse
import socketserver
import threading
import time
from pathlib import Path

from ambitctl.lab import spanstore
from ambitctl.lab.otlp_receiver import Receiver, handler

MAX_SPANS = 20000       # ~ a few minutes of a busy lab at 100 % sampling; memory stays ~ tens of MB


class _UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


class Collector:
    def __init__(self, host: str = "0.0.0.0", grpc_port: int = 4317, http_port: int = 9411,
                 max_spans: int = MAX_SPANS, query_socket: Path | None = None) -> None:
        self.receiver = Receiver(host, grpc_port, http_port, limit=max_spans, query=self.query)
        self.unix: _UnixHTTPServer | None = None
        if query_socket is not None:
            query_socket.parent.mkdir(parents=True, exist_ok=True)
            query_socket.unlink(missing_ok=True)
            self.unix = _UnixHTTPServer(str(query_socket), handler(self.receiver))
            threading.Thread(target=self.unix.serve_forever, daemon=True).start()

    def query(self, path: str) -> tuple[int, bytes]:
        return spanstore.answer(path, self.receiver.snapshot(), int(time.time() * 1000))

    def close(self) -> None:
        self.receiver.close()
        if self.unix is not None:
            self.unix.shutdown()
            self.unix.server_close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="0.0.0.0")
    ap.add_argument("--grpc-port", type=int, default=4317, help="OTLP gRPC")
    ap.add_argument("--http-port", type=int, default=9411,
                    help="OTLP HTTP (POST /v1/traces), Zipkin (POST /api/v2/spans) and the query API (GET)")
    ap.add_argument("--max-spans", type=int, default=MAX_SPANS, help="keep this many recent spans")
    ap.add_argument("--query-socket", type=Path, help="the query API on this unix socket as well")
    a = ap.parse_args()
    Collector(a.host, a.grpc_port, a.http_port, a.max_spans, a.query_socket)
    print(f"collector: OTLP gRPC on {a.grpc_port}; OTLP HTTP, Zipkin and its query API on {a.http_port}"
          + (f" and {a.query_socket}" if a.query_socket else "") + f"; keeping {a.max_spans} spans", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
