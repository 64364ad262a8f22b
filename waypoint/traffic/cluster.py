"""Clusters: what Envoy calls a cluster, here one (Service, port, subset) the waypoint sends to.

A cluster holds the DestinationRule traffic policy that applies to it (port level over subset over
host, as Istio merges them: `effective_policy`) and the state that policy drives across requests:
its load balancer, its outlier detector, its circuit breaker (connection-pool limits) and its retry
budget. Endpoints of one cluster share that state, which is why it is per cluster and not per
endpoint.

`Clusters` keeps one `Cluster` per key across config updates: a cluster whose policy did not change
keeps its state (ejections, counters, the hash ring), one whose policy changed is rebuilt, and one
no longer referenced is dropped at the next update.

The HTTP engine reports each attempt to the cluster of its `UpstreamTarget` (see
`waypoint.http.attempt`): `attempt_started`, `attempt_result` (once the outcome is known: a
response status, or a local failure) and `attempt_ended` (the attempt's stream is over). The cluster
passes them to the parts that care (least-request counts, outlier detection).

Pure: the clock and the random source are injected.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ambit.model import TrafficPolicy, WaypointRoutes
from waypoint.http.attempt import Outcome
from waypoint.resilience.budget import RetryCircuit

Clock = Callable[[], float]

# Stats that go up and down (Envoy gauges); every other stat a cluster reports is a counter.
GAUGES = frozenset({
    "upstream_rq_active", "upstream_rq_pending_active", "upstream_cx_active",
    "circuit_breakers_default_cx_open", "circuit_breakers_default_rq_pending_open",
    "circuit_breakers_default_rq_open", "circuit_breakers_default_rq_retry_open",
    "outlier_detection_ejections_active", "membership_healthy", "membership_total",
})


@dataclass(frozen=True, slots=True)
class ClusterKey:
    service: str        # "ns/name"
    port: int
    subset: str = ""


def cluster_name(hostname: str, port: int, subset: str = "") -> str:
    """Istio's cluster name, `outbound|PORT|SUBSET|FQDN`, so dashboards and alerts written for
    Istio's `envoy_cluster_*` metrics select the same series."""
    return f"outbound|{port}|{subset}|{hostname}"


def effective_policy(routes: WaypointRoutes | None, port: int, subset: str) -> TrafficPolicy:
    """The traffic policy of (host, port, subset): the subset's port-level settings, else the
    subset's policy, else the host's port-level settings, else the host's policy (Istio merges
    each sub-message, loadBalancer/connectionPool/outlierDetection/tls/retryBudget, that way; the
    controller has already merged them per level, see controller/translate/routes.py)."""
    if routes is None:
        return TrafficPolicy()
    if subset:
        s = next((x for x in routes.subsets if x.name == subset), None)
        if s is not None:
            pp = next((p for p in s.port_policies if p.port == port), None)
            if pp is not None:
                return pp.policy
            if s.policy is not None:
                return s.policy
    pp = next((p for p in routes.port_policies if p.port == port), None)
    if pp is not None:
        return pp.policy
    return routes.policy or TrafficPolicy()


class Cluster:
    """One cluster's policy and state. The parts are built from the policy here, and each part is
    its own module (balancer, outlier, circuit breaker, retry budget)."""

    def __init__(self, key: ClusterKey, policy: TrafficPolicy, clock: Clock, rng: random.Random,
                 hostname: str = "") -> None:
        self.key = key
        self.hostname = hostname or key.service
        self.name = cluster_name(self.hostname, key.port, key.subset)
        self.policy = policy
        self.clock = clock
        self.rng = rng
        self.retries = RetryCircuit(policy, clock)  # retry budget / max_retries, retry and timeout stats

    # --- what the engine reports, per attempt -----------------------------------------------------

    def attempt_started(self, address: str) -> None:
        """A request (or a retry of one) was sent to `address`."""
        self.retries.request_started()

    def attempt_result(self, address: str, outcome: Outcome) -> None:
        """The attempt's outcome: its response status, or a local failure."""

    def attempt_ended(self, address: str) -> None:
        """The attempt's stream is over (its response ended, failed, or was abandoned)."""
        self.retries.request_ended()

    def stats(self) -> dict[str, float]:
        """Counters and gauges, named as Envoy's cluster stats without the `envoy_cluster_` prefix
        (`upstream_rq_retry`, `outlier_detection_ejections_active`, `circuit_breakers_default_cx_open`,
        ...); waypoint/telemetry/clusters.py exports them per cluster at scrape time, as gauges for
        the names in `GAUGES` and as counters for the rest. Each part adds its own."""
        out: dict[str, float] = {}
        out.update(self.retries.stats())
        return out

    def dump(self) -> dict[str, object]:
        """For the admin endpoint and `ambit waypoint status`."""
        return {"name": self.name, "stats": self.stats()}


class Clusters:
    """Every cluster the waypoint has sent to, by key; state survives config updates whose policy
    for the cluster is unchanged."""

    def __init__(self, clock: Clock, rng: random.Random) -> None:
        self.clock = clock
        self.rng = rng
        self._clusters: dict[ClusterKey, Cluster] = {}
        self._routes: Mapping[str, WaypointRoutes] = {}

    def update(self, routes_by_service: Mapping[str, WaypointRoutes]) -> None:
        """A new config: `routes_by_service` maps "ns/name" to the WaypointRoutes of its host."""
        self._routes = routes_by_service
        keep: dict[ClusterKey, Cluster] = {}
        for key, c in self._clusters.items():
            if effective_policy(routes_by_service.get(key.service), key.port, key.subset) == c.policy:
                keep[key] = c
        self._clusters = keep

    def get(self, service: str, port: int, subset: str = "", hostname: str = "") -> Cluster:
        key = ClusterKey(service, port, subset)
        c = self._clusters.get(key)
        if c is None:
            routes = self._routes.get(service)
            c = Cluster(key, effective_policy(routes, port, subset), self.clock, self.rng,
                        hostname or (routes.hostname if routes is not None else ""))
            self._clusters[key] = c
        return c

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(list(self._clusters.values()))

    def dump(self) -> list[dict[str, object]]:
        return [c.dump() for c in sorted(self._clusters.values(), key=lambda c: c.name)]
