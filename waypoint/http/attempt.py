"""How one upstream attempt ended, as the engine reports it to the attempt's cluster (load
balancing counts active requests, outlier detection counts failures, retries decide on it).

Kinds, with Envoy's classification for outlier detection (outlier.rst): a `response` is an
*externally originated* result (its status decides: 5xx, gateway error 502/503/504); the others are
*locally originated* failures: `connect_failure` (UF), `reset` (UR/UC: the upstream reset or closed
before the response head), `timeout` (UT: the per-try or route timeout fired before the head).
"""

from __future__ import annotations

from dataclasses import dataclass

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
    def gateway_error(self) -> bool:
        """Envoy's gateway errors: 502, 503, 504 answers, and every local-origin failure."""
        return self.local_origin or self.status in (502, 503, 504)

    @property
    def server_error(self) -> bool:
        """5xx answers and every local-origin failure (what `consecutive5xxErrors` counts when
        `splitExternalLocalOriginErrors` is off)."""
        return self.local_origin or self.status >= 500
