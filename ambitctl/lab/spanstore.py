"""Zipkin's v2 query API over the spans the lab's collector holds (pure: the spans and the clock
are arguments; the collector, ambitctl/lab/collector.py, is the I/O).

Only what a trace viewer needs, with Zipkin's shapes (zipkin2-api.yaml):

- `GET /api/v2/services`: the service names, sorted;
- `GET /api/v2/traces?serviceName=S&endTs=MS&lookback=MS&limit=N`: the traces (each a list of
  span objects) that have a span of S (any, without serviceName) started within
  [endTs - lookback, endTs], newest first (endTs defaults to now, lookback to endTs: all);
- `GET /api/v2/trace/{traceId}`: one trace's spans, 404 when unknown.

A span received twice (the same trace and span id, e.g. over OTLP and Zipkin) is answered once.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Iterable
from typing import Any

from ambitctl.lab.otlp_receiver import Span

DEFAULT_LIMIT = 10      # Zipkin's default


def to_zipkin(s: Span) -> dict[str, Any]:
    out: dict[str, Any] = {"traceId": s.trace_id, "id": s.span_id, "name": s.name,
                           "timestamp": s.start_us, "duration": s.duration_us,
                           "localEndpoint": {"serviceName": s.service}, "tags": dict(s.attributes)}
    if s.parent_id:
        out["parentId"] = s.parent_id
    if s.kind in ("SERVER", "CLIENT", "PRODUCER", "CONSUMER"):
        out["kind"] = s.kind
    if s.error and "error" not in out["tags"]:
        out["tags"]["error"] = "true"
    return out


def by_trace(spans: Iterable[Span]) -> dict[str, list[Span]]:
    out: dict[str, dict[str, Span]] = {}
    for s in spans:
        out.setdefault(s.trace_id, {}).setdefault(s.span_id, s)
    return {t: list(v.values()) for t, v in out.items()}


def traces(spans: Iterable[Span], service: str = "", end_ms: int = 0, lookback_ms: int = 0,
           limit: int = DEFAULT_LIMIT) -> list[list[dict[str, Any]]]:
    lo = (end_ms - lookback_ms) * 1000 if lookback_ms else 0
    hi = end_ms * 1000
    found = []
    for group in by_trace(spans).values():
        if service and not any(s.service == service for s in group):
            continue
        if not any(lo <= s.start_us <= hi for s in group):
            continue
        found.append(group)
    found.sort(key=lambda g: -max(s.start_us for s in g))
    return [[to_zipkin(s) for s in sorted(g, key=lambda s: s.start_us)] for g in found[:limit]]


def _int(q: dict[str, list[str]], name: str, default: int) -> int:
    v = q.get(name, [""])[0]
    if not v:
        return default
    if not v.isdigit():
        raise ValueError(f"{name}={v!r}: must be a non-negative integer")
    return int(v)


def answer(path: str, spans: list[Span], now_ms: int) -> tuple[int, bytes]:
    """(HTTP status, body) for a GET of the query API."""
    url = urllib.parse.urlsplit(path)
    q = urllib.parse.parse_qs(url.query)
    try:
        if url.path == "/api/v2/services":
            return 200, json.dumps(sorted({s.service for s in spans if s.service})).encode()
        if url.path == "/api/v2/traces":
            end = _int(q, "endTs", now_ms)
            got = traces(spans, q.get("serviceName", [""])[0], end, _int(q, "lookback", end),
                         _int(q, "limit", DEFAULT_LIMIT))
            return 200, json.dumps(got).encode()
        if url.path.startswith("/api/v2/trace/"):
            tid = url.path.rsplit("/", 1)[1].lower().rjust(32, "0")
            group = by_trace(s for s in spans if s.trace_id == tid).get(tid)
            if not group:
                return 404, f"trace {tid} not found\n".encode()
            return 200, json.dumps([to_zipkin(s) for s in sorted(group, key=lambda s: s.start_us)]).encode()
    except ValueError as e:
        return 400, f"{e}\n".encode()
    return 404, b"not found\n"
