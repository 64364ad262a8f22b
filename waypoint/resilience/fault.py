"""Fault injection (VirtualService `fault`), as Envoy's fault filter does it for Istio.

Istio translates `fault` into a per-route `envoy.filters.http.fault` config
(istio/istio:pilot/pkg/networking/core/route/route.go `TranslateFault`): a fixed delay and/or an
abort (`httpStatus`, or `grpcStatus` by name through `grpc.SupportedGRPCStatus`), each with a
percentage turned into a FractionalPercent per million (`uint32(value * 10000)`, so 0.0001 %
steps). Envoy then, per request (envoyproxy/envoy:source/extensions/filters/http/fault/
fault_filter.cc, docs/root/configuration/http/http_filters/fault_filter.rst):

1. draws the delay (`featureEnabled`: `random % 1e6 < numerator`); if it applies, the request
   waits on a timer (the body is held, with backpressure), response flag DI;
2. then, after the delay if there was one, draws the abort independently; if it applies, the
   request is answered locally (`sendLocalReply`, body "fault filter abort", details
   `fault_filter_abort`), response flag FI. A `grpcStatus` abort answers HTTP 200 with that
   grpc-status (trailers-only for a gRPC request); an `httpStatus` abort of a gRPC request gets
   the status mapped to a gRPC code as every local reply.

The fault filter runs before the router, so an aborted request never reaches an upstream and is
never retried, and a delay is not counted in the route timeout. Envoy's header-controlled faults
(`x-envoy-fault-abort-request`, `x-envoy-fault-delay-request`, ...) only work when the filter is
configured with `header_abort`/`header_delay`, which Istio never does: Ambit ignores those headers
too (they are forwarded like any other header).

This module is pure: the random source is injected; the exchange drives the timer.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ambit.model import Fault
from waypoint.request import LocalReply

MILLION = 1_000_000
ABORT_BODY = b"fault filter abort"
ABORT_DETAIL = "fault_filter_abort"
DELAY_FLAG, ABORT_FLAG = "DI", "FI"

# grpc/grpc doc/statuscodes.md; the names Istio accepts (istio/istio:pkg/config/validation
# `grpc.SupportedGRPCStatus`).
GRPC_CODES = {
    "OK": 0, "CANCELLED": 1, "UNKNOWN": 2, "INVALID_ARGUMENT": 3, "DEADLINE_EXCEEDED": 4, "NOT_FOUND": 5,
    "ALREADY_EXISTS": 6, "PERMISSION_DENIED": 7, "RESOURCE_EXHAUSTED": 8, "FAILED_PRECONDITION": 9,
    "ABORTED": 10, "OUT_OF_RANGE": 11, "UNIMPLEMENTED": 12, "INTERNAL": 13, "UNAVAILABLE": 14,
    "DATA_LOSS": 15, "UNAUTHENTICATED": 16,
}


def per_million(percent: float) -> int:
    """Istio's `translatePercentToFractionalPercent`: `uint32(value * 10000)` of a million
    (truncated), clamped to 0..1e6 (Envoy treats a numerator above the denominator as 100 %)."""
    if percent <= 0:
        return 0
    return min(MILLION, int(percent * 10000))


def draw(numerator: int, rng: random.Random) -> bool:
    """Envoy's `Runtime::Snapshot::featureEnabled(key, FractionalPercent)`: one uniform draw,
    `random % denominator < numerator`."""
    if numerator <= 0:
        return False
    return numerator >= MILLION or rng.randrange(MILLION) < numerator


def grpc_code(name: str) -> int | None:
    """A gRPC status name ("UNAVAILABLE") or number ("14") as its code; None if unknown."""
    n = name.strip().upper()
    if n in GRPC_CODES:
        return GRPC_CODES[n]
    if n.isascii() and n.isdigit() and int(n) <= 16:      # (isdigit alone takes "²": int() raises)
        return int(n)
    return None


@dataclass(frozen=True, slots=True)
class FaultPolicy:
    """One route's compiled `fault`."""

    delay: float = 0.0              # seconds; 0: no delay fault
    delay_per_million: int = 0
    abort_status: int = 0           # HTTP status; 0: none (then abort_grpc, if set)
    abort_grpc: int | None = None   # gRPC status code
    abort_per_million: int = 0

    @property
    def aborts(self) -> bool:
        return bool(self.abort_status or self.abort_grpc is not None) and self.abort_per_million > 0

    def delay_for(self, rng: random.Random) -> float:
        """Seconds this request is held before going on (0: none). The first draw."""
        if self.delay <= 0 or not draw(self.delay_per_million, rng):
            return 0.0
        return self.delay

    def abort_for(self, rng: random.Random, route: str = "") -> LocalReply | None:
        """The local reply aborting this request, or None. The second draw, after any delay."""
        if not self.aborts or not draw(self.abort_per_million, rng):
            return None
        if self.abort_status:       # httpStatus wins when both are set (Envoy's abortStatus order)
            return LocalReply(self.abort_status, ABORT_BODY, flags=ABORT_FLAG, route=route, reason=ABORT_DETAIL)
        return LocalReply(200, ABORT_BODY, flags=ABORT_FLAG, grpc_status=self.abort_grpc, route=route,
                          reason=ABORT_DETAIL)


def compile_fault(f: Fault | None) -> FaultPolicy | None:
    """None when the route has no fault that can ever apply (nothing to do per request).

    An unknown `grpcStatus` name (Istio's validation rejects it) or an `httpStatus` outside
    200..599 (Envoy's range; Istio's validation: 200..599 too) compiles to no abort."""
    if f is None:
        return None
    delay = f.delay if f.delay > 0 else 0.0
    dpm = per_million(f.delay_percent) if delay else 0
    status = f.abort_status if 200 <= f.abort_status <= 599 else 0
    grpc = grpc_code(f.abort_grpc_status) if not status and f.abort_grpc_status else None
    apm = per_million(f.abort_percent) if (status or grpc is not None) else 0
    if not dpm and not apm:
        return None
    return FaultPolicy(delay, dpm, status, grpc, apm)


def merge_flags(first: str, rest: str) -> str:
    """Envoy's %RESPONSE_FLAGS% with several flags: comma-joined, in the order they were set
    (envoyproxy/envoy:source/common/stream_info/utility.cc `ResponseFlagUtils::toString`). The
    fault filter runs first, so its flags lead: "DI,FI", "DI,DC", "DI,UF"."""
    if not first:
        return rest
    if not rest:
        return first
    seen = first.split(",")
    return ",".join(seen + [f for f in rest.split(",") if f not in seen])
