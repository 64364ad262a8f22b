"""One record per request, handed to the access-log sink and the stats callback when it ends.

Field names follow Envoy's access-log operators where there is one (`response_flags`,
`upstream_host`, `route_name`), so Istio users find what they know; `line()` is the JSON line.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from waypoint.request import Downstream


@dataclass
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
    grpc: bool = False
    grpc_status: str = ""                   # from the response trailers (or a trailers-only reply)
    detail: str = ""                        # why, for local replies and failures

    def line(self) -> str:
        d = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(self.start)) + f".{int(self.start % 1 * 1e6):06d}Z",
            "method": self.method, "path": self.path, "authority": self.authority, "protocol": self.protocol,
            "status": self.status, "response_flags": self.response_flags or "-",
            "bytes_received": self.bytes_received, "bytes_sent": self.bytes_sent,
            "duration_ms": round(self.duration_ms, 3), "upstream_host": self.upstream,
            "route_name": self.route, "x_request_id": self.request_id,
            "src.identity": self.downstream.source_identity, "src.addr": self.downstream.source_ip,
            "dst.service": self.service, "grpc_status": self.grpc_status, "detail": self.detail,
        }
        return json.dumps({k: v for k, v in d.items() if v != ""})


RecordSink = Callable[[RequestRecord], None]


def discard(_rec: RequestRecord) -> None:
    """The default sink: nothing."""
