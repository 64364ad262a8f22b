"""Spans as the waypoint makes them (waypoint/telemetry/tracing_sdk.py's `RequestTrace`, into an
in-memory exporter), for the encoders' tests: what the exporters really receive."""

from __future__ import annotations

import random

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from ambit.telemetryconfig import TracingConfig
from waypoint.http.record import RequestRecord
from waypoint.request import Downstream, RequestHead
from waypoint.telemetry import tracing as tr
from waypoint.telemetry.tracing_sdk import Pipeline, RequestTrace, Tracing

IDENT = tr.Identity("waypoint~10.0.0.1~wp-0.default~default.svc.cluster.local", "waypoint", namespace="default")
PARENT = tr.Context(0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7, True)


class _Target:
    protocol, address = "http1", "10.0.2.7:9080"


class _Outcome:
    def __init__(self, status: int, kind: str) -> None:
        self.status, self.kind = status, kind


def waypoint_spans(statuses: tuple[int, ...] = (503, 200), parent: tr.Context | None = PARENT,
                   user_agent: str = "curl/7.88 ünïcode") -> list[ReadableSpan]:
    """One traced request with a try per status (0: a connect failure), ended with the last: its
    client spans, then its server span."""
    mem = InMemorySpanExporter()
    pipe = Pipeline((), IDENT, 1000)
    pipe.processors.append(SimpleSpanProcessor(mem))        # type: ignore[arg-type]
    tracing = Tracing(lambda _s: TracingConfig(), IDENT, random.Random(3))
    down = Downstream(source_identity="spiffe://cluster.local/ns/default/sa/productpage", source_ip="10.0.1.5",
                      destination_ip="10.96.0.9", destination_port=9080, service="default/reviews",
                      hostname="reviews.default.svc.cluster.local")
    head = RequestHead("GET", "/reviews/0?x=1", "reviews:9080", headers=[("user-agent", user_agent)])
    rec = RequestRecord("GET", head.path, head.authority, "HTTP/1.1", down, request_id="6d3c1b5e-…",
                        user_agent=user_agent)
    rt = RequestTrace(tracing, pipe, TracingConfig(custom_tags=(("team", "literal", "pay"),)), head, down, rec,
                      parent)
    for status in statuses:
        rt.try_start(RequestHead("GET", head.path, head.authority, headers=list(head.headers)), _Target())  # type: ignore[arg-type]
        rt.try_result(_Outcome(status, "response" if status else "connect_failure"))  # type: ignore[arg-type]
    rec.status, rec.upstream, rec.bytes_sent = statuses[-1] or 503, "10.0.2.7:9080", 1024
    rt.finish(rec)
    return list(mem.get_finished_spans())
