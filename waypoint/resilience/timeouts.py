"""Request timeouts: which one applies to a request, and what its expiry answers.

- The route timeout (VirtualService `timeout`, HTTPRoute `timeouts.request`) covers every try and
  runs from when the downstream request is fully received until the upstream response is complete
  (envoyproxy/envoy api/envoy/config/route/v3/route_components.proto RouteAction.timeout). 0: none,
  Istio's default for HTTP (route.go setTimeout, `Notimeout`).
- The per-try timeout (`retries.perTryTimeout`, HTTPRoute `timeouts.backendRequest` with a
  `retry`) bounds each try; it starts when the try has the whole request and stops counting once
  the response has started downstream (envoyproxy/envoy source/common/router/upstream_request.cc
  onPerTryTimeout: "ignore the per try timeout and let the response continue up to the global
  timeout"). Without a `retry`, Istio makes `backendRequest` the route timeout (policy.py).
- gRPC: Istio sets `max_grpc_timeout` to the route timeout (route.go setTimeout), so Envoy uses
  the request's `grpc-timeout` header capped at the route timeout, 0 meaning infinity on either
  side (envoyproxy/envoy source/common/router/config_impl/router.cc FilterUtility::finalTimeout).
- Expiry before the response head: 504 `upstream request timeout`, response flag UT; a gRPC request
  gets it as trailers-only with grpc-status UNAVAILABLE (14): Envoy's local reply maps 504 with
  Grpc::Utility::httpToGrpcStatus, it does not answer DEADLINE_EXCEEDED. After the head went
  downstream, the stream is reset (flag UT).
"""

from __future__ import annotations

import re

TIMEOUT_BODY = b"upstream request timeout"

_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
# ASCII digits only: str.isdigit() takes "²" (and int() then raises), int() takes "+1", " 1", "1_0"
_GRPC_TIMEOUT = re.compile(r"([0-9]{1,8})([HMSmun])").fullmatch


def parse_grpc_timeout(value: str | None) -> float:
    """`grpc-timeout` (gRPC over HTTP/2: 1-8 ASCII digits and a unit H M S m u n) in seconds; 0
    when absent or malformed (as Envoy's Grpc::Common::getGrpcTimeout, which ignores a bad header)."""
    m = _GRPC_TIMEOUT(value) if value else None
    if m is None:
        return 0.0
    return int(m.group(1)) * _UNITS[m.group(2)]


def request_timeout(route_timeout: float, grpc: bool, grpc_timeout: str | None) -> float:
    """The timeout of one request in seconds (0: none)."""
    if not grpc:
        return route_timeout
    t = parse_grpc_timeout(grpc_timeout)
    if route_timeout > 0 and (t == 0 or t > route_timeout):
        return route_timeout
    return t
