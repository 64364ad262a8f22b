"""One access-log line per request, as the Telemetry API says, through an injected sink.

The built-in line (the default, when no Telemetry names an access-log provider) is
`RequestRecord.line()` (Envoy's/Istio's JSON access-log field names: start_time, method, path,
protocol, response_code, response_flags, bytes_*, duration, upstream_host, route_name, request_id,
authority, user_agent, ...) plus what only the waypoint knows: the source and destination workloads
it resolved. A Telemetry's `accessLogging` can turn the log off for the requests to a Service (or
the whole waypoint), filter it (`response.code >= 400`), and name providers whose format (Istio's
default text format, JSON labels) and file replace the built-in line (ambit.telemetrylog).
The sink takes the finished line, so the waypoint decides where lines go (stdout, a list in tests).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from ambit.dataplane.idcache import IdCache
from ambit.model import Workload
from ambit.telemetryconfig import AccessLogConfig
from ambit.telemetrylog import START, AccessLogWriter, OtelSink
from waypoint.http.record import RequestRecord
from waypoint.telemetry.peers import workload_name

LineSink = Callable[[str], None]
# The Service ("ns/name", "" when none) a request was for -> its access logging.
ConfigFor = Callable[[str], "AccessLogConfig | None"]


class Unresolved:
    """The type of UNRESOLVED: no config handed in, look it up with `config_for`."""


UNRESOLVED = Unresolved()


def request_line(rec: RequestRecord, src: Workload | None, dst: Workload | None) -> str:
    """The record's fields, then the resolved workloads', as one JSON object. The workloads' part
    is the same for every request between two peers, so it is encoded once per pair (`_peer_json`)
    and joined to the record's encoding: the same text as encoding the merged dict."""
    line = json.dumps(rec.fields())     # one JSON encoding per request, not the record's line decoded again
    if src is None and dst is None:
        return line
    tail = _peer_json(src, dst)
    return f"{line[:-1]}, {tail}" if tail and line != "{}" else line


# (id(src), id(dst)) -> their fields encoded without the opening brace, or "". The cache holds no
# reference to the workloads (IdCache): an entry goes when either Workload does, so the View's
# replaced and deleted Workloads are freed, and a new one reusing a freed one's id starts afresh.
PEER_JSON_CACHE = 4096
_PEERS: IdCache[str] = IdCache(PEER_JSON_CACHE)


def _peer_json(src: Workload | None, dst: Workload | None) -> str:
    key = (id(src), id(dst))
    hit = _PEERS.get(key)
    if hit is not None:
        return hit
    d: dict[str, Any] = {}
    if src is not None:
        _put(d, "source_workload", workload_name(src))
        _put(d, "source_namespace", src.namespace)
    if dst is not None:
        _put(d, "destination_workload", workload_name(dst))
        _put(d, "destination_namespace", dst.namespace)
        _put(d, "upstream_peer", dst.identity)
    tail = json.dumps(d)[1:] if d else ""
    _PEERS.put(key, tail, src, dst)
    return tail


def _put(d: dict[str, Any], key: str, value: str) -> None:
    if value:
        d[key] = value


def request_attrs(rec: RequestRecord) -> dict[str, Any]:
    """The CEL attributes a filter can test (ambit.telemetryfilter.ATTRIBUTES)."""
    attrs: dict[str, Any] = {"request.method": rec.method, "request.path": rec.path,
                             "connection.mtls": bool(rec.downstream.source_identity)}
    if rec.status:
        attrs["response.code"] = rec.status     # no response (reset before headers): no code
    return attrs


def _uri(identity: str) -> str:
    """A SPIFFE id as the peer certificate's URI SAN (identities may or may not carry the scheme)."""
    return identity if not identity or identity.startswith("spiffe://") else f"spiffe://{identity}"


def request_values(rec: RequestRecord, src: Workload | None, dst: Workload | None) -> dict[str, Any]:
    """Envoy command operators for one request."""
    d = rec.downstream
    return {
        "START_TIME": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(rec.start)) + f".{int(rec.start % 1 * 1000):03d}Z",
        "REQ(:METHOD)": rec.method, "REQ(X-ENVOY-ORIGINAL-PATH?:PATH)": rec.path, "REQ(:PATH)": rec.path,
        "PROTOCOL": rec.protocol, "RESPONSE_CODE": rec.status, "RESPONSE_FLAGS": rec.response_flags or "-",
        "RESPONSE_CODE_DETAILS": rec.detail, "CONNECTION_TERMINATION_DETAILS": rec.termination,
        "BYTES_RECEIVED": rec.bytes_received, "BYTES_SENT": rec.bytes_sent,
        "DURATION": round(rec.duration_ms), "REQ(USER-AGENT)": rec.user_agent, "REQ(X-REQUEST-ID)": rec.request_id,
        "REQ(:AUTHORITY)": rec.authority, "UPSTREAM_HOST": rec.upstream, "ROUTE_NAME": rec.route,
        "UPSTREAM_CLUSTER_RAW": rec.service, "UPSTREAM_CLUSTER": rec.service, "GRPC_STATUS": rec.grpc_status,
        "DOWNSTREAM_REMOTE_ADDRESS": d.source_ip,
        "DOWNSTREAM_LOCAL_ADDRESS": (f"{d.destination_ip or d.local_ip}:{d.destination_port}"
                                     if d.destination_ip or d.local_ip else ""),
        "DOWNSTREAM_PEER_URI_SAN": _uri(d.source_identity),
        "UPSTREAM_PEER_URI_SAN": _uri(dst.identity) if dst is not None else "",
        "SOURCE_WORKLOAD": workload_name(src) if src is not None else "",
        "SOURCE_NAMESPACE": src.namespace if src is not None else "",
        "DESTINATION_WORKLOAD": workload_name(dst) if dst is not None else "",
        "DESTINATION_NAMESPACE": dst.namespace if dst is not None else "",
        "DESTINATION_SERVICE": rec.service, "CONNECTION_DIRECTION": "inbound", START: rec.start,
    }


class RequestLog:
    """`emit(record, src, dst)` writes the request's lines to `sink` (e.g. `print`-like, or a
    batching writer), as `config_for(service)` (the waypoint's View.telemetry_for_waypoint) says;
    without `config_for`, the built-in line for every request. A sink that fails is the
    waypoint's problem, not the request's: the engine catches and logs it."""

    def __init__(self, sink: LineSink, config_for: ConfigFor | None = None, otel: OtelSink | None = None) -> None:
        self.sink = sink
        self.config_for = config_for
        self.writer = AccessLogWriter(sink, otel=otel)

    def emit(self, rec: RequestRecord, src: Workload | None, dst: Workload | None,
             cfg: AccessLogConfig | None | Unresolved = UNRESOLVED) -> None:
        """`cfg`: the request's access logging when the caller resolved it already (hook.Telemetry
        resolves a request's Telemetry config once for the log and the metrics)."""
        if cfg is UNRESOLVED:
            cfg = self.config_for(rec.service or rec.downstream.service) if self.config_for is not None else None
        assert not isinstance(cfg, Unresolved)
        if cfg is not None and cfg.disabled:
            return      # logging off: no attributes built for a filter that cannot select
        if cfg is None or not (cfg.filter or cfg.providers):
            # the default (no Telemetry accessLogging): the built-in line, with no filter attributes
            # or provider values built for it (what AccessLogWriter.write would do, minus those)
            self.sink(request_line(rec, src, dst))
            self.writer.written += 1
            return
        self.writer.write(cfg, request_attrs(rec), lambda: request_values(rec, src, dst),
                          lambda: request_line(rec, src, dst))
