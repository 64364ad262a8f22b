"""Finished spans to the body of a Zipkin v2 JSON `POST /api/v2/spans`.

Why not the SDK's `opentelemetry-exporter-zipkin-json`: its encoder costs about 17 µs of Python per
span here (isinstance chains and a dict merge per attribute, the resource's tags rebuilt for every
span), in the batch processor's thread but under the GIL the event loop waits for (§57 of
docs/performance.md says why that matters); and its exporter pulls in `requests`, 12 MB of RSS for
one POST a second. This writes the same JSON from the SDK's `ReadableSpan`s, with what repeats
from span to span (the resource's and the scope's tags) built once.

What it writes is what the SDK's `JsonV2Encoder` writes, as the SDK's `ZipkinExporter` configures it
(no truncation of tag values), with two differences, both as Envoy's Zipkin tracer (Istio's
`zipkin` provider) behaves:

- no `"debug": true` on every span. The SDK sets Zipkin's debug flag from W3C's *sampled* flag, so
  every exported span asks the collector to store it past its own sampling; Envoy sets it only for
  `x-b3-flags: 1`, which Ambit does not propagate.
- no tag whose value is null. The SDK writes `otel.library.version: null` for a scope whose version
  is None; Zipkin's API says tags are strings.

`tests/unit/waypoint/telemetry/test_zipkin_json.py` parses both and compares them. Pure: no I/O,
no clock.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from json.encoder import encode_basestring_ascii  # type: ignore[attr-defined]
from typing import TYPE_CHECKING, Any

from waypoint.telemetry.pair_cache import PairCache

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import Event, ReadableSpan

# SpanKind's values (INTERNAL, SERVER, CLIENT, PRODUCER, CONSUMER) to Zipkin's kinds.
_KINDS = (None, "SERVER", "CLIENT", "PRODUCER", "CONSUMER")
_STATUS = {1: "OK", 2: "ERROR"}          # StatusCode's values; UNSET (0) writes no tag
_compact = json.JSONEncoder(separators=(",", ":")).encode
_quote = encode_basestring_ascii          # a JSON string literal, in C
_CACHE_LIMIT = 512       # tag pairs per cache generation


def tag_value(v: Any) -> str | None:
    """An attribute's value as a Zipkin tag (a string), as the SDK's encoder writes it; None for a
    value it leaves out."""
    t = type(v)
    if t is str:
        return v
    if t is bool:
        return "true" if v else "false"
    if t is int or t is float:
        return str(v)
    if isinstance(v, (int, float, str)):    # subclasses (bool has none), as the SDK's isinstance reads them
        return str(v)
    if isinstance(v, Sequence):
        items = [("true" if e else "false") if isinstance(e, bool) else
                 str(e) if isinstance(e, (int, float, str)) else None
                 for e in v if e is None or isinstance(e, (int, float, str))]
        return _compact(items)
    return None


def tags(attrs: Mapping[str, Any] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    if attrs:
        for k, v in attrs.items():
            s = v if type(v) is str else tag_value(v)
            if s is not None:
                out[k] = s
    return out


class Encoder:
    """One exporter's encoder. Keeps the tags of the resources and scopes it has seen (a
    TracerProvider's spans share one Resource and one scope object: a handful per process), and
    the JSON of recent span attributes (pair_cache.py)."""

    def __init__(self) -> None:
        self._tail: dict[tuple[int, int], _Tail] = {}
        self._pairs: PairCache[str] = PairCache(_CACHE_LIMIT)

    def request(self, spans: Iterable[ReadableSpan]) -> bytes:
        return ("[" + ",".join([self.span_json(s) for s in spans]) + "]").encode()

    def span_json(self, s: ReadableSpan) -> str:
        """One span's JSON object, written from cached pieces. The tags are the span's attributes,
        then the resource's and the scope's, then the status and dropped counts, later ones
        winning as in the SDK's dict; when a later one would overwrite an attribute (rare), the
        tags are merged first, so that no key is written twice."""
        tail = self._resource_and_scope(s.resource, s.instrumentation_scope)
        attrs = getattr(s, "_attributes", None) or s.attributes   # ReadableSpan.attributes wraps it in a proxy
        inner = getattr(attrs, "_dict", None)
        if not isinstance(inner, dict):
            inner = dict(attrs) if attrs else {}
        extra = _extra(s)
        if tail.keys.isdisjoint(inner) and (not extra or extra.keys().isdisjoint(inner)):
            members = self._pairs.pieces(inner.items(), _pair)
            if tail.json:
                members.append(tail.json)
            if extra:
                members.append(_compact(extra)[1:-1])
        else:
            merged = {**tags(inner), **tail.tags, **extra}
            members = [_compact(merged)[1:-1]] if merged else []
        ctx = s.context
        start, end = s.start_time or 0, s.end_time or 0
        kind = _KINDS[s.kind.value]
        parts = [f'{{"traceId":"{ctx.trace_id:032x}","id":"{ctx.span_id:016x}","name":{_quote(s.name)},'
                 f'"timestamp":{(start + 500) // 1000},"duration":{(end - start + 500) // 1000},'
                 f'"localEndpoint":{tail.endpoint_json},"kind":{_quote(kind) if kind else "null"}']
        if members:
            parts.append(',"tags":{' + ",".join(members) + "}")
        if s.events:
            parts.append(',"annotations":' + _compact([_annotation(e) for e in s.events]))
        if s.parent is not None:
            parts.append(f',"parentId":"{s.parent.span_id:016x}"')
        parts.append("}")
        return "".join(parts)

    def _resource_and_scope(self, resource: Any, scope: Any) -> _Tail:
        key = (id(resource), id(scope))
        hit = self._tail.get(key)
        if hit is None or hit.resource is not resource or hit.scope is not scope:
            if len(self._tail) >= 64:    # providers come and go with config: never grow without bound
                self._tail.clear()
            hit = self._tail[key] = _Tail(resource, scope)
        return hit


class _Tail:
    """What a resource and a scope add to each of their spans: the local endpoint and the tags
    written after the span's own (so they win over an attribute of the same key, as in the SDK)."""

    __slots__ = ("resource", "scope", "endpoint_json", "tags", "keys", "json")

    def __init__(self, resource: Any, scope: Any) -> None:
        self.resource, self.scope = resource, scope      # held, so that their ids stay theirs
        rattrs = resource.attributes if resource is not None else {}
        self.endpoint_json = _compact({"serviceName": str(rattrs.get("service.name") or "unknown_service")})
        t = tags(rattrs)
        if scope is not None:
            for k in ("otel.library.name", "otel.scope.name"):
                t[k] = scope.name
            if scope.version is not None:
                for k in ("otel.library.version", "otel.scope.version"):
                    t[k] = scope.version
        self.tags = t
        self.keys = frozenset(t)
        self.json = _compact(t)[1:-1]


def _pair(k: str, v: Any) -> str | None:
    """An attribute as a JSON `"key":"value"` member, or None for a value the SDK leaves out."""
    tv = v if v.__class__ is str else tag_value(v)
    return None if tv is None else _quote(k) + ":" + _quote(tv)


def _extra(s: ReadableSpan) -> dict[str, str]:
    """The tags the SDK's encoder adds last: the status and the dropped counts (usually none)."""
    out: dict[str, str] = {}
    code = s.status.status_code.value
    if code:
        out["otel.status_code"] = _STATUS[code]
        if code == 2:
            out["error"] = s.status.description or ""
    if s.dropped_attributes:
        out["otel.dropped_attributes_count"] = str(s.dropped_attributes)
    if s.dropped_events:
        out["otel.dropped_events_count"] = str(s.dropped_events)
    if s.dropped_links:
        out["otel.dropped_links_count"] = str(s.dropped_links)
    return out


def _annotation(e: Event) -> dict[str, Any]:
    return {"timestamp": (e.timestamp + 500) // 1000,
            "value": json.dumps({e.name: dict(e.attributes or {})}, sort_keys=True)}
