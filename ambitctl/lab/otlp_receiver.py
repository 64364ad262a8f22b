"""A real span and log receiver for tests: OTLP gRPC (a grpcio server implementing the
OpenTelemetry protos' TraceService/Export and LogsService/Export), OTLP HTTP (protobuf `POST
/v1/traces`, `POST /v1/logs`) and Zipkin's v2 API (JSON `POST /api/v2/spans`), collecting into
one list of `Span`s and one of `LogEntry`s (access logs of an `envoyOtelAls` provider).

In-process: `with Receiver() as r: ... r.wait(lambda spans: ...)`. As a process (the lab runs it
in a pod's netns): `python -m ambitctl.lab.otlp_receiver --host IP --grpc-port N --http-port M
--out FILE`, which appends one JSON line per span to FILE (`read_spans(FILE)` reads them back); without
--out it only counts them (the bench's sink).
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections import deque
from collections.abc import Callable, MutableSequence
from concurrent import futures
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

# OTLP's Span.SpanKind numbers -> the names Zipkin uses (and we compare on)
OTLP_KINDS = {1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}
STATUS_ERROR = 2                # Status.StatusCode.STATUS_CODE_ERROR


@dataclass
class Span:
    via: str                    # otlp-grpc | otlp-http | zipkin
    service: str                # the resource's service.name (Zipkin: localEndpoint.serviceName)
    trace_id: str               # hex, 32 digits
    span_id: str                # hex, 16 digits
    parent_id: str              # "" for a root span
    name: str
    kind: str                   # SERVER | CLIENT | ...
    attributes: dict[str, str] = field(default_factory=dict)
    start_us: int = 0           # epoch microseconds (what Zipkin's `timestamp` is)
    duration_us: int = 0
    error: bool = False         # OTLP status ERROR (Zipkin: an `error` tag)


@dataclass
class LogEntry:
    via: str                    # otlp-grpc | otlp-http
    scope: str                  # the instrumentation scope's name
    resource: dict[str, str]
    body: str
    attributes: dict[str, str] = field(default_factory=dict)
    time_unix_nano: int = 0


def logs_from_otlp(req: logs_service_pb2.ExportLogsServiceRequest, via: str) -> list[LogEntry]:
    return [LogEntry(via, sl.scope.name, {a.key: _value(a.value) for a in rl.resource.attributes}, _value(r.body),
                     {a.key: _value(a.value) for a in r.attributes}, r.time_unix_nano)
            for rl in req.resource_logs for sl in rl.scope_logs for r in sl.log_records]


def _value(v: AnyValue) -> str:
    which = v.WhichOneof("value")
    return "" if which is None else str(getattr(v, which))


def from_otlp(req: trace_service_pb2.ExportTraceServiceRequest, via: str) -> list[Span]:
    out = []
    for rs in req.resource_spans:
        res = {a.key: _value(a.value) for a in rs.resource.attributes}
        for ss in rs.scope_spans:
            for s in ss.spans:
                out.append(Span(via, res.get("service.name", ""), s.trace_id.hex(), s.span_id.hex(),
                                s.parent_span_id.hex(), s.name, OTLP_KINDS.get(s.kind, str(s.kind)),
                                {a.key: _value(a.value) for a in s.attributes},
                                s.start_time_unix_nano // 1000,
                                max(0, s.end_time_unix_nano - s.start_time_unix_nano) // 1000,
                                s.status.code == STATUS_ERROR))
    return out


def from_zipkin(body: bytes) -> list[Span]:
    out = []
    for s in json.loads(body):
        tid = s["traceId"].rjust(32, "0")
        tags = {k: str(v) for k, v in (s.get("tags") or {}).items()}
        out.append(Span("zipkin", (s.get("localEndpoint") or {}).get("serviceName", ""), tid, s["id"],
                        s.get("parentId", ""), s.get("name", ""), s.get("kind", ""), tags,
                        int(s.get("timestamp") or 0), int(s.get("duration") or 0), "error" in tags))
    return out


class Receiver:
    """The three receivers on `host`; spans land in `self.spans` (and in `out`, when given)."""

    def __init__(self, host: str = "127.0.0.1", grpc_port: int = 0, http_port: int = 0,
                 out: Path | None = None, keep: bool = True, limit: int | None = None,
                 query: Callable[[str], tuple[int, bytes]] | None = None, logs_out: Path | None = None) -> None:
        # `limit`: keep only the most recent spans (the lab's collector runs for days); `query`:
        # answers GETs on the HTTP port (the collector's Zipkin query API), else 404
        self.spans: MutableSequence[Span] = deque(maxlen=limit) if limit else []
        self.query = query
        self.count = 0              # spans received (kept in `spans` only with `keep`)
        self.keep = keep
        self.requests = {"otlp-grpc": 0, "otlp-http": 0, "zipkin": 0}
        self.out = out
        self.logs: MutableSequence[LogEntry] = deque(maxlen=limit) if limit else []
        self.logs_out = logs_out
        self.log_requests = 0
        self.log_count = 0
        self.seen_headers: list[tuple[str, dict[str, str]]] = []   # (path or gRPC method, its headers), each request
        self._lock = threading.Lock()
        self.grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_TraceService(self), self.grpc)
        logs_service_pb2_grpc.add_LogsServiceServicer_to_server(_LogsService(self), self.grpc)
        self.grpc_port = self.grpc.add_insecure_port(f"{host}:{grpc_port}")
        self.grpc.start()
        self.http = ThreadingHTTPServer((host, http_port), handler(self))
        self.http.daemon_threads = True
        self.http_port = self.http.server_address[1]
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def add(self, spans: list[Span], via: str) -> None:
        with self._lock:
            self.requests[via] += 1
            self.count += len(spans)
            self._keep(spans, self.spans, self.out)

    def add_logs(self, logs: list[LogEntry]) -> None:
        with self._lock:
            self.log_requests += 1
            self.log_count += len(logs)
            self._keep(logs, self.logs, self.logs_out)

    def _keep(self, items: list[Any], kept: MutableSequence[Any], out: Path | None) -> None:
        """Under the lock: `items` into `kept` (with `keep`) and as JSON lines onto `out`."""
        if self.keep:
            kept.extend(items)
        if out is not None:
            with out.open("a") as f:
                for x in items:
                    f.write(json.dumps(asdict(x)) + "\n")

    def wait_logs(self, pred: Callable[[list[LogEntry]], bool], timeout: float = 10.0) -> list[LogEntry]:
        """The log entries once `pred(entries)` holds (or at the timeout, for the caller to assert on)."""
        deadline = time.time() + timeout
        while True:
            with self._lock:
                logs = list(self.logs)
            if pred(logs) or time.time() > deadline:
                return logs
            time.sleep(0.05)

    def snapshot(self) -> list[Span]:
        """The spans kept, as of now."""
        with self._lock:
            return list(self.spans)

    def wait(self, pred: Callable[[list[Span]], bool], timeout: float = 10.0) -> list[Span]:
        """The spans once `pred(spans)` holds (or at the timeout, for the caller to assert on)."""
        deadline = time.time() + timeout
        while True:
            spans = self.snapshot()
            if pred(spans) or time.time() > deadline:
                return spans
            time.sleep(0.05)

    def close(self) -> None:
        self.grpc.stop(0)
        self.http.shutdown()
        self.http.server_close()

    def __enter__(self) -> Receiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, r: Receiver) -> None:
        self.r = r

    def Export(self, request, context):  # noqa: N802 (the proto's name)  # type: ignore[no-untyped-def]
        self.r.seen_headers.append(("trace-grpc", {k: v for k, v in context.invocation_metadata()}))
        self.r.add(from_otlp(request, "otlp-grpc"), "otlp-grpc")
        return trace_service_pb2.ExportTraceServiceResponse()


class _LogsService(logs_service_pb2_grpc.LogsServiceServicer):
    def __init__(self, r: Receiver) -> None:
        self.r = r

    def Export(self, request, context):  # noqa: N802 (the proto's name)  # type: ignore[no-untyped-def]
        self.r.add_logs(logs_from_otlp(request, "otlp-grpc"))
        return logs_service_pb2.ExportLogsServiceResponse()


def handler(r: Receiver) -> type[BaseHTTPRequestHandler]:
    """The HTTP side (OTLP HTTP and Zipkin ingest, `r.query` for GETs): also served on a unix
    socket by the lab's collector."""
    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802
            code, out = r.query(self.path) if r.query else (404, b"not found")
            self.send_response(code)
            self.send_header("content-type", "application/json" if code == 200 else "text/plain")
            self.send_header("content-length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            r.seen_headers.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
            if self.path == "/v1/traces":
                req = trace_service_pb2.ExportTraceServiceRequest()
                req.ParseFromString(body)
                r.add(from_otlp(req, "otlp-http"), "otlp-http")
                out, ctype, code = trace_service_pb2.ExportTraceServiceResponse().SerializeToString(), \
                    "application/x-protobuf", 200
            elif self.path == "/v1/logs":
                lreq = logs_service_pb2.ExportLogsServiceRequest()
                lreq.ParseFromString(body)
                r.add_logs(logs_from_otlp(lreq, "otlp-http"))
                out, ctype, code = logs_service_pb2.ExportLogsServiceResponse().SerializeToString(), \
                    "application/x-protobuf", 200
            elif self.path == "/api/v2/spans":
                r.add(from_zipkin(body), "zipkin")
                out, ctype, code = b"", "text/plain", 202
            else:
                out, ctype, code = b"not found", "text/plain", 404
            self.send_response(code)
            self.send_header("content-type", ctype)
            self.send_header("content-length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

    return H


def read_spans(path: Path) -> list[Span]:
    if not path.exists():
        return []
    return [Span(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]


def read_logs(path: Path) -> list[LogEntry]:
    if not path.exists():
        return []
    return [LogEntry(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--host", default="0.0.0.0")
    ap.add_argument("--grpc-port", type=int, default=4317)
    ap.add_argument("--http-port", type=int, default=4318)
    ap.add_argument("--out", type=Path, help="append the spans here as JSON lines (default: count them only)")
    ap.add_argument("--logs-out", type=Path, help="append the log records here as JSON lines")
    a = ap.parse_args()
    Receiver(a.host, a.grpc_port, a.http_port, a.out, keep=False, logs_out=a.logs_out)
    print(f"receiving OTLP gRPC on {a.grpc_port}, OTLP HTTP and Zipkin on {a.http_port}", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
