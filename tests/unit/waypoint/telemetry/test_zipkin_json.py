"""The waypoint's Zipkin v2 JSON encoder (waypoint/telemetry/zipkin_json.py) against the SDK's: parsed,
its body is the SDK's `JsonV2Encoder` body for the same spans, as the SDK's `ZipkinExporter` sends
it, save the two differences the module documents (no `debug`, no null tag)."""

from __future__ import annotations

import json
from typing import Any

from opentelemetry.exporter.zipkin.json.v2 import JsonV2Encoder
from opentelemetry.exporter.zipkin.node_endpoint import NodeEndpoint
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import (
    SpanKind,
    Status,
    StatusCode,
)

from tests.unit.waypoint.telemetry.spans import waypoint_spans
from waypoint.telemetry import zipkin_json


def provider(mem: InMemorySpanExporter, limits: SpanLimits | None = None) -> TracerProvider:
    p = TracerProvider(resource=Resource.create({"service.name": "waypoint.default", "service.namespace": "default"}),
                       span_limits=limits)
    p.add_span_processor(SimpleSpanProcessor(mem))
    return p


def sdk_body(spans: list) -> list[dict[str, Any]]:
    """What the SDK's ZipkinExporter posts (v2, no tag truncation), with the documented differences
    taken out."""
    local = NodeEndpoint()
    local.service_name = spans[0].resource.attributes["service.name"]   # as ZipkinExporter.export sets it
    body = json.loads(JsonV2Encoder(None).serialize(spans, local))
    for s in body:
        assert s.pop("debug") is True                 # the SDK flags every sampled span as debug
        s["tags"] = {k: v for k, v in s["tags"].items() if v is not None}
    return body


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    assert len(keys) == len(set(keys)), f"a key written twice: {keys}"
    return dict(pairs)


def parse(body: bytes) -> list[dict[str, Any]]:
    """Our body as a collector reads it, and no object in it has a key twice (JSON leaves the
    meaning of that to each parser)."""
    return json.loads(body, object_pairs_hook=unique_keys)


def same(spans: list) -> list[dict[str, Any]]:
    ours = parse(zipkin_json.Encoder().request(spans))
    assert ours == sdk_body(spans)
    return ours


def test_the_waypoint_s_own_spans() -> None:
    """The spans of a traced request as the waypoint makes them: a remote parent, a failed try and
    a good one."""
    c1, c2, srv = same(waypoint_spans())
    assert (c1["kind"], srv["kind"]) == ("CLIENT", "SERVER")
    assert srv["traceId"] == "4bf92f3577b34da6a3ce929d0e0e4736" and srv["parentId"] == "00f067aa0ba902b7"
    assert c1["parentId"] == c2["parentId"] == srv["id"] and srv["localEndpoint"] == {"serviceName": "waypoint.default"}
    assert c1["tags"]["error"] == "" and c1["tags"]["otel.status_code"] == "ERROR" and "error" not in c2["tags"]
    assert srv["tags"]["otel.library.name"] == "ambit.waypoint" and srv["tags"]["team"] == "pay"
    [_, root] = same(waypoint_spans((0,), parent=None))
    assert "parentId" not in root


def test_every_attribute_type_events_dropped_counts_and_kinds() -> None:
    mem = InMemorySpanExporter()
    tracer = provider(mem, SpanLimits(max_span_attributes=18, max_events=1)).get_tracer("t", "1.2.3")
    attrs = {"s": "x", "empty": "", "long": "é" * 300, "t": True, "f": False, "zero": 0, "neg": -5,
             "big": (1 << 63) - 1, "pi": 3.25, "negzero": -0.0, "strs": ["a", "", "b"], "ints": [1, -2, 3],
             "bools": [True, False], "floats": [0.5, -1.5], "none_in": ["a", None], "empty_list": [],
             "q": 'say "hi"\n', "ctl": "\x00\x1f"}
    for kind in (SpanKind.INTERNAL, SpanKind.PRODUCER, SpanKind.CONSUMER):
        span = tracer.start_span(f"k{kind.value}", kind=kind, attributes=attrs)
        span.set_attribute("over", "the limit")         # 19th attribute: dropped, counted
        span.add_event("first")                         # over max_events: the oldest is dropped, counted
        span.add_event("retry", {"try": 2, "why": "reset", "codes": [503, 504]})
        span.end()
    body = same(list(mem.get_finished_spans()))
    assert [b["kind"] for b in body] == [None, "PRODUCER", "CONSUMER"]
    t = body[0]["tags"]
    assert t["t"] == "true" and t["bools"] == '["true","false"]' and t["none_in"] == '["a",null]'
    assert t["otel.dropped_attributes_count"] == "1" and t["otel.dropped_events_count"] == "1"
    assert t["otel.library.version"] == "1.2.3"
    assert json.loads(body[0]["annotations"][0]["value"]) == {"retry": {"codes": [503, 504], "try": 2, "why": "reset"}}


def test_cached_pairs_keep_their_type_and_sign() -> None:
    """One encoder, spans whose attributes are equal in Python but not as tags: True and 1, 0.0
    and -0.0; and an attribute the status overwrites (the SDK's `error` tag wins)."""
    mem = InMemorySpanExporter()
    tracer = provider(mem).get_tracer("t")
    for v in (1, True, 0.0, -0.0, 1, True):
        tracer.start_span("s", attributes={"v": v}).end()
    failed = tracer.start_span("f", attributes={"error": "mine", "service.name": "mine"})
    failed.set_status(Status(StatusCode.ERROR, "upstream"))
    failed.end()
    enc = zipkin_json.Encoder()
    spans = list(mem.get_finished_spans())
    for _ in range(2):                                  # the second pass reads every pair from the cache
        body = parse(enc.request(spans))
        assert body == sdk_body(spans)
        assert [b["tags"]["v"] for b in body[:6]] == ["1", "true", "0.0", "-0.0", "1", "true"]
        assert body[6]["tags"]["error"] == "upstream" and body[6]["tags"]["service.name"] == "waypoint.default"


def test_a_span_without_parent_status_or_attributes() -> None:
    mem = InMemorySpanExporter()
    tracer = provider(mem).get_tracer("t")
    tracer.start_span("bare").end()
    [b] = same(list(mem.get_finished_spans()))
    assert "parentId" not in b and "annotations" not in b and "otel.status_code" not in b["tags"]


def test_two_providers_keep_their_own_service_and_the_cache_stays_bounded() -> None:
    """A config change builds a new TracerProvider: its spans carry its own resource's tags."""
    enc = zipkin_json.Encoder()
    names = []
    for i in range(70):
        mem = InMemorySpanExporter()
        p = TracerProvider(resource=Resource.create({"service.name": f"svc-{i}"}))
        p.add_span_processor(SimpleSpanProcessor(mem))
        p.get_tracer("t").start_span("x").end()
        [b] = parse(enc.request(mem.get_finished_spans()))
        names.append((b["localEndpoint"]["serviceName"], b["tags"]["service.name"]))
    assert names == [(f"svc-{i}", f"svc-{i}") for i in range(70)]
    assert len(enc._tail) <= 64
