"""How one upstream attempt ended, as the engine reports it to the attempt's cluster (load
balancing counts active requests, outlier detection counts failures, retries decide on it).

Kinds, with Envoy's classification for outlier detection (outlier.rst): a `response` is an
*externally originated* result (its status decides: 5xx, gateway error 502/503/504; for a gRPC
request a trailers-only `grpc-status`, mapped to HTTP as Envoy does); the others are
*locally originated* failures: `connect_failure` (UF), `reset` (UR/UC: the upstream reset or closed
before the response head), `timeout` (UT: the per-try or route timeout fired before the head).
"""

from __future__ import annotations

from dataclasses import dataclass

from waypoint.http.headers import http_status_for_grpc

RESPONSE = "response"
CONNECT_FAILURE = "connect_failure"
RESET = "reset"
TIMEOUT = "timeout"
LOCAL_ORIGIN = (CONNECT_FAILURE, RESET, TIMEOUT)


@dataclass(frozen=True, slots=True)
class Outcome:
    kind: str                   # RESPONSE | CONNECT_FAILURE | RESET | TIMEOUT
    status: int = 0             # the response status (RESPONSE)
    grpc_status: str = ""       # grpc-status of a trailers-only response head, when there is one

    @property
    def local_origin(self) -> bool:
        return self.kind in LOCAL_ORIGIN

    @property
    def outlier_status(self) -> int:
        """The status outlier detection counts for a `response`: a gRPC answer's `grpc-status`
        as Envoy's router maps it (UNAVAILABLE is a 503, INTERNAL a 500, ...), since a gRPC
        failure comes as HTTP 200; otherwise the HTTP status (router.cc onUpstreamHeaders)."""
        return http_status_for_grpc(self.grpc_status) if self.grpc_status else self.status
