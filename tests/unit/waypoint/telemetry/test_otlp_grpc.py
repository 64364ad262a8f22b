"""The waypoint's OTLP/gRPC span exporter on grpclib (waypoint/telemetry/otlp_grpc.py) against a
real grpcio collector that fails on purpose (the retry rule itself: test_export_retry.py)."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as pb
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as pb_grpc
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.unit.waypoint.harness import free_port
from waypoint.telemetry.otlp_grpc import GrpclibSpanExporter


class Collector(pb_grpc.TraceServiceServicer):
    """A collector that answers `fail_with` to the first `failures` calls, then accepts."""

    def __init__(self, failures: int, fail_with: grpc.StatusCode) -> None:
        self.failures, self.fail_with = failures, fail_with
        self.calls = 0
        self.spans: list[str] = []

    def Export(self, request, context):  # noqa: N802 - gRPC method name
        self.calls += 1
        if self.calls <= self.failures:
            context.abort(self.fail_with, "on purpose")
        self.spans += [s.name for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]
        return pb.ExportTraceServiceResponse()


@pytest.fixture()
def spans() -> list:
    mem = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(mem))
    with provider.get_tracer("t").start_as_current_span("GET /a"):
        pass
    return list(mem.get_finished_spans())


def serve(collector: Collector, port: int = 0) -> tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(2))
    pb_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return server, port


@pytest.fixture()
def exporter_for() -> Iterator:
    made: list[GrpclibSpanExporter] = []

    def make(endpoint: str, timeout: float = 10.0) -> GrpclibSpanExporter:
        made.append(GrpclibSpanExporter(endpoint, timeout, rand=random.Random(1)))
        return made[-1]
    yield make
    for e in made:
        e.shutdown()


@pytest.mark.parametrize(("failures", "code", "result", "calls", "arrived"), [
    (1, grpc.StatusCode.UNAVAILABLE, SpanExportResult.SUCCESS, 2, ["GET /a"]),     # transient: retried
    (10, grpc.StatusCode.INVALID_ARGUMENT, SpanExportResult.FAILURE, 1, []),      # not: dropped at once
])
def test_a_transient_failure_is_retried_and_any_other_drops_the_batch(spans, exporter_for, failures, code, result,
                                                                       calls, arrived) -> None:
    collector = Collector(failures, code)
    server, port = serve(collector)
    try:
        assert exporter_for(f"127.0.0.1:{port}").export(spans) is result
    finally:
        server.stop(None)
    assert collector.calls == calls and collector.spans == arrived


def test_no_collector_fails_the_export_within_its_timeout_and_a_later_one_is_reached(spans, exporter_for) -> None:
    port = free_port()
    exp = exporter_for(f"127.0.0.1:{port}", timeout=1.5)
    assert exp.export(spans) is SpanExportResult.FAILURE      # refused, retried once after ~1 s, given up
    collector = Collector(0, grpc.StatusCode.OK)
    server, _ = serve(collector, port)
    try:
        assert exp.export(spans) is SpanExportResult.SUCCESS   # the same exporter reconnects
    finally:
        server.stop(None)
    assert collector.spans == ["GET /a"]


def test_export_after_shutdown_is_refused_and_leaves_no_thread(spans, exporter_for) -> None:
    collector = Collector(0, grpc.StatusCode.OK)
    server, port = serve(collector)
    try:
        exp = exporter_for(f"127.0.0.1:{port}")
        assert exp.export(spans) is SpanExportResult.SUCCESS
        exp.shutdown()
        assert exp.export(spans) is SpanExportResult.FAILURE
    finally:
        server.stop(None)
    assert collector.calls == 1
    assert not [t for t in threading.enumerate() if t.name == "otlp-grpc"]


def test_a_malformed_endpoint_is_refused_when_configured() -> None:
    with pytest.raises(ValueError, match="expected host:port"):
        GrpclibSpanExporter("collector")
