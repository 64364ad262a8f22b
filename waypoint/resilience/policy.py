"""What a route's resilience settings compile to, once per route table, and travel with each
`Forward` to the exchange that applies them.

`None` fields mean "not configured": the exchange then applies Ambit's (Istio's) defaults, e.g.
Istio's default retry policy for a route without `retries`, and no timeout for a route without
`timeout` (Istio disables Envoy's 15 s route timeout for HTTP).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ambit.model import HttpRoute
from waypoint.resilience.fault import compile_fault
from waypoint.resilience.mirror import compile_mirrors
from waypoint.resilience.retry import compile_retry
from waypoint.traffic.session import SessionPolicy


@dataclass(frozen=True, slots=True)
class RoutePolicy:
    timeout: float = 0.0            # the whole request, all tries included; 0: none
    per_try_timeout: float = 0.0    # each try (retries.perTryTimeout / timeouts.backendRequest); 0: none
    retry: Any = None               # waypoint.resilience.retry.RetryPolicy; None: Istio's default
    fault: Any = None               # waypoint.resilience.fault: the compiled fault injection
    mirrors: tuple[Any, ...] = ()   # waypoint.resilience.mirror: the compiled mirrors
    cors: Any = None                # waypoint.routing.cors.CorsPolicy: applied past the fault filter
    session: Any = None             # waypoint.traffic.session.SessionPolicy: the endpoint pin (upstream())


def compile_policy(r: HttpRoute, cors: Any = None) -> RoutePolicy:
    """An HTTPRoute's `timeouts.backendRequest` is each try's timeout when the rule has a `retry`;
    without one, Istio's conversion makes it the route timeout (in place of `timeouts.request`:
    istio/istio pilot/pkg/config/kube/gateway/conversion.go), which also covers the response body,
    where a per-try timeout stops counting once the response has started. `cors` is the route's
    compiled CORS policy (waypoint.routing.cors, compiled by the route table), which the engine
    applies past the fault filter."""
    timeout, per_try = r.timeout, 0.0
    if r.retries is not None:
        per_try = r.retries.per_try_timeout or r.backend_timeout
    elif r.backend_timeout:
        timeout = r.backend_timeout
    return RoutePolicy(timeout=timeout, per_try_timeout=per_try, retry=compile_retry(r.retries),
                       fault=compile_fault(r.fault), mirrors=compile_mirrors(r.mirrors), cors=cors,
                       session=SessionPolicy.compile(r.session))
