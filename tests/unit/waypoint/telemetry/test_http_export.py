"""The waypoint's OTLP/HTTP and Zipkin span exporters (waypoint/telemetry/http_export.py) against a
real HTTP/1.1 collector on loopback that answers as it is told (the retry rule itself:
test_export_retry.py)."""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as pb
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.unit.waypoint.harness import free_port
from waypoint.telemetry.http_export import HttpSpanExporter, OtlpHttpSpanExporter, ZipkinSpanExporter

# ----- a collector -------------------------------------------------------------------------------


class Collector:
    """An HTTP/1.1 collector on loopback. `answers` is a list of (status, headers) it gives to the
    requests in turn (then 200); each request's path, headers and body are kept."""

    def __init__(self, answers: list[tuple[int, dict[str, str]]] | None = None, port: int = 0,
                 close_after_each: bool = False) -> None:
        self.answers = list(answers or [])
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.connections = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                outer.connections += 1

            def do_POST(self) -> None:  # noqa: N802 - http.server's method name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                status, headers = outer.answers.pop(0) if outer.answers else (200, {})
                payload = b"{}" if status < 300 else b"not now"
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                if close_after_each:          # closes without saying so: the client finds out on its next send
                    self.close_connection = True

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def spans() -> list:
    mem = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "waypoint.default"}))
    provider.add_span_processor(SimpleSpanProcessor(mem))
    with provider.get_tracer("ambit.waypoint").start_as_current_span("GET /a", attributes={"http.method": "GET"}):
        pass
    return list(mem.get_finished_spans())


@pytest.fixture()
def collectors() -> Iterator:
    made: list[Collector] = []

    def make(*args: object, **kw: object) -> Collector:
        made.append(Collector(*args, **kw))  # type: ignore[arg-type]
        return made[-1]
    yield make
    for c in made:
        c.close()


@pytest.fixture()
def exporters() -> Iterator:
    made: list[HttpSpanExporter] = []

    def make(cls: type[HttpSpanExporter], endpoint: str, timeout: float = 10.0) -> HttpSpanExporter:
        made.append(cls(endpoint, timeout, rand=random.Random(1)))
        return made[-1]
    yield make
    for e in made:
        e.shutdown()


# ----- the exporters -----------------------------------------------------------------------------


def test_otlp_http_posts_the_sdk_s_message_as_protobuf(spans, collectors, exporters) -> None:
    c = collectors()
    exp = exporters(OtlpHttpSpanExporter, f"http://127.0.0.1:{c.port}/custom/v1/traces")
    assert exp.export(spans) is SpanExportResult.SUCCESS
    assert exp.export(spans) is SpanExportResult.SUCCESS
    [(path, headers, body), _] = c.requests
    assert path == "/custom/v1/traces" and headers["content-type"] == "application/x-protobuf"
    assert pb.ExportTraceServiceRequest.FromString(body) == encode_spans(spans)
    assert c.connections == 1                          # the second batch went on the kept-alive connection


def test_zipkin_posts_v2_json(spans, collectors, exporters) -> None:
    c = collectors()
    exp = exporters(ZipkinSpanExporter, f"http://127.0.0.1:{c.port}/api/v2/spans")
    assert exp.export(spans) is SpanExportResult.SUCCESS
    [(path, headers, body)] = c.requests
    assert path == "/api/v2/spans" and headers["content-type"] == "application/json"
    [span] = json.loads(body)
    assert span["name"] == "GET /a" and span["localEndpoint"] == {"serviceName": "waypoint.default"}
    assert span["tags"]["http.method"] == "GET"


@pytest.mark.parametrize(("answers", "result", "calls"), [
    ([(503, {"Retry-After": "0"})], SpanExportResult.SUCCESS, 2),       # transient, told to come back now
    ([(429, {"Retry-After": "0"})] * 2, SpanExportResult.SUCCESS, 3),
    ([(400, {})], SpanExportResult.FAILURE, 1),                         # not transient: dropped at once
    ([(404, {})], SpanExportResult.FAILURE, 1),
    ([(503, {"Retry-After": "60"})], SpanExportResult.FAILURE, 1),      # told to wait past the timeout
])
def test_a_transient_failure_is_retried_and_any_other_drops_the_batch(spans, collectors, exporters, answers,
                                                                       result, calls) -> None:
    c = collectors(answers)
    exp = exporters(OtlpHttpSpanExporter, f"http://127.0.0.1:{c.port}/v1/traces")
    assert exp.export(spans) is result
    assert len(c.requests) == calls


def test_a_connection_the_collector_closed_while_idle_is_redialled_at_once(spans, collectors, exporters) -> None:
    c = collectors(close_after_each=True)
    exp = exporters(ZipkinSpanExporter, f"http://127.0.0.1:{c.port}/api/v2/spans")
    t0 = time.monotonic()
    for _ in range(3):
        assert exp.export(spans) is SpanExportResult.SUCCESS
    assert time.monotonic() - t0 < 1.0                 # no backoff: each stale connection was redialled at once
    assert len(c.requests) == 3 and c.connections == 3


def test_no_collector_fails_within_the_timeout_logs_once_and_a_later_one_is_reached(spans, collectors, exporters,
                                                                                     caplog) -> None:
    port = free_port()
    exp = exporters(OtlpHttpSpanExporter, f"http://127.0.0.1:{port}/v1/traces", timeout=1.5)
    with caplog.at_level(logging.WARNING, logger="ambit.waypoint.tracing"):
        t0 = time.monotonic()
        assert exp.export(spans) is SpanExportResult.FAILURE   # refused, retried once after ~1 s, given up
        assert exp.export(spans) is SpanExportResult.FAILURE
        assert time.monotonic() - t0 < 5.0
    warnings = [r for r in caplog.records if "export failed" in r.getMessage()]
    assert len(warnings) == 1 and "ConnectionRefusedError" in warnings[0].getMessage()
    c = collectors(port=port)
    assert exp.export(spans) is SpanExportResult.SUCCESS        # the same exporter reaches it
    assert len(c.requests) == 1


def test_export_after_shutdown_is_refused(spans, collectors, exporters) -> None:
    c = collectors()
    exp = exporters(ZipkinSpanExporter, f"http://127.0.0.1:{c.port}/api/v2/spans")
    assert exp.export(spans) is SpanExportResult.SUCCESS
    exp.shutdown()
    assert exp.export(spans) is SpanExportResult.FAILURE
    assert len(c.requests) == 1


@pytest.mark.parametrize("endpoint", ["collector:4318", "https://collector/v1/traces", "http:///v1/traces",
                                      "http://collector:99999/v1/traces"])
def test_a_malformed_endpoint_is_refused_when_configured(endpoint: str) -> None:
    with pytest.raises(ValueError, match="OTLP/HTTP endpoint"):
        OtlpHttpSpanExporter(endpoint)
