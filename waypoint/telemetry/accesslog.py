"""One access-log line per request, through an injected sink.

The line is `RequestRecord.line()` (Envoy's/Istio's JSON access-log field names: start_time,
method, path, protocol, response_code, response_flags, bytes_*, duration, upstream_host,
route_name, request_id, authority, user_agent, ...) plus what only the waypoint knows: the source
and destination workloads it resolved. The sink takes the finished line, so the waypoint decides
where lines go (stdout batched per loop iteration, a file, a list in tests).
"""

from __future__ import annotations

import json
from collections.abc import Callable

from ambit.model import Workload
from waypoint.http.record import RequestRecord
from waypoint.telemetry.peers import workload_name

LineSink = Callable[[str], None]


def request_line(rec: RequestRecord, src: Workload | None, dst: Workload | None) -> str:
    d = json.loads(rec.line())
    extra = {}
    if src is not None:
        extra["source_workload"], extra["source_namespace"] = workload_name(src), src.namespace
    if dst is not None:
        extra["destination_workload"], extra["destination_namespace"] = workload_name(dst), dst.namespace
        extra["upstream_peer"] = dst.identity
    d.update({k: v for k, v in extra.items() if v})
    return json.dumps(d)


class RequestLog:
    """`emit(record, src, dst)` writes one line to `sink` (e.g. `print`-like, or a batching writer).
    A sink that fails is the waypoint's problem, not the request's: the engine catches and logs it."""

    def __init__(self, sink: LineSink) -> None:
        self.sink = sink

    def emit(self, rec: RequestRecord, src: Workload | None, dst: Workload | None) -> None:
        self.sink(request_line(rec, src, dst))
