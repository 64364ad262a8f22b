"""Finished spans to the bytes of an OTLP `ExportTraceServiceRequest`, written directly.

Why not the SDK's encoder (`opentelemetry.exporter.otlp.proto.common`'s `encode_spans`): it builds
a protobuf message object for every span, attribute and value, about 50 µs of Python per span
here, two spans per traced request. It runs in the batch processor's thread, but that thread
holds the GIL while it builds, and the waypoint's event loop waits for it at each wake-up: with
every request traced at 1000 req/s the waypoint's p99 rose by ~50 ms and its top rate halved
(docs/performance.md, §57). Writing the wire format straight from the SDK's `ReadableSpan`s
costs a fraction of that, and what repeats from span to span (the resource, the scope, an
attribute's key and value) is encoded once and reused.

What it writes is what `encode_spans(spans).SerializeToString()` means, field for field: the
same grouping by resource and scope in first-seen order (resources by identity where the SDK
compares them: the spans of one TracerProvider share its one Resource object, so the two agree;
two equal Resource objects would give two groups), the same fields set or left out (proto3:
a scalar at its default is not written; a oneof value and a present sub-message always are), the
same span flags. `tests/unit/waypoint/telemetry/test_otlp_wire.py` decodes both with the protobuf library
and compares them. An attribute the SDK's encoder would reject (an int outside int64, a type
with no OTLP value) is left out, as that encoder leaves it out.

Pure: no I/O, no clock. Field numbers are those of opentelemetry-proto's `trace.proto`,
`common.proto` and `resource.proto` (the tests' decoding with the installed protos checks them).
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from waypoint.telemetry.pair_cache import PairCache

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import Event, ReadableSpan
    from opentelemetry.trace import Link, SpanContext

log = logging.getLogger("ambit.waypoint.tracing")

_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
_SMALL = [bytes((n,)) for n in range(128)]
_pack_q = struct.Struct("<Q").pack
_pack_d = struct.Struct("<d").pack
_pack_i = struct.Struct("<I").pack

# Span flags (trace.proto `SpanFlags`): the parent's is-remote bit is known, and whether it is set.
_HAS_IS_REMOTE, _IS_REMOTE = 0x100, 0x200
_CACHE_LIMIT = 512       # encoded span attributes per cache generation (two are kept: pair_cache.py)


def varint(n: int) -> bytes:
    """A protobuf base-128 varint of a non-negative int (int64 negatives are passed as their
    two's complement, as protobuf writes them)."""
    if n < 128:
        return _SMALL[n]
    out = bytearray()
    while n >= 128:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _ld(tag: int, payload: bytes) -> bytes:
    """A length-delimited field: its tag byte (field << 3 | 2, all fields here are < 16), length, bytes."""
    n = len(payload)
    return (_SMALL[tag] + _SMALL[n] + payload) if n < 128 else (_SMALL[tag] + varint(n) + payload)


class Unencodable(ValueError):
    """A value OTLP has no encoding for (as the SDK's encoder raises for it)."""


def any_value(v: Any) -> bytes:
    """The fields of an `AnyValue` holding `v` (its oneof is always written, even at a default)."""
    if v is None:
        return b""
    if v is True:
        return b"\x10\x01"
    if v is False:
        return b"\x10\x00"
    if isinstance(v, str):
        return _ld(0x0A, v.encode())
    if isinstance(v, int):
        if not _INT64_MIN <= v <= _INT64_MAX:
            raise Unencodable(f"int {v} is outside int64")
        return b"\x18" + varint(v & 0xFFFFFFFFFFFFFFFF)
    if isinstance(v, float):
        return b"\x21" + _pack_d(v)
    if isinstance(v, bytes):
        return _ld(0x3A, v)
    if isinstance(v, Sequence):
        return _ld(0x2A, b"".join(_ld(0x0A, any_value(x)) for x in v))
    if isinstance(v, Mapping):
        return _ld(0x32, b"".join(_ld(0x0A, key_value(str(k), x)) for k, x in v.items()))
    raise Unencodable(f"type {type(v).__name__} has no OTLP value")


def key_value(key: str, v: Any) -> bytes:
    """The fields of a `KeyValue` (a key at its default, "", is not written; the value always is)."""
    return (_ld(0x0A, key.encode()) if key else b"") + _ld(0x12, any_value(v))


class Encoder:
    """Encodes batches of spans; keeps what repeats between spans (resources, scopes, attributes)."""

    def __init__(self) -> None:
        self._span_pairs: PairCache[bytes] = PairCache(_CACHE_LIMIT)
        self._resources: dict[int, tuple[Any, bytes]] = {}
        self._scopes: dict[Any, bytes] = {}

    def request(self, spans: Iterable[ReadableSpan]) -> bytes:
        """The serialized `ExportTraceServiceRequest` carrying `spans`."""
        # Grouped by identity: a Resource hashes by dumping its attributes to JSON, per call.
        groups: dict[int, tuple[Any, dict[Any, list[bytes]]]] = {}
        for s in spans:
            group = groups.get(id(s.resource))
            if group is None:
                group = groups[id(s.resource)] = (s.resource, {})
            scope = s.instrumentation_scope or None
            encoded = group[1].get(scope)
            if encoded is None:
                encoded = group[1][scope] = []
            encoded.append(_ld(0x12, self.span(s)))
        out = []
        for resource, by_scope in groups.values():
            parts = [self._resource(resource)]
            for scope, encoded in by_scope.items():
                scope_fields = _ld(0x0A, self._scope(scope)) + b"".join(encoded)
                schema = scope.schema_url if scope is not None else None
                if schema:
                    scope_fields += _ld(0x1A, schema.encode())
                parts.append(_ld(0x12, scope_fields))
            if resource.schema_url:
                parts.append(_ld(0x1A, resource.schema_url.encode()))
            out.append(_ld(0x0A, b"".join(parts)))
        return b"".join(out)

    def span(self, s: ReadableSpan) -> bytes:
        """The fields of one `Span`."""
        ctx = s.get_span_context()
        parts = [b"\x0a\x10" + ctx.trace_id.to_bytes(16, "big"), b"\x12\x08" + ctx.span_id.to_bytes(8, "big")]
        if ctx.trace_state:
            parts.append(_ld(0x1A, ",".join(f"{k}={v}" for k, v in ctx.trace_state.items()).encode()))
        parent = s.parent
        if parent:
            parts.append(b"\x22\x08" + parent.span_id.to_bytes(8, "big"))
        if s.name:
            parts.append(_ld(0x2A, s.name.encode()))
        parts.append(b"\x30" + _SMALL[s.kind.value + 1])      # SDK SpanKind INTERNAL=0.. → proto INTERNAL=1..
        if s.start_time:
            parts.append(b"\x39" + _pack_q(s.start_time))
        if s.end_time:
            parts.append(b"\x41" + _pack_q(s.end_time))
        attrs = getattr(s, "_attributes", None) or s.attributes   # ReadableSpan.attributes wraps it in a proxy
        if attrs:
            parts.append(self.attributes(attrs, _SPAN_ATTRIBUTES))
        if s.dropped_attributes:
            parts.append(b"\x50" + varint(s.dropped_attributes))
        for e in s.events:
            parts.append(_ld(0x5A, self._event(e)))
        if s.dropped_events:
            parts.append(b"\x60" + varint(s.dropped_events))
        for link in s.links:
            parts.append(_ld(0x6A, self._link(link)))
        if s.dropped_links:
            parts.append(b"\x70" + varint(s.dropped_links))
        status = s.status
        if status is not None:
            st = _ld(0x12, status.description.encode()) if status.description else b""
            code = status.status_code.value
            parts.append(_ld(0x7A, st + (b"\x18" + _SMALL[code] if code else b"")))
        parts.append(b"\x85\x01" + _pack_i(_flags(parent)))
        return b"".join(parts)

    def attributes(self, attrs: Mapping[str, Any], tag: int) -> bytes:
        """Each attribute as a length-delimited `KeyValue` field `tag`. A span's attributes (tag
        0x4A) come from the pair cache when seen before; the rest (a resource's and a scope's,
        encoded once per object; events' and links', rare) are encoded each time, so that a cached
        field is only ever the field it was encoded as. An attribute OTLP cannot carry is left out
        and logged."""
        # The SDK's BoundedAttributes is a Mapping over a dict; its own items() goes through
        # Mapping's generic __iter__/__getitem__, about 0.5 µs an attribute.
        inner = getattr(attrs, "_dict", None)
        items = (inner if isinstance(inner, dict) else attrs).items()
        if tag == _SPAN_ATTRIBUTES:
            return b"".join(self._span_pairs.pieces(items, _span_attribute))
        return b"".join(f for f in (_field(tag, k, v) for k, v in items) if f is not None)

    def _event(self, e: Event) -> bytes:
        parts = []
        if e.timestamp:
            parts.append(b"\x09" + _pack_q(e.timestamp))
        if e.name:
            parts.append(_ld(0x12, e.name.encode()))
        if e.attributes:
            parts.append(self.attributes(e.attributes, 0x1A))
        if e.dropped_attributes:
            parts.append(b"\x20" + varint(e.dropped_attributes))
        return b"".join(parts)

    def _link(self, link: Link) -> bytes:
        ctx = link.context
        parts = [b"\x0a\x10" + ctx.trace_id.to_bytes(16, "big"), b"\x12\x08" + ctx.span_id.to_bytes(8, "big")]
        if link.attributes:
            parts.append(self.attributes(link.attributes, 0x22))
        if link.dropped_attributes:
            parts.append(b"\x28" + varint(link.dropped_attributes))
        parts.append(b"\x35" + _pack_i(_flags(ctx)))
        return b"".join(parts)

    def _resource(self, resource: Any) -> bytes:
        """The `resource` field; cached by identity (the resource is kept with it, so its id
        cannot be reused by another while cached)."""
        hit = self._resources.get(id(resource))
        if hit is None or hit[0] is not resource:
            if len(self._resources) >= 16:
                self._resources.clear()
            hit = self._resources[id(resource)] = (resource, _ld(0x0A, self.attributes(resource.attributes, 0x0A)))
        return hit[1]

    def _scope(self, scope: Any) -> bytes:
        """The fields of an `InstrumentationScope` (empty for spans without one, as the SDK's)."""
        hit = self._scopes.get(scope)
        if hit is None:
            if scope is None:
                hit = b""
            else:
                hit = ((_ld(0x0A, scope.name.encode()) if scope.name else b"")
                       + (_ld(0x12, scope.version.encode()) if scope.version else b"")
                       + (self.attributes(scope.attributes, 0x1A) if scope.attributes else b""))
            if len(self._scopes) >= 16:
                self._scopes.clear()
            self._scopes[scope] = hit
        return hit


_SPAN_ATTRIBUTES = 0x4A        # Span.attributes, field 9


def _field(tag: int, k: str, v: Any) -> bytes | None:
    try:
        return _ld(tag, key_value(k, v))
    except Unencodable as e:
        log.warning("span attribute %r not exported: %s", k, e)
        return None


def _span_attribute(k: str, v: Any) -> bytes | None:
    return _field(_SPAN_ATTRIBUTES, k, v)


def _flags(parent: SpanContext | None) -> int:
    return _HAS_IS_REMOTE | (_IS_REMOTE if parent is not None and parent.is_remote else 0)
