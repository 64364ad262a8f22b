"""The waypoint's OTLP span encoder (waypoint/telemetry/otlp_wire.py) against the SDK's: the bytes it
writes, decoded by the protobuf library, must be the message `encode_spans` builds for the same
SDK spans, whatever they carry."""

from __future__ import annotations

import random

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as pb
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
    set_span_in_context,
)

from tests.unit.waypoint.telemetry.spans import waypoint_spans
from waypoint.telemetry import otlp_wire


def provider(mem: InMemorySpanExporter, resource: dict | None = None, limits: SpanLimits | None = None,
             schema_url: str = "") -> TracerProvider:
    p = TracerProvider(resource=Resource.create(resource or {"service.name": "wp"}, schema_url=schema_url),
                       span_limits=limits)
    p.add_span_processor(SimpleSpanProcessor(mem))
    return p


def same(spans: list, enc: otlp_wire.Encoder | None = None) -> pb.ExportTraceServiceRequest:
    """Our bytes decode to exactly the SDK's message; returns it."""
    ours = pb.ExportTraceServiceRequest.FromString((enc or otlp_wire.Encoder()).request(spans))
    sdk = encode_spans(spans)
    assert ours == sdk
    assert ours.SerializeToString(deterministic=True) == sdk.SerializeToString(deterministic=True)
    return ours


def test_the_waypoint_s_own_spans() -> None:
    """The spans of a traced request as the waypoint makes them (finished `ReadableSpan`s with a
    plain attribute dict): a remote parent, a failed try and a good one, string attributes."""
    spans = waypoint_spans()
    msg = same(spans)
    out = msg.resource_spans[0].scope_spans[0].spans
    assert [s.kind for s in out] == [3, 3, 2]         # CLIENT, CLIENT, SERVER
    assert out[2].flags == 0x300 and out[0].flags == 0x100   # the server's parent is remote; the clients' is not
    assert out[0].status.code == 2 and out[2].status.code == 0
    assert same(waypoint_spans((0,), parent=None)).resource_spans[0].scope_spans[0].spans[1].parent_span_id == b""


def test_every_attribute_type_status_event_link_and_trace_state() -> None:
    mem = InMemorySpanExporter()
    tracer = provider(mem).get_tracer("t", "1.2.3", schema_url="https://opentelemetry.io/schemas/1.21.0")
    ctx = SpanContext(0x1, 0x2, is_remote=False, trace_flags=TraceFlags(1), trace_state=TraceState([("k", "v"),
                                                                                                   ("a", "b")]))
    attrs = {"s": "x", "empty": "", "long": "é" * 300, "t": True, "f": False, "zero": 0, "neg": -5,
             "big": (1 << 63) - 1, "small": -(1 << 63), "pi": 3.25, "negzero": -0.0, "strs": ["a", "", "b"],
             "ints": [1, -2, 3], "bools": [True, False], "floats": [0.5, -1.5], "none_in": ["a", None]}
    span = tracer.start_span("every", context=set_span_in_context(NonRecordingSpan(ctx)), kind=SpanKind.PRODUCER,
                             attributes=attrs, links=[Link(SpanContext(0x3, 0x4, is_remote=True), {"l": 1}),
                                                      Link(SpanContext(0x5, 0x6, is_remote=False))])
    span.add_event("retry", {"attempt": 2, "why": "reset"})
    span.add_event("plain")
    span.set_status(Status(StatusCode.ERROR, "upstream reset"))
    span.end()
    tracer.start_span("ok", kind=SpanKind.INTERNAL).end()      # no parent: flags 0x100, OK status below
    s = tracer.start_span("fine", kind=SpanKind.CONSUMER)
    s.set_status(Status(StatusCode.OK))
    s.end()
    same(list(mem.get_finished_spans()))


def test_spans_of_several_resources_and_scopes_are_grouped_as_the_sdk_groups_them() -> None:
    mem = InMemorySpanExporter()
    a = provider(mem, {"service.name": "a"}, schema_url="https://example/schema")
    b = provider(mem, {"service.name": "b", "n": 1})
    order = [(a, "x"), (b, "x"), (a, "y"), (a, "x"), (b, "z")]
    for p, scope in order:
        p.get_tracer(scope).start_span(f"{scope}-span").end()
    msg = same(list(mem.get_finished_spans()))
    assert len(msg.resource_spans) == 2
    assert [len(rs.scope_spans) for rs in msg.resource_spans] == [2, 2]


def test_dropped_counts_and_an_attribute_otlp_cannot_carry() -> None:
    mem = InMemorySpanExporter()
    tracer = provider(mem, limits=SpanLimits(max_span_attributes=3, max_events=1, max_links=1)).get_tracer("t")
    span = tracer.start_span("limited", attributes={f"a{i}": i for i in range(6)},
                             links=[Link(SpanContext(0x3, 0x4, False)), Link(SpanContext(0x5, 0x6, False))])
    span.add_event("one")
    span.add_event("two")
    span.end()
    huge = tracer.start_span("huge", attributes={"ok": "kept", "too_big": 1 << 64})  # outside int64
    huge.end()
    msg = same(list(mem.get_finished_spans()))
    kept = msg.resource_spans[0].scope_spans[0].spans[1].attributes
    assert [kv.key for kv in kept] == ["ok"]          # left out by both encoders, not the whole span


def test_the_attribute_cache_keeps_types_apart_and_stays_bounded() -> None:
    """True == 1 in Python, and an encoded pair is reused from the cache: a bool must never come
    back as an int. Unique values (request ids) must not grow the cache without bound."""
    mem = InMemorySpanExporter()
    tracer = provider(mem).get_tracer("t")
    for v in (True, 1, "1", 1, True):
        tracer.start_span("s", attributes={"a": v}).end()
    enc = otlp_wire.Encoder()
    msg = same(list(mem.get_finished_spans()), enc)
    kinds = [s.attributes[0].value.WhichOneof("value") for s in msg.resource_spans[0].scope_spans[0].spans]
    assert kinds == ["bool_value", "int_value", "string_value", "int_value", "bool_value"]
    mem.clear()
    rng = random.Random(1)
    for _ in range(3):
        for _i in range(3000):
            tracer.start_span("s", attributes={"id": f"{rng.getrandbits(64):x}", "route": "r1"}).end()
        same(list(mem.get_finished_spans()), enc)
        mem.clear()
    assert len(enc._span_pairs) <= 2 * otlp_wire._CACHE_LIMIT
    assert enc._span_pairs.young.get(("route", str, "r1")) is not None      # the pair that repeats stayed


def test_one_pair_in_a_resource_a_span_an_event_and_a_link() -> None:
    """The same key and value as a resource attribute, a span attribute, an event's and a link's:
    each is a different field of a different message, so no encoding of one may stand for another."""
    mem = InMemorySpanExporter()
    tracer = provider(mem, {"service.name": "wp"}).get_tracer("t")
    link_ctx = SpanContext(0x5, 0x6, is_remote=True, trace_flags=TraceFlags(1))
    for _ in range(2):
        span = tracer.start_span("s", attributes={"service.name": "wp"},
                                 links=[Link(link_ctx, {"service.name": "wp"})])
        span.add_event("e", {"service.name": "wp"})
        span.end()
    msg = same(list(mem.get_finished_spans()))
    for s in msg.resource_spans[0].scope_spans[0].spans:
        assert [a.key for a in s.attributes] == ["service.name"] and s.trace_id != b"\0" * 16
        assert [a.key for a in s.events[0].attributes] == ["service.name"]
        assert [a.key for a in s.links[0].attributes] == ["service.name"]


@pytest.mark.parametrize("n", [0, 1, 127, 128, 300, 16383, 16384, (1 << 63) - 1, (1 << 64) - 1])
def test_varint_is_protobufs(n: int) -> None:
    from google.protobuf.internal.decoder import _DecodeVarint
    value, end = _DecodeVarint(otlp_wire.varint(n), 0)
    assert (value, end) == (n, len(otlp_wire.varint(n)))


def test_no_spans_is_an_empty_request() -> None:
    assert otlp_wire.Encoder().request([]) == b""
    assert not same([]).resource_spans
