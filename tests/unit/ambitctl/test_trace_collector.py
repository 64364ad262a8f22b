"""The lab's trace collector, in process: spans exported by the OpenTelemetry SDK over real OTLP
gRPC, read back through Zipkin's v2 query API by the topology view's own backend client, over
the unix socket (as the lab's controller reads it) and over HTTP (as a pod would)."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from ambitctl.lab.collector import Collector
from controller.dashboard.graph import Mesh
from controller.dashboard.server import Dashboard
from controller.dashboard.tracequery import TraceBackend


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[tuple[Collector, Path]]:
    sock = tmp_path / "tracing" / "query.sock"
    c = Collector("127.0.0.1", 0, 0, max_spans=50, query_socket=sock)
    try:
        yield c, sock
    finally:
        c.close()


def export(c: Collector, service: str, names: list[str]) -> str:
    """Spans nested in each other, as `service`; the trace id."""
    tp = TracerProvider(resource=Resource.create({"service.name": service}))
    tp.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"127.0.0.1:{c.receiver.grpc_port}",
                                                               insecure=True)))
    tracer = tp.get_tracer("test")
    with tracer.start_as_current_span(names[0], kind=trace.SpanKind.CLIENT) as root:
        with tracer.start_as_current_span(names[1], kind=trace.SpanKind.SERVER):
            with tracer.start_as_current_span(names[2], kind=trace.SpanKind.CLIENT):
                pass
        tid = f"{root.get_span_context().trace_id:032x}"
    tp.shutdown()
    return tid


def test_the_view_lists_a_trace_the_collector_received(collector: tuple[Collector, Path]) -> None:
    c, sock = collector
    tid = export(c, "frontend.default", ["GET myapp", "myapp:80/*", "router outbound"])
    other = export(c, "cart.shop", ["a", "b", "c"])
    dash = Dashboard(lambda: Mesh(), None, None, tracing=TraceBackend(f"unix:{sock}"))  # type: ignore[arg-type]
    t = dash.node("wl:default/frontend")["traces"]
    assert t["available"] and t["services"] == ["frontend.default"]
    [row] = t["traces"]
    assert row["traceId"] == tid != other and row["spanCount"] == 3 and row["root"] == "GET myapp"
    assert [(s["name"], s["depth"], s["kind"]) for s in row["spans"]] == [
        ("GET myapp", 0, "CLIENT"), ("myapp:80/*", 1, "SERVER"), ("router outbound", 2, "CLIENT")]
    assert row["spans"][2]["parentId"] == row["spans"][1]["spanId"]
    # the same API over HTTP, with Zipkin's shapes
    base = f"http://127.0.0.1:{c.receiver.http_port}/api/v2"
    with urllib.request.urlopen(base + "/services", timeout=5) as r:
        assert json.loads(r.read()) == ["cart.shop", "frontend.default"]
    with urllib.request.urlopen(f"{base}/trace/{tid}", timeout=5) as r:
        spans = json.loads(r.read())
    assert {s["localEndpoint"]["serviceName"] for s in spans} == {"frontend.default"} and len(spans) == 3
    assert all(s["traceId"] == tid and s["duration"] >= 0 and s["timestamp"] > 0 for s in spans)


def test_it_keeps_a_bounded_number_of_spans(collector: tuple[Collector, Path]) -> None:
    c, sock = collector
    first = export(c, "old.default", ["a", "b", "c"])
    for i in range(17):                         # 51 more spans: the oldest are dropped (50 kept)
        export(c, "new.default", [f"a{i}", "b", "c"])
    assert len(c.receiver.snapshot()) == 50
    backend = TraceBackend(f"unix:{sock}")
    assert backend.get("/api/v2/traces?serviceName=old.default") == []
    with pytest.raises(OSError, match="404"):
        backend.get(f"/api/v2/trace/{first}")
    assert len(backend.get("/api/v2/traces?serviceName=new.default&limit=100")) == 17


def test_a_backend_of_the_wrong_api_is_reported(collector: tuple[Collector, Path]) -> None:
    c, _ = collector
    t = TraceBackend(f"http://127.0.0.1:{c.receiver.http_port}", "jaeger").recent(["frontend.default"])
    assert not t["available"] and "404" in t["message"] and t["traces"] == []
