"""Tracing, the SDK edge: OpenTelemetry spans for the requests the waypoint traces, handed to one
BatchSpanProcessor per provider, whose thread exports them over OTLP gRPC, OTLP HTTP or Zipkin's
v2 JSON API, as the `TracingConfig`'s providers say. (That thread shares the GIL with the event
loop, so the exporters encode with little Python: otlp_wire.py, zipkin_json.py.)

The engine holds one `Tracing`; an exchange asks it `server(...)` at the request head and gets a
`RequestTrace` (or None: not traced, then no span object exists), which it tells about each try
(`try_start`, `try_result`, `try_end`) and the end (`finish`); an external authorization check
(waypoint/http/authzcall.py) asks it for a `CheckSpan` (`check_span`) and ends that itself. Which
config applies comes from an injected `tracing_for(service) -> TracingConfig`, asked per request
(it is a cheap call: the settings' default returns a cached object, the Telemetry resolver its
current answer); a changed provider
set builds a new exporter pipeline and shuts the old one down off the loop.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from ambit.telemetryconfig import Provider, TracingConfig
from waypoint.http.headers import new_traceparent
from waypoint.telemetry import tracing as tr

if TYPE_CHECKING:
    from waypoint.http.attempt import Outcome
    from waypoint.http.engine import UpstreamTarget
    from waypoint.http.record import RequestRecord
    from waypoint.request import Downstream, RequestHead, SubReply

log = logging.getLogger("waypoint.tracing")

TracingFor = Callable[[str], TracingConfig]     # the destination Service ("ns/name", or "") -> its tracing
SAMPLED = TraceFlags(TraceFlags.SAMPLED)
# Spans per export call (the SDK's default is 512). The export thread holds the GIL while it
# encodes a batch, and the event loop waits for it: 128 spans bound that to about 1 ms
# (docs/performance.md §58: p99 at 1000 req/s, every request traced, 19 -> 14 ms).
EXPORT_BATCH = 128


def endpoint(p: Provider) -> str:
    """Where a provider's spans go: `host:port` for OTLP gRPC, a URL for OTLP HTTP and Zipkin."""
    from ambit.dataplane.telemetry.otlp_logs import endpoint as host_port
    hostport = host_port(p)
    if p.kind == "zipkin":
        return f"http://{hostport}{p.path or '/api/v2/spans'}"
    if p.protocol == "http":
        return f"http://{hostport}{p.path or '/v1/traces'}"
    return hostport


def exporter_class(p: Provider) -> type[SpanExporter] | None:
    """The exporter class for one provider's kind, imported now (only the kinds in use are
    loaded); None for a kind that carries no spans. The waypoint calls it when a provider is
    configured, so an import error is a config-time error."""
    if p.kind == "zipkin":
        from waypoint.telemetry.http_export import ZipkinSpanExporter
        return ZipkinSpanExporter
    if p.kind == "opentelemetry" and p.protocol == "http":
        from waypoint.telemetry.http_export import OtlpHttpSpanExporter
        return OtlpHttpSpanExporter
    if p.kind == "opentelemetry":
        from waypoint.telemetry.otlp_grpc import GrpclibSpanExporter
        return GrpclibSpanExporter
    return None


def exporter(p: Provider) -> SpanExporter | None:
    """The SDK exporter for one provider; None (with a warning naming it) for a kind that carries
    no spans."""
    cls = exporter_class(p)
    if cls is None:
        log.warning("tracing provider %r of kind %r carries no spans: ignored for tracing", p.name, p.kind)
        return None
    return cls(endpoint=endpoint(p), timeout=p.timeout or 10.0, headers=p.headers)  # type: ignore[call-arg]


def resource(ident: tr.Identity, environment: bool) -> Resource:
    """The spans' resource: the SDK's own attributes (telemetry.sdk.*) and the waypoint's identity,
    and, only when a provider names Istio's `resourceDetectors.environment`, what the waypoint's
    OTEL_RESOURCE_ATTRIBUTES says (under the identity's keys, which win), as Envoy's environment
    detector reads it. `Resource.create` would read that variable always."""
    from opentelemetry.sdk.resources import _DEFAULT_RESOURCE, OTELResourceDetector
    base = _DEFAULT_RESOURCE.merge(OTELResourceDetector().detect()) if environment else _DEFAULT_RESOURCE
    return base.merge(Resource({"service.name": ident.service_name, "service.namespace": ident.namespace,
                                "service.instance.id": ident.node_id}))


class Pipeline:
    """One batch processor per exporting provider, and what every span of this config carries
    (the resource, the instrumentation scope)."""

    def __init__(self, providers: tuple[Provider, ...], ident: tr.Identity, delay_ms: int) -> None:
        self.providers = providers
        self.resource = resource(ident, any(p.resource_env for p in providers))
        self.scope = InstrumentationScope("ambit.waypoint", "", "")   # what the SDK's get_tracer() would give
        self.processors: list[BatchSpanProcessor] = []
        for p in providers:
            try:
                ex = exporter(p)
            except ValueError as e:     # an endpoint the controller's checks let through: never the request's failure
                log.error("tracing provider %r: %s; its spans are not exported", p.name, e)
                continue
            if ex is not None:
                self.processors.append(BatchSpanProcessor(ex, schedule_delay_millis=delay_ms,
                                                          max_export_batch_size=EXPORT_BATCH))
        self.exporting = len(self.processors)

    def emit(self, span: ReadableSpan) -> None:
        """A finished span to each provider's batch (each queues it, or drops it when its queue
        is full, and its thread exports it)."""
        for proc in self.processors:
            proc.on_end(span)

    def close(self) -> None:
        """Flush and stop each provider's batch, now."""
        for proc in self.processors:
            proc.shutdown()

    def shutdown(self) -> None:
        """`close`, in a thread: an exporter may block for its timeout."""
        threading.Thread(target=self.close, name="tracing-shutdown", daemon=True).start()


class Tracing:
    """The engine's tracer: decides per request, owns the exporter pipeline of the current config."""

    def __init__(self, tracing_for: TracingFor, ident: tr.Identity, rng: random.Random | None = None, *,
                 delay_ms: int = 1000) -> None:
        self.tracing_for = tracing_for
        self.ident = ident
        self.rng = rng or random.Random()
        self.delay_ms = delay_ms
        self._cfg: TracingConfig | None = None
        self._pipe: Pipeline | None = None

    def _pipeline(self, cfg: TracingConfig) -> Pipeline | None:
        if cfg is not self._cfg:
            self._cfg = cfg
            old = self._pipe
            if old is None or old.providers != cfg.providers:
                self._pipe = Pipeline(cfg.providers, self.ident, self.delay_ms) if cfg.providers else None
                if old is not None:
                    old.shutdown()
        return self._pipe

    def server(self, head: RequestHead, down: Downstream, rec: RequestRecord) -> RequestTrace | None:
        """At the request head (before the waypoint adds its own headers): the request's trace, or
        None. With a tracer configured (a provider), a request not traced goes on with its incoming
        context marked unsampled in every format (an already unsampled one passes as it came;
        without any, it gets a fresh unsampled traceparent), so the next hop does not start a
        trace of its own (as Envoy's). Not traced: no span object. Without a provider the request's
        trace headers pass untouched: Envoy without a tracer injects nothing, and an unsampled
        context would stop every app behind the waypoint from tracing on its own."""
        cfg = self.tracing_for(down.service)
        if not cfg.providers:
            return None
        if not cfg.enabled:             # disableSpanReporting: propagation only
            _ensure_context(head, self.rng)
            return None
        pipe = self._pipeline(cfg)
        if pipe is None or not pipe.exporting:
            _ensure_context(head, self.rng)
            return None
        parent, force = tr.extract(head.headers)
        rid = next((v for k, v in head.headers if k == "x-request-id"), "") if cfg.use_request_id else ""
        if not tr.sample(parent, force, cfg.sampling_percent, self.rng, rid):
            if parent is None:
                _ensure_context(head, self.rng)
            elif not parent.has_ids:
                # a bare "deny" (`b3: 0`, `x-b3-sampled: 0`): as Envoy's Zipkin tracer, an unsampled
                # root of our own, sent on in every format, so the next hop does not sample either
                # whichever format it reads (a W3C-only app would otherwise see no decision at all)
                head.headers = tr.inject(head.headers, self.rng.getrandbits(128) or 1,
                                         self.rng.getrandbits(64) or 1, False)
            elif parent.sampled is not False:
                head.headers = tr.inject(head.headers, parent.trace_id, parent.span_id, False)
            return None
        if parent is not None and not parent.has_ids:
            parent = None       # a bare "accept"/"debug": a new trace, whose root is our server span
        return RequestTrace(self, pipe, cfg, head, down, rec, parent)

    def untraced_context(self, head: RequestHead, down: Downstream) -> tr.Headers:
        """The trace headers an untraced request's external authorization check carries: with a
        tracer configured for the request, the unsampled context `server` left on the request (what
        its upstream gets too); without one, none. As Envoy: a configured tracer gives an unsampled
        request an unsampled span (source/extensions/tracers/opentelemetry/tracer.cc `startSpan`,
        `setSampled(tracing_decision.traced)`), and the ext_authz clients' async requests inject
        their child of it, flags 00 / `x-b3-sampled: 0`, so the authorizer does not start a trace of
        its own; without a tracer the active span is the null span, which injects nothing. Asked
        only for a request that is held for a check, never on the common path."""
        if not self.tracing_for(down.service).providers:
            return []
        return [(k, v) for k, v in head.headers if k in tr.TRACE_HEADERS]

    def shutdown(self) -> None:
        if self._pipe is not None:
            self._pipe.close()
            self._pipe = None


class RequestTrace:
    """The spans of one traced request: the server span, and the client span of the open try.

    Spans are made finished: what a span needs is kept in slots while the request runs, and each
    becomes the SDK's `ReadableSpan` (what span processors and exporters take) when it ends, handed
    to the pipeline's batch processors. Not through the SDK's `Tracer`: a live SDK span cleans and
    locks every attribute it is given and builds contexts for in-process propagation the waypoint
    has no use for, about 60 µs of the event loop per traced request against about 15 here
    (docs/performance.md, §60). The attributes are the waypoint's own strings (`tracing.py` builds
    them), so there is nothing to clean; ids come from the injected random source, as the SDK's
    `RandomIdGenerator` draws them from `random`.
    """

    __slots__ = ("pipe", "rng", "trace_id", "span_id", "context", "parent", "name", "start_ns", "attrs",
                 "cluster", "client_id", "client_start", "client_status", "client_outcome", "target", "down",
                 "tries")

    def __init__(self, tracing: Tracing, pipe: Pipeline, cfg: TracingConfig, head: RequestHead,
                 down: Downstream, rec: RequestRecord, parent: tr.Context | None) -> None:
        self.pipe = pipe
        self.rng = rng = tracing.rng
        if parent is not None:
            self.trace_id = parent.trace_id
            self.parent: SpanContext | None = SpanContext(parent.trace_id, parent.span_id, is_remote=True,
                                                          trace_flags=SAMPLED)
        else:
            self.trace_id = rng.getrandbits(128) or 1
            self.parent = None
        self.span_id = rng.getrandbits(64) or 1
        self.context = SpanContext(self.trace_id, self.span_id, is_remote=False, trace_flags=SAMPLED)
        attrs = tr.server_start_attributes(
            tracing.ident, head.method, head.scheme, head.authority, head.path, rec.protocol, rec.request_id,
            rec.user_agent, down.source_ip, _downstream_cluster(down))
        if not cfg.istio_tags:      # Telemetry tracing `enableIstioTags: false`
            attrs = {k: v for k, v in attrs.items() if not k.startswith("istio.")}
        if cfg.custom_tags:
            attrs.update(tr.custom_tags(cfg.custom_tags, head.headers))
        self.attrs = attrs
        self.name = tr.server_span_name(down.destination_ip, down.hostname, down.destination_port)
        self.start_ns = int(rec.start * 1e9)
        self.cluster = tr.cluster_name(down.hostname, down.destination_port)
        self.down = down
        self.client_id = 0              # the open try's span id; 0: none open
        self.client_start = 0
        self.client_status = 0
        self.client_outcome = ""
        self.target: UpstreamTarget | None = None
        self.tries = 0                  # client spans begun: Envoy's attempt count

    def routed(self, hostname: str, port: int) -> None:
        """The route chose the Service `hostname` on `port` (Forward.hostname, .port): the span
        names and the upstream cluster are that Service's, as Istio's route decorator and cluster
        name them, not the tunnel's (another Service after a VirtualService's route; an ingress
        gateway's tunnel names no Service at all: its spans were `router unknown egress`)."""
        if not hostname:
            return
        d = self.down
        self.cluster = tr.cluster_name(hostname, port)
        self.name = tr.server_span_name(d.destination_ip, hostname, d.destination_port or port)

    def try_start(self, up_head: RequestHead, target: UpstreamTarget) -> None:
        """A new try: its client span, whose context replaces the trace headers going upstream."""
        self.try_end()
        self.target = target
        self.tries += 1
        self.client_id = cid = self.rng.getrandbits(64) or 1
        self.client_start = time.time_ns()
        up_head.headers = tr.inject(up_head.headers, self.trace_id, cid, True, self.span_id)

    def try_result(self, outcome: Outcome) -> None:
        if self.client_id:
            self.client_status = outcome.status
            self.client_outcome = "" if outcome.kind == "response" else outcome.kind

    def try_end(self) -> None:
        cid, self.client_id = self.client_id, 0
        if not cid:
            return
        t = self.target
        attrs = tr.client_end_attributes(self.client_status, t.protocol if t else "", self.cluster,
                                         t.address if t else "", self.client_outcome, self.tries - 1)
        failed = self.client_status == 0 or self.client_status >= 500
        self.pipe.emit(ReadableSpan(
            tr.client_span_name(self.cluster), SpanContext(self.trace_id, cid, is_remote=False, trace_flags=SAMPLED),
            self.context, self.pipe.resource, attrs, kind=SpanKind.CLIENT, status=_ERROR if failed else _UNSET,
            start_time=self.client_start, end_time=time.time_ns(), instrumentation_scope=self.pipe.scope))
        self.client_status, self.client_outcome = 0, ""

    def check_span(self, head: RequestHead, grpc: bool, hostname: str, port: int,
                   tags: Callable[[SubReply], Mapping[str, str]] | None) -> CheckSpan:
        """An external authorization check begins (waypoint/http/authzcall.py): its client span, a
        child of the server span as Envoy's async clients spawn theirs, whose context replaces the
        trace headers of the check's `head` (the gRPC call's metadata), so a tracing authorizer
        joins the trace. `tags` reads the authorizer's reply into the ext_authz tags."""
        cid = self.rng.getrandbits(64) or 1
        head.headers = tr.inject(head.headers, self.trace_id, cid, True, self.span_id)
        return CheckSpan(self, cid, grpc, tr.cluster_name(hostname, port), hostname, tags)

    def finish(self, rec: RequestRecord) -> None:
        if self.client_id and not self.client_status and rec.upstream:
            self.client_status = rec.status if not rec.response_flags else self.client_status
        self.try_end()
        attrs = self.attrs
        attrs.update(tr.server_end_attributes(rec.status, rec.response_flags, rec.bytes_received,
                                              rec.bytes_sent, self.cluster, rec.upstream))
        attrs["guid:x-request-id"] = rec.request_id    # set by the exchange after the span began
        failed = rec.status == 0 or rec.status >= 500
        self.pipe.emit(ReadableSpan(
            self.name, self.context, self.parent, self.pipe.resource, attrs, kind=SpanKind.SERVER,
            status=_ERROR if failed else _UNSET, start_time=self.start_ns, end_time=time.time_ns(),
            instrumentation_scope=self.pipe.scope))


_ERROR, _UNSET = Status(StatusCode.ERROR), Status(StatusCode.UNSET)


class CheckSpan:
    """The client span of one external authorization check: `async <cluster> egress` (an HTTP
    provider) or `async envoy.service.auth.v3.Authorization.Check egress` (gRPC), as Envoy names
    the spans of its Http:: and Grpc::AsyncClient. `end` once, with the reply or why there was none."""

    __slots__ = ("trace", "span_id", "grpc", "cluster", "authority", "tags", "start")

    def __init__(self, trace: RequestTrace, span_id: int, grpc: bool, cluster: str, authority: str,
                 tags: Callable[[SubReply], Mapping[str, str]] | None) -> None:
        self.trace = trace
        self.span_id = span_id
        self.grpc = grpc
        self.cluster = cluster
        self.authority = authority
        self.tags = tags
        self.start = time.time_ns()

    def end(self, reply: SubReply | None, protocol: str, upstream: str, outcome: str) -> None:
        """`reply` None: the check got no answer, `outcome` says why (connect_failure, reset,
        timeout, no_healthy_upstream, overflow, canceled)."""
        t = self.trace
        status, grpc_status = (reply.status, _grpc_status(reply)) if reply is not None else (0, None)
        attrs = tr.check_end_attributes(self.grpc, status, grpc_status, protocol, self.cluster, self.authority,
                                        upstream, outcome)
        if reply is not None and self.tags is not None:
            try:
                attrs.update(self.tags(reply))
            except Exception:
                log.exception("tagging the ext_authz check's span failed")
        failed = attrs.get("error") == "true"
        t.pipe.emit(ReadableSpan(
            tr.GRPC_CHECK_SPAN if self.grpc else tr.async_span_name(self.cluster),
            SpanContext(t.trace_id, self.span_id, is_remote=False, trace_flags=SAMPLED), t.context, t.pipe.resource,
            attrs, kind=SpanKind.CLIENT, status=_ERROR if failed else _UNSET, start_time=self.start,
            end_time=time.time_ns(), instrumentation_scope=t.pipe.scope))


def _grpc_status(reply: SubReply) -> str | None:
    """A gRPC answer's status: its trailers' grpc-status, else its headers' (a trailers-only answer)."""
    for hs in (reply.trailers or (), reply.headers):
        for k, v in hs:
            if k.lower() == "grpc-status":
                return v
    return None


def _ensure_context(head: RequestHead, rng: random.Random) -> None:
    """A request with no `traceparent` gets a fresh unsampled one (a configured tracer's context
    for a request it does not trace, as Envoy's OpenTelemetry tracer injects)."""
    if not any(k == "traceparent" for k, _ in head.headers):
        head.headers = [*head.headers, ("traceparent", new_traceparent(rng))]


def _downstream_cluster(down: Downstream) -> str:
    """Envoy's downstream_cluster tag (x-envoy-downstream-service-cluster); a waypoint knows the
    peer's SPIFFE identity instead, which names its service account and namespace."""
    return down.source_identity
