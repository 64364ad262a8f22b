"""A node's recent traces, for the topology view's side panel: the tracing backend's answer turned
into the panel's rows (pure; the HTTP query is tracequery.py).

The view reads traces the way Kiali does: from the tracing backend's own query API, by service
name. Two APIs are understood, both JSON over HTTP:

- Zipkin v2 (`GET /api/v2/traces?serviceName=S&lookback=MS&limit=N`): a list of traces, each a
  list of spans `{traceId, id, parentId?, name, kind, timestamp (µs), duration (µs),
  localEndpoint: {serviceName}, tags: {}}`. Zipkin itself, the lab's collector, and Jaeger's and
  Tempo's Zipkin-compatible query front ends answer it.
- Jaeger (`GET /api/traces?service=S&lookback=1h&limit=N`): `{"data": [{traceID, spans: [{spanID,
  operationName, references: [{refType: CHILD_OF, spanID}], startTime, duration, tags: [{key,
  value}], processID}], processes: {ID: {serviceName}}}]}`. Jaeger's query service, and Tempo
  behind its Jaeger query plugin.

Both become `Span`s, then `rows`: one per trace (id, root span, duration, status, span count,
services), each with its spans in tree order (depth, parent, offset and duration), so the page
can show a trace's spans without asking again.

Which service a node's traces are filed under follows Istio's naming: a proxy reports spans as
`<canonical service>.<namespace>` (the waypoint: `<gateway>.<namespace>`), so `service_names`
maps a node to the names to query.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

APIS = ("zipkin", "jaeger")


@dataclass(frozen=True)
class Span:
    trace_id: str
    span_id: str
    parent_id: str              # "" for a root span (or one whose parent the backend does not have)
    name: str
    service: str
    kind: str                   # SERVER | CLIENT | ... ("" when the backend does not say)
    start_us: int
    duration_us: int
    tags: Mapping[str, str] = field(default_factory=dict)

    @property
    def error(self) -> bool:
        """Zipkin's `error` tag, OTel's status code, or a 5xx answer (Istio's span status rule)."""
        code = self.tags.get("http.status_code", "")
        return ("error" in self.tags or self.tags.get("otel.status_code") == "ERROR"
                or (code.isdigit() and int(code) >= 500))


def _hex(v: Any, width: int) -> str:
    return str(v or "").lower().rjust(width, "0") if v else ""


def from_zipkin(body: Any) -> list[list[Span]]:
    """Zipkin v2's `[[span, ...], ...]`."""
    if not isinstance(body, list):
        raise ValueError("a Zipkin v2 /api/v2/traces answer is a JSON list of traces")
    out = []
    for trace in body:
        spans = []
        for s in trace if isinstance(trace, list) else []:
            spans.append(Span(
                trace_id=_hex(s.get("traceId"), 32), span_id=_hex(s.get("id"), 16),
                parent_id=_hex(s.get("parentId"), 16), name=str(s.get("name") or ""),
                service=str((s.get("localEndpoint") or {}).get("serviceName") or ""),
                kind=str(s.get("kind") or ""), start_us=int(s.get("timestamp") or 0),
                duration_us=int(s.get("duration") or 0),
                tags={str(k): str(v) for k, v in (s.get("tags") or {}).items()}))
        if spans:
            out.append(spans)
    return out


def from_jaeger(body: Any) -> list[list[Span]]:
    """Jaeger query's `{"data": [{traceID, spans, processes}]}`."""
    if not isinstance(body, dict) or not isinstance(body.get("data"), list):
        raise ValueError('a Jaeger /api/traces answer is a JSON object with a "data" list')
    out = []
    for t in body["data"]:
        procs = t.get("processes") or {}
        spans = []
        for s in t.get("spans") or []:
            parent = next((r.get("spanID") for r in s.get("references") or []
                           if r.get("refType") == "CHILD_OF"), "")
            tags = {str(x.get("key")): str(x.get("value")) for x in s.get("tags") or []}
            spans.append(Span(
                trace_id=_hex(s.get("traceID") or t.get("traceID"), 32), span_id=_hex(s.get("spanID"), 16),
                parent_id=_hex(parent, 16), name=str(s.get("operationName") or ""),
                service=str((procs.get(s.get("processID")) or {}).get("serviceName") or ""),
                kind=tags.get("span.kind", "").upper(), start_us=int(s.get("startTime") or 0),
                duration_us=int(s.get("duration") or 0), tags=tags))
        if spans:
            out.append(spans)
    return out


def parse(api: str, body: Any) -> list[list[Span]]:
    if api == "zipkin":
        return from_zipkin(body)
    if api == "jaeger":
        return from_jaeger(body)
    raise ValueError(f"tracing API {api!r}: want one of {', '.join(APIS)}")


def _tree(spans: list[Span]) -> list[tuple[Span, int]]:
    """Spans depth-first from their roots, children by start time; a span whose parent is not in
    the trace counts as a root (the backend may not have it yet, or it was not sampled)."""
    ids = {s.span_id for s in spans}
    children: dict[str, list[Span]] = {}
    roots = []
    for s in sorted(spans, key=lambda s: (s.start_us, s.span_id)):
        if s.parent_id and s.parent_id in ids and s.parent_id != s.span_id:
            children.setdefault(s.parent_id, []).append(s)
        else:
            roots.append(s)
    out: list[tuple[Span, int]] = []
    seen: set[str] = set()

    def walk(s: Span, depth: int) -> None:
        if s.span_id in seen:
            return
        seen.add(s.span_id)
        out.append((s, depth))
        for c in children.get(s.span_id, []):
            walk(c, depth + 1)
    for r in roots:
        walk(r, 0)
    return out


def row(spans: list[Span]) -> dict[str, Any]:
    """One trace as the panel lists it."""
    ordered = _tree(spans)
    root = ordered[0][0]
    start = min(s.start_us for s in spans)
    end = max(s.start_us + s.duration_us for s in spans)
    services = sorted({s.service for s in spans if s.service})
    errors = sum(1 for s in spans if s.error)
    return {
        "traceId": root.trace_id, "root": root.name, "rootService": root.service,
        "start": start, "durationMs": round((end - start) / 1000.0, 3),
        "status": "error" if errors else "ok", "errors": errors, "spanCount": len(spans), "services": services,
        "spans": [{"spanId": s.span_id, "parentId": s.parent_id, "name": s.name, "service": s.service,
                   "kind": s.kind, "depth": depth, "offsetMs": round((s.start_us - start) / 1000.0, 3),
                   "durationMs": round(s.duration_us / 1000.0, 3), "error": s.error,
                   "status": s.tags.get("http.status_code", "")} for s, depth in ordered],
    }


def rows(traces: Iterable[list[Span]], limit: int = 20) -> list[dict[str, Any]]:
    """The panel's rows, newest first; one row per trace id (backends queried for several service
    names may return a trace twice: its spans are merged)."""
    by_id: dict[str, dict[str, Span]] = {}
    for t in traces:
        for s in t:
            by_id.setdefault(s.trace_id, {})[s.span_id] = s
    out = [row(list(spans.values())) for spans in by_id.values() if spans]
    out.sort(key=lambda r: (-r["start"], r["traceId"]))
    return out[:limit]


def service_names(node_id: str, canonical: str = "") -> list[str]:
    """The service names a node's spans are filed under, Istio's `<canonical service>.<namespace>`:
    a workload's own (its canonical service, else its name), a waypoint's own (`<gateway>.<namespace>`)
    and a Service's name (what the apps behind it report as). A Service's waypoint's spans are not
    asked for: they are every Service's behind that waypoint, listed under the waypoint's node."""
    kind, _, rest = node_id.partition(":")
    ns, _, name = rest.partition("/")
    if kind == "wl":
        return [f"{canonical or name}.{ns}"]
    if kind in ("wp", "svc"):
        return [f"{name}.{ns}"]
    return []
