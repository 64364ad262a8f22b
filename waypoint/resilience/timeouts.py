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
- The upstream is told the deadline: for a gRPC request with a timeout, `grpc-timeout` is rewritten
  to the per-try timeout if there is one (and it is below the route timeout), else the request's
  timeout (FilterUtility::finalTimeout with `max_grpc_timeout` set, as Istio always sets it: "This
  ensures that the optional per try timeout is reflected in grpc-timeout"); a retry is told what
  is left: min(per-try timeout, route timeout minus the time since it started), as Envoy's router
  rewrites the header for each retry (`upstream_grpc_timeout`).
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


GRPC_MAX_TIMEOUT_VALUE = 99_999_999     # grpc-timeout has at most 8 digits


def grpc_timeout_value(seconds: float) -> str:
    """Envoy's Grpc::Common::toGrpcTimeout: milliseconds, or the smallest larger unit (S, M, H)
    that fits in 8 digits, clipped at 99999999H."""
    t = max(1, round(seconds * 1000))
    units = "mSMH"
    i = 0
    if t > GRPC_MAX_TIMEOUT_VALUE:
        t //= 1000
        i = 1
    while t > GRPC_MAX_TIMEOUT_VALUE:
        if i == 3:
            t = GRPC_MAX_TIMEOUT_VALUE
            break
        t //= 60
        i += 1
    return f"{t}{units[i]}"


def upstream_grpc_timeout(timeout: float, per_try: float, elapsed: float = 0.0) -> str | None:
    """The `grpc-timeout` to send upstream for a try of a gRPC request whose timeout is `timeout`
    and per-try timeout `per_try` (0: none), `elapsed` seconds into `timeout`; None to leave the
    header as it is (no timeout). Envoy's FilterUtility::setTimeoutHeaders, which its router calls
    for the first try and again for each retry: the per-try timeout when set and below the route
    timeout (Envoy drops a per-try timeout that is not), else the request's timeout, and never
    more than what is left of the request's timeout (at least 1 ms)."""
    if per_try and timeout and per_try >= timeout:
        per_try = 0.0
    expected = per_try or timeout
    if expected <= 0:
        return None
    if timeout > 0:
        expected = min(expected, timeout - elapsed)     # (spent: grpc_timeout_value gives 1m)
    return grpc_timeout_value(expected)
