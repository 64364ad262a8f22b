"""The waypoint's side of `ambit tap`: each finished request's record, as a tap event (L7).

The engine's access-log callback hands every `RequestRecord` (HTTP requests, and opaque TCP
streams, protocol "TCP") to `WaypointProxy`; when someone taps it also calls `hub.publish(lambda: request_event(...))`. `request_event` is pure
(tests/unit/waypoint/test_tap.py). The verdict comes from the same place as the 403: an RBAC
local reply (response flag `RBAC`) carries the authorization verdict's reason ("denied by ns/name",
"no rule of the ALLOW policies (...) matched"), and the deciding policy is parsed from it.
"""

from __future__ import annotations

import re
from typing import Any

from ambit.dataplane.accesslog_time import iso_time
from ambit.dataplane.telemetry.peers import workload_name
from ambit.model import Workload
from waypoint.http.record import RequestRecord
from waypoint.telemetry.hook import address_ip

RBAC_FLAG = "RBAC"
_DENIED_BY = re.compile(r"denied by (\S+)")
_NO_ALLOW = re.compile(r"ALLOW policies \(([^)]*)\)")


def deciding_policy(reason: str) -> str:
    """The policy named by an authorization verdict's reason ("" when none is named)."""
    m = _DENIED_BY.search(reason) or _NO_ALLOW.search(reason)
    return m.group(1) if m else ""


def verdict(rec: RequestRecord) -> tuple[str, str]:
    """(allowed | denied | error, deciding policy) of one request."""
    if RBAC_FLAG in rec.response_flags.split(","):
        return "denied", deciding_policy(rec.detail)
    if rec.protocol == "TCP":       # an opaque stream has no status: only its flags say it failed
        return ("error" if rec.response_flags not in ("", "-") else "allowed"), ""
    if rec.status == 0 or rec.status >= 500 and rec.response_flags not in ("", "-"):
        return "error", ""
    return "allowed", ""


def _peer(w: Workload | None, addr: str, identity: str, namespace: str) -> dict[str, Any]:
    out: dict[str, Any] = {"addr": addr, "identity": identity, "namespace": namespace, "workload": ""}
    if w is not None:
        out.update(workload=workload_name(w), namespace=w.namespace, pod=w.name, identity=identity or w.identity)
    return out


def request_event(rec: RequestRecord, src: Workload | None, dst: Workload | None) -> dict[str, Any]:
    """The tap event of one request: source, destination, method, path, status, latency, bytes,
    and the policy verdict."""
    d = rec.downstream
    v, policy = verdict(rec)
    if rec.protocol == "TCP":       # an opaque stream through the waypoint: L4, no request fields
        return {"type": "flow", "layer": "L4", "time": iso_time(rec.start), "protocol": "TCP",
                "direction": "waypoint", "route": rec.route,
                "src": _peer(src, d.source_ip, d.source_identity, d.source_namespace),
                "dst": {**_peer(dst, rec.upstream, dst.identity if dst is not None else "",
                                dst.namespace if dst is not None else ""), "service": d.service},
                "latency_ms": round(rec.duration_ms, 3), "bytes_sent": rec.bytes_received,
                "bytes_recv": rec.bytes_sent, "verdict": v, "policy": policy,
                **({"error": rec.detail} if rec.detail else {})}
    ev: dict[str, Any] = {
        "type": "flow", "layer": "L7", "time": iso_time(rec.start), "protocol": rec.protocol,
        "src": _peer(src, d.source_ip, d.source_identity, d.source_namespace),
        "dst": {**_peer(dst, rec.upstream, dst.identity if dst is not None else "",
                        dst.namespace if dst is not None else ""),
                "service": d.service, "ip": address_ip(rec.upstream)},
        "method": rec.method, "authority": rec.authority, "path": rec.path, "status": rec.status,
        "latency_ms": round(rec.duration_ms, 3), "bytes_sent": rec.bytes_received, "bytes_recv": rec.bytes_sent,
        "route": rec.route, "response_flags": rec.response_flags, "verdict": v, "policy": policy,
    }
    if rec.grpc_status:
        ev["grpc_status"] = rec.grpc_status
    if rec.detail:
        ev["detail"] = rec.detail
    return ev
