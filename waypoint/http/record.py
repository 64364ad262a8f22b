"""One record per request, handed to the access-log sink and the stats callback when it ends.

`line()` is the JSON line, with the keys of Istio's default JSON access-log format (Envoy's
operators: `start_time`, `response_code`, `response_flags`, `upstream_host`, `route_name`,
`request_id` (x-request-id), `authority`, `user_agent`, `downstream_remote_address`, ...), so
Istio users' log queries carry over, and `audit`: the AUDIT AuthorizationPolicies the request
matched, as ztunnel's access record names them. Empty values are left out.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ambit.dataplane.accesslog_time import second_text
from waypoint.request import Downstream


@dataclass(init=False)
class RequestRecord:
    method: str
    path: str
    authority: str
    protocol: str                           # HTTP/1.0 | HTTP/1.1 | HTTP/2
    downstream: Downstream
    start: float = field(default_factory=time.time)
    request_id: str = ""
    status: int = 0                         # 0: no response was sent (reset before headers)
    bytes_received: int = 0                 # request body bytes from the client
    bytes_sent: int = 0                     # response body bytes to the client
    duration_ms: float = 0.0
    response_flags: str = ""                # Envoy's: UF, UH, NR, UC, UR, DC, SI, ... ("" : none)
    upstream: str = ""                      # the upstream's address, when one was chosen
    upstream_protocol: str = ""             # http1 | h2
    route: str = ""
    service: str = ""                       # Forward.service ("ns/name")
    hostname: str = ""                      # Forward.hostname: that Service's host (FQDN, or a ServiceEntry's host)
    grpc: bool = False
    grpc_status: str = ""                   # from the response trailers (or a trailers-only reply)
    request_messages: int = 0               # gRPC messages each way (waypoint/http/grpcframes.py)
    response_messages: int = 0
    detail: str = ""                        # why, for local replies and failures
    user_agent: str = ""
    audit: tuple[str, ...] = ()             # the AUDIT AuthorizationPolicies ("ns/name") the request matched
    dry_run: tuple[tuple[str, str, str], ...] = ()  # the dry-run policies' results (waypoint/authz/evaluate.py)
    termination: str = ""                   # a refused tunnel's connection termination details (`TunnelRecord`)

    def __init__(self, method: str, path: str, authority: str, protocol: str, downstream: Downstream,
                 grpc: bool = False, user_agent: str = "", **fields: Any) -> None:
        """Stores what every record has and what differs from the class defaults above; the
        rest reads the defaults until set (a dataclass __init__ stored all 22 fields for every
        request: docs/performance.md §44). `fields`: any other field by name, as before."""
        self.method = method
        self.path = path
        self.authority = authority
        self.protocol = protocol
        self.downstream = downstream
        self.start = time.time()
        if grpc:
            self.grpc = grpc
        if user_agent:
            self.user_agent = user_agent
        if fields:
            for k, v in fields.items():
                if k not in _FIELDS:
                    raise TypeError(f"RequestRecord() got an unexpected keyword argument {k!r}")
                setattr(self, k, v)

    def line(self) -> str:
        return json.dumps(self.fields())

    def fields(self) -> dict[str, object]:
        """The line's fields, empty values left out (the access log adds the resolved workloads to
        them and encodes once: this runs once per request)."""
        d = self.downstream
        out: dict[str, object] = {"start_time": _start_time(self.start)}
        # built in the line's key order, each empty text left out as it goes (no dict to filter)
        for k, v in (("method", self.method), ("path", self.path), ("protocol", self.protocol)):
            if v != "":
                out[k] = v
        out["response_code"] = self.status
        out["response_flags"] = self.response_flags or "-"
        for k, v in (("response_code_details", self.detail), ("grpc_status", self.grpc_status)):
            if v != "":
                out[k] = v
        out["bytes_received"] = self.bytes_received
        out["bytes_sent"] = self.bytes_sent
        out["duration"] = round(self.duration_ms)
        for k, v in (("upstream_host", self.upstream), ("route_name", self.route), ("request_id", self.request_id),
                     ("authority", self.authority), ("user_agent", self.user_agent),
                     ("downstream_remote_address", d.source_ip),
                     ("downstream_local_address", f"{d.destination_ip or d.local_ip}:{d.destination_port}"
                      if d.destination_ip or d.local_ip else ""),
                     ("downstream_peer_principal", d.source_identity), ("destination_service", self.service)):
            if v != "":
                out[k] = v
        if self.audit:      # ztunnel's access record names matched AUDIT policies alike
            out["audit"] = list(self.audit)
        if self.dry_run:    # {"deny": {"result": "denied", "policy": "ns[..]-policy[..]-rule[0]"}, "allow": ...}
            out["dry_run"] = {a: {"result": r, **({"policy": p} if p else {})} for a, r, p in self.dry_run}
        return out


_FIELDS = frozenset(f.name for f in dataclasses.fields(RequestRecord))


class TunnelRecord(RequestRecord):
    """A non-HTTP tunnel's record (waypoint/http/opaque.py): its line also has Envoy's
    `connection_termination_details` when a filter set them (a tunnel L4 policy refused:
    `rbac_access_denied_matched_policy[...]`). Kept off `RequestRecord.fields`, which every HTTP
    request's line runs and which has no such details to give."""

    def fields(self) -> dict[str, object]:
        out = super().fields()
        if self.termination:
            out["connection_termination_details"] = self.termination
        return out


def _start_time(t: float) -> str:
    """RFC 3339 UTC with milliseconds; the seconds part is formatted once per second, not per
    request (gmtime and strftime are a measurable share of a request's log line)."""
    return f"{second_text(int(t))}.{int(t % 1 * 1000):03d}Z"


RecordSink = Callable[[RequestRecord], None]


def discard(_rec: RequestRecord) -> None:
    """The default sink: nothing."""
