"""Tracing, the sans-IO half: trace-context extraction and injection (W3C `traceparent`, B3 multi
and single header), the sampling decision, and the names and attributes of the waypoint's spans.
Pure functions; the SDK edge (span objects, exporters) is waypoint/telemetry/tracing_sdk.py.

As Envoy (the HTTP connection manager with an OpenTelemetry or Zipkin tracer):
- a parent context that carries a sampling decision (traceparent flags, `x-b3-sampled`, the B3
  single header's third field) is honoured, and so is a B3 decision sent without ids (`b3: 0`,
  `b3: 1`/`d`, `x-b3-sampled`, `x-b3-flags: 1`); `x-envoy-force-trace` forces a trace; otherwise the
  request is traced with probability `sampling_percent` / 100 (random_sampling);
- the server span is named after the route's decorator operation, which Istio sets to
  `<service FQDN>:<port>/*`; each upstream try gets its own client span `router <cluster> egress`
  whose context goes upstream in W3C and B3 (multi and single) headers; an external authorization
  check gets a client span as Envoy's async clients name theirs (`async <cluster> egress`, gRPC
  `async envoy.service.auth.v3.Authorization.Check egress`), its context sent to the authorizer;
- tags are Envoy's (component=proxy, node_id, guid:x-request-id, http.url, http.method,
  http.protocol, user_agent, downstream_cluster, peer.address, request_size, response_size,
  http.status_code, response_flags, upstream_cluster, upstream_cluster.name, upstream_address,
  error=true on 5xx) plus Istio's (istio.canonical_service, istio.canonical_revision,
  istio.namespace, istio.mesh_id) and the Telemetry API's customTags.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

Headers = list[tuple[str, str]]

# every header this module reads or writes: stripped before the waypoint's own context is injected
TRACE_HEADERS = frozenset(("traceparent", "b3", "x-b3-traceid", "x-b3-spanid", "x-b3-parentspanid",
                           "x-b3-sampled", "x-b3-flags"))
_HEX = re.compile(r"[0-9a-fA-F]+").fullmatch


@dataclass(frozen=True, slots=True)
class Context:
    """A trace context from the wire: ids as ints, `sampled` None when the sender left it open.
    Ids 0 are a bare B3 sampling decision (`b3: 0|1|d`, or `x-b3-sampled`/`x-b3-flags` without
    `x-b3-traceid`/`x-b3-spanid`): a decision to obey, but no span to be a child of."""

    trace_id: int
    span_id: int
    sampled: bool | None = None

    @property
    def has_ids(self) -> bool:
        return self.trace_id != 0


def _hex(s: str, lengths: tuple[int, ...]) -> int | None:
    """Hex digits only: int(s, 16) alone also takes "+", "_" and spaces."""
    if len(s) not in lengths or _HEX(s) is None:
        return None
    return int(s, 16) or None        # all-zero ids are invalid in both W3C and B3


def parse_traceparent(v: str) -> Context | None:
    """W3C Trace Context `version-traceid-parentid-flags` (version 00; later versions are read
    as 00, as the spec asks)."""
    parts = v.strip().split("-")
    if len(parts) < 4 or len(parts[0]) != 2 or parts[0].lower() == "ff" or len(parts[3]) != 2:
        return None
    if parts[0] == "00" and len(parts) != 4:
        return None
    tid, sid = _hex(parts[1], (32,)), _hex(parts[2], (16,))
    if tid is None or sid is None or _HEX(parts[3]) is None:
        return None
    flags = int(parts[3], 16)
    return Context(tid, sid, bool(flags & 1))


_B3_STATES = frozenset(("0", "1", "d"))       # the single header's sampling states


def _b3_sampled(v: str | None) -> bool | None:
    if v is None or v == "":
        return None
    return v in ("1", "d", "true")


def parse_b3_single(v: str) -> Context | None:
    """`b3: {traceid}-{spanid}[-{sampled}[-{parentspanid}]]`; a lone `0`/`1`/`d` is a decision
    without ids (`extract` reads it). Anything malformed is no context, as Envoy's B3 extractor
    refuses it: a sampling state other than `0`, `1`, `d`
    (read as "not sampled", it would silently drop the trace here and at every hop after), a
    parent span id that is not 16 hex digits, or more fields."""
    parts = v.strip().split("-")
    if not 2 <= len(parts) <= 4:
        return None
    tid, sid = _hex(parts[0], (16, 32)), _hex(parts[1], (16,))
    if tid is None or sid is None:
        return None
    if len(parts) > 2 and parts[2] not in _B3_STATES:
        return None
    if len(parts) == 4 and _hex(parts[3], (16,)) is None:
        return None
    return Context(tid, sid, _b3_sampled(parts[2] if len(parts) > 2 else None))


def extract(headers: Iterable[tuple[str, str]]) -> tuple[Context | None, bool]:
    """The incoming parent (traceparent first, then B3 single, then B3 multi) and whether
    `x-envoy-force-trace` or `x-client-trace-id` is set. A B3 sampling decision sent without ids
    is a Context without ids (`has_ids` False): `sample` obeys it, and there is no parent span."""
    tp = b3 = tid = sid = smp = flags = None
    force = False
    for k, v in headers:
        if k == "traceparent":
            tp = v
        elif k == "b3":
            b3 = v
        elif k == "x-b3-traceid":
            tid = v
        elif k == "x-b3-spanid":
            sid = v
        elif k == "x-b3-sampled":
            smp = v
        elif k == "x-b3-flags":
            flags = v
        elif k == "x-envoy-force-trace" or k == "x-client-trace-id":
            # x-client-trace-id: a client's own trace id, which Envoy traces (Istio sets the HCM's
            # client_sampling to 100 %), from any client; x-envoy-force-trace from internal ones (an
            # ingress gateway removes an external client's before tracing: waypoint/http/edge.py)
            force = True
    ctx = parse_traceparent(tp) if tp is not None else None
    if ctx is None and b3 is not None:
        ctx = parse_b3_single(b3)
        if ctx is None and b3.strip() in _B3_STATES:
            # a bare decision (B3: "deny" 0, "accept" 1, "debug" d): Envoy's Zipkin extractor obeys
            # it and, the `b3` header being present, reads no `x-b3-*` for ids or decision
            return Context(0, 0, b3.strip() != "0"), force
    if ctx is None:
        decision = True if flags == "1" else _b3_sampled(smp)      # B3: debug implies accept
        t = _hex(tid, (16, 32)) if tid is not None else None
        s = _hex(sid, (16,)) if sid is not None else None
        if t is not None and s is not None:
            ctx = Context(t, s, decision)
        elif decision is not None:
            ctx = Context(0, 0, decision)      # `x-b3-sampled`/`x-b3-flags` alone: Envoy obeys it
    return ctx, force


def sample(parent: Context | None, force: bool, percent: float, rng: random.Random, request_id: str = "") -> bool:
    """Envoy's decision: the parent's, when it made one; forced; else by `percent`: from the
    incoming x-request-id when one is given (Istio's `useRequestIdForTraceSampling`, on by
    default: every proxy that sees the request decides alike), else random. 0 % costs nothing
    but this comparison."""
    if parent is not None and parent.sampled is not None:
        return parent.sampled
    if force:
        return True
    if percent <= 0 or percent >= 100:
        return percent >= 100
    bucket = request_id_bucket(request_id) if request_id else None
    if bucket is not None:
        return bucket < percent * 100
    return rng.random() * 100.0 < percent


def request_id_bucket(request_id: str) -> int | None:
    """Envoy's UUIDUtils::uuidModBy(id, 10000): the first 8 hex digits mod 10000 (None: not a
    UUID-like id, sampled at random instead)."""
    head = request_id[:8]
    if len(head) < 8:
        return None
    try:
        return int(head, 16) % 10000
    except ValueError:
        return None


def inject(headers: Iterable[tuple[str, str]], trace_id: int, span_id: int, sampled: bool,
           parent_span_id: int = 0) -> Headers:
    """`headers` with every trace header replaced by this context, in W3C and B3 (multi and
    single), so the next hop links whichever it reads. `tracestate` passes as it came."""
    t, s, f = f"{trace_id:032x}", f"{span_id:016x}", "1" if sampled else "0"
    out = [(k, v) for k, v in headers if k not in TRACE_HEADERS]
    out.append(("traceparent", f"00-{t}-{s}-0{f}"))
    out.append(("x-b3-traceid", t))
    out.append(("x-b3-spanid", s))
    if parent_span_id:
        out.append(("x-b3-parentspanid", f"{parent_span_id:016x}"))
    out.append(("x-b3-sampled", f))
    out.append(("b3", f"{t}-{s}-{f}" + (f"-{parent_span_id:016x}" if parent_span_id else "")))
    return out


# --- names and attributes ---------------------------------------------------------------------


def server_span_name(destination_ip: str, hostname: str, port: int) -> str:
    """Istio's route decorator operation: `<host>:<port>/*`, the host being the Service's FQDN,
    else (a tunnel addressed to a pod) the address the tunnel named. Never the Host header:
    tracing backends index span names (Jaeger's operations, Tempo's `name`), and a client sending
    a fresh Host per request would add one per request."""
    host = hostname or (f"[{destination_ip}]" if ":" in destination_ip else destination_ip) or "unknown"
    return f"{host}:{port}/*" if port else f"{host}/*"


def cluster_name(hostname: str, port: int) -> str:
    """Istio's outbound cluster name `outbound|<port>||<fqdn>`."""
    return f"outbound|{port}||{hostname}" if hostname else ""


def client_span_name(cluster: str) -> str:
    """Envoy's router upstream span name."""
    return f"router {cluster or 'unknown'} egress"


def async_span_name(cluster: str) -> str:
    """Envoy's Http::AsyncClient child span name: a raw HTTP ext_authz check's (`tracing_name_` of
    the ext_authz ClientConfig, `async <cluster> egress`)."""
    return f"async {cluster or 'unknown'} egress"


GRPC_CHECK_SPAN = "async envoy.service.auth.v3.Authorization.Check egress"   # Envoy's Grpc::AsyncClient child span
_GRPC_UNAVAILABLE, _GRPC_DEADLINE_EXCEEDED = "14", "4"


def check_end_attributes(grpc: bool, status: int, grpc_status: str | None, protocol: str, cluster: str,
                         authority: str, upstream: str, outcome: str) -> dict[str, str]:
    """Tags of an external authorization check's span, as Envoy's async clients finalize theirs.
    HTTP (Http::AsyncClient: finalizeUpstreamSpan): the tags of a try's span. gRPC
    (Grpc::AsyncRequestImpl): component, upstream_cluster, upstream_address (Envoy's is the call's
    authority, which Istio sets to the authorizer's hostname: so here), grpc.status_code, error when
    not OK; a call that got no status (connect failure, reset: UNAVAILABLE; timeout:
    DEADLINE_EXCEEDED, as the router answers a gRPC request locally) names Ambit's `error.reason`.
    `outcome` "canceled": the held request went away first (Envoy's `status: canceled`)."""
    if outcome == "canceled":
        a = {"component": "proxy", "upstream_cluster": cluster or "-", "status": "canceled"}
        if not grpc:
            a["upstream_cluster.name"] = cluster or "-"
        return a
    if not grpc:
        return client_end_attributes(status, protocol, cluster, upstream, outcome)
    if grpc_status is None and outcome:
        grpc_status = _GRPC_DEADLINE_EXCEEDED if outcome == "timeout" else _GRPC_UNAVAILABLE
    a = {"component": "proxy", "upstream_cluster": cluster or "-", "upstream_address": authority or cluster or "-"}
    if grpc_status is not None:
        a["grpc.status_code"] = grpc_status
    if outcome:
        a["error.reason"] = outcome
    if grpc_status != "0" or status != 200:
        a["error"] = "true"
    return a


@dataclass(frozen=True, slots=True)
class Identity:
    """Who writes the spans: Envoy's node_id and Istio's canonical labels of the waypoint."""

    node_id: str
    canonical_service: str
    canonical_revision: str = "latest"
    namespace: str = ""
    mesh_id: str = "cluster.local"

    @property
    def service_name(self) -> str:
        """The resource's service.name, as Istio names proxies to tracers: `<service>.<namespace>`."""
        return f"{self.canonical_service}.{self.namespace}" if self.namespace else self.canonical_service


def server_start_attributes(ident: Identity, method: str, scheme: str, authority: str, path: str,
                            protocol: str, request_id: str, user_agent: str, peer: str,
                            downstream_cluster: str) -> dict[str, str]:
    """Tags known at the request head."""
    a = {
        "component": "proxy", "node_id": ident.node_id, "guid:x-request-id": request_id,
        "http.url": f"{scheme}://{authority}{path}", "http.method": method, "http.protocol": protocol,
        "user_agent": user_agent or "-", "downstream_cluster": downstream_cluster or "-",
        "peer.address": peer, "istio.canonical_service": ident.canonical_service,
        "istio.canonical_revision": ident.canonical_revision, "istio.namespace": ident.namespace,
        "istio.mesh_id": ident.mesh_id,
    }
    return {k: v for k, v in a.items() if v}


def server_end_attributes(status: int, flags: str, request_size: int, response_size: int,
                          cluster: str, upstream: str) -> dict[str, str]:
    """Tags known when the response has ended (Envoy's finalizeDownstreamSpan)."""
    a = {"http.status_code": str(status), "response_flags": flags or "-", "request_size": str(request_size),
         "response_size": str(response_size), "upstream_cluster": cluster or "-",
         "upstream_cluster.name": cluster or "-"}
    if upstream:
        a["upstream_address"] = upstream
    if status == 0 or status >= 500:
        a["error"] = "true"
    return a


def client_end_attributes(status: int, protocol: str, cluster: str, upstream: str, outcome: str,
                          retry: int = 0) -> dict[str, str]:
    """Tags of one try's span (Envoy's finalizeUpstreamSpan); `outcome` names a try that got no
    response (connect failure, reset, timeout); `retry` numbers a retry (1 for the second try),
    Envoy's router's `retry.count` tag, which the first try does not carry."""
    a = {"component": "proxy", "http.protocol": protocol, "upstream_address": upstream,
         "upstream_cluster": cluster or "-", "upstream_cluster.name": cluster or "-"}
    if retry:
        a["retry.count"] = str(retry)
    if status:
        a["http.status_code"] = str(status)
    if outcome:
        a["error.reason"] = outcome
    if status == 0 or status >= 500:
        a["error"] = "true"
    return {k: v for k, v in a.items() if v}


CUSTOM_TAG_KINDS = ("literal", "environment", "header")


def custom_tags(tags: Iterable[tuple[str, str, str]], headers: Iterable[tuple[str, str]],
                environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The Telemetry API's customTags as span attributes: `(tag, kind, value)`, where kind
    literal's value is the value, environment's names a variable of the waypoint's environment,
    header's names a request header (lower-cased). Istio's `defaultValue` is spelt
    `name|default` in the value; a tag with no value and no default is left out, as Envoy."""
    out: dict[str, str] = {}
    hdrs: dict[str, str] | None = None
    for tag, kind, value in tags:
        name, _, default = value.partition("|")
        if kind == "literal":
            v: str | None = value
        elif kind == "environment":
            v = environ.get(name) or default or None
        elif kind == "header":
            if hdrs is None:
                hdrs = {}
                for k, hv in headers:
                    hdrs.setdefault(k, hv)
            v = hdrs.get(name.lower()) or default or None
        else:
            continue
        if v is not None:
            out[tag] = v
    return out


def parse_tag_flag(flag: str) -> tuple[str, str, str]:
    """`--tracing-tag NAME=literal:VALUE|environment:VAR[|default]|header:NAME[|default]`."""
    tag, sep, rest = flag.partition("=")
    kind, sep2, value = rest.partition(":")
    if not tag or not sep or not sep2 or kind not in CUSTOM_TAG_KINDS:
        raise ValueError(f"--tracing-tag {flag!r}: must be NAME=literal:VALUE, NAME=environment:VAR "
                         "or NAME=header:NAME")
    return tag, kind, value
