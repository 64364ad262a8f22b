"""Clusters: what Envoy calls a cluster, here one (Service, port, subset) the waypoint sends to.

A cluster holds the DestinationRule traffic policy that applies to it (port level over subset over
host, as Istio merges them: `effective_policy`) and the state that policy drives across requests:
its load balancer, its outlier detector, its circuit breaker (connection-pool limits) and its retry
budget. Endpoints of one cluster share that state, which is why it is per cluster and not per
endpoint.

`Clusters` keeps one `Cluster` per key across config updates: a cluster whose policy did not change
keeps its state (ejections, counters, the hash ring), one whose policy changed is rebuilt, and one
whose Service, Service port or subset is gone is dropped at the next update, as Envoy removes a
cluster CDS no longer sends (its state and its `envoy_cluster_*` series go with it; a Service
created again later starts afresh). A cluster of a Service without any DestinationRule has the
default policy, which a deleted Service's "policy" also is: the policy alone cannot tell it is gone.

The HTTP engine reports each attempt to the cluster of its `UpstreamTarget` (see
`waypoint.http.attempt`): `attempt_started`, `attempt_result` (once the outcome is known: a
response status, or a local failure) and `attempt_ended` (the attempt's stream is over). The cluster
passes them to the parts that care (least-request counts, outlier detection).

Pure: the clock and the random source are injected.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from ambit.model import Service, TrafficPolicy, WaypointRoutes
from waypoint.http.attempt import Outcome
from waypoint.request import Downstream, RequestHead
from waypoint.resilience.budget import RetryCircuit
from waypoint.traffic.balancer import CONSISTENT_HASH, DEFAULT, HashBalancer, simple_balancer
from waypoint.traffic.breaker import Breaker
from waypoint.traffic.hashkey import HashKey, HashPolicy
from waypoint.traffic.locality import (
    NO_HOSTS,
    NONE,
    Place,
    Plan,
    Setting,
    health,
    pick_hosts,
    plan,
    retry_priorities,
)
from waypoint.traffic.outlier import OutlierConfig, OutlierDetector
from waypoint.traffic.warmup import SlowStart

log = logging.getLogger("ambit.waypoint.cluster")

Clock = Callable[[], float]

# Stats that go up and down (Envoy gauges); every other stat a cluster reports is a counter.
GAUGES = frozenset({
    "upstream_rq_active", "upstream_rq_pending_active", "upstream_cx_active",
    "circuit_breakers_default_cx_open", "circuit_breakers_default_rq_pending_open",
    "circuit_breakers_default_rq_open", "circuit_breakers_default_rq_retry_open",
    "outlier_detection_ejections_active", "membership_healthy", "membership_total",
    "circuit_breakers_default_remaining_cx", "circuit_breakers_default_remaining_pending",
    "circuit_breakers_default_remaining_rq", "circuit_breakers_default_remaining_retries",
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
                 hostname: str = "", own: Place = ("", {}), distribution: str = "",
                 mesh_locality: TrafficPolicy | None = None) -> None:
        self.key = key
        self.hostname = hostname or key.service
        self.name = cluster_name(self.hostname, key.port, key.subset)
        self.policy = policy
        self.clock = clock
        self.rng = rng
        # load balancing (balancer.py, hashring.py, maglev.py, hashkey.py, warmup.py)
        self.lb = policy.lb if policy.lb in ("ROUND_ROBIN", "RANDOM", CONSISTENT_HASH) else DEFAULT
        self.hash_policy = HashPolicy.from_policy(policy)
        self.hasher = HashBalancer(policy.hash_ring, policy.hash_ring_size) if self.hash_policy else None
        self.balancer = simple_balancer(self.lb, rng)
        self.warmup = SlowStart(policy.warmup_duration, policy.warmup_aggression, policy.warmup_min_percent) \
            if policy.warmup_duration > 0 and self.lb in ("ROUND_ROBIN", "LEAST_REQUEST") else None
        self.active: dict[str, int] = {}        # active requests per endpoint (least request, /clusters)
        self.hosts: tuple[str, ...] = ()        # the endpoints of the last pick
        # their weights (ServiceEntry endpoints' `weight`), None when all are equal: weighted round
        # robin and least request and a weighted hash table, as Envoy's; RANDOM draws by them
        self.weights: dict[str, int] | None = None
        self._weight_list: tuple[int, ...] | None = None     # `weights` in `hosts` order, for the hash table
        self.basis: tuple[object, object] | None = None  # what the waypoint last computed `hosts` from
        self.panics = 0
        # locality (locality.py): None unless it can change a pick, so the request path pays one test.
        # `distribution`: the Service's trafficDistribution, which prioritises unless the rule's own
        # localityLbSetting overrides it, and which makes the cluster count its unready endpoints
        # (`unready`, from the places `set_hosts` gets) as unhealthy hosts, with panic off, as Istio
        self.distribution = distribution
        self.locality = Setting.of(policy, distribution, mesh_locality)     # mesh_locality: MeshConfig's
        self.own = own                          # the waypoint's (locality, labels)
        self.plan: Plan | None = None           # for `hosts`, when locality changes something
        self.unready: tuple[str, ...] = ()      # endpoints not ready, only with `distribution`
        # outlier detection (outlier.py); Istio sets no panic threshold for a Service with
        # trafficDistribution ("Envoy will send traffic to Unready pods" otherwise), minHealthPercent or not
        cfg = OutlierConfig.from_policy(policy)
        if cfg is not None and distribution:
            cfg = dataclasses.replace(cfg, min_health_percent=0)
        self.outlier = OutlierDetector(cfg, clock(), self._outlier_event) if cfg is not None else None
        self.panic_percent = cfg.min_health_percent if cfg is not None else 0
        self.healthy = health(NO_HOSTS, self.outlier.is_ejected if self.outlier is not None else None)
        self.breaker = Breaker(policy)      # connection-pool limits and counters (waypoint/http/pool.py)
        self.retries = RetryCircuit(policy, clock)  # retry budget / max_retries, retry and timeout stats

    # --- load balancing ---------------------------------------------------------------------------

    def hash_key(self, head: RequestHead | None, down: Downstream | None) -> HashKey | None:
        """The request's hash key when this cluster balances by consistent hash, else None."""
        return self.hash_policy.key(head, down, self.rng) if self.hash_policy is not None else None

    def choose(self, hosts: Sequence[str], exclude: frozenset[str] = frozenset(),
               key: HashKey | None = None, places: Sequence[Place] | None = None,
               tried: Sequence[str] = ()) -> str | None:
        """One of `hosts` (the cluster's ready endpoints, as addresses) for a request: not ejected
        (unless the cluster is in panic: fewer endpoints in service than `minHealthPercent`), in
        the locality priority (or `distribute` locality) drawn when locality balancing applies
        (`places[i]`: the locality and labels of `hosts[i]`), not in `exclude` (addresses already
        tried, for retries; ignored when nothing else is left), then by the cluster's balancer.
        `tried`: for a retry of a route with `retryRemoteLocalities`, the addresses of its tries so
        far, in order: the priority is drawn without the ones they went to (locality.py
        `retry_priorities`), except under consistent hashing, whose Envoy balancers (ring hash,
        Maglev) draw the priority without consulting the retry priority. None when every endpoint
        is ejected (503 UH, as Envoy)."""
        if not hosts:
            return None
        now = self.clock()
        if tuple(hosts) != self.hosts:
            self.set_hosts(hosts, places)
        usable: Sequence[str] | None = hosts
        if self.outlier is not None:
            self.outlier.sweep(now)
            if self.plan is not None:   # priorities, with Envoy's per-priority panic
                usable = self._by_locality(self.plan, tried)
            elif self.outlier.panic(list(hosts)):
                self.panics += 1
            else:
                usable = [h for h in hosts if not self.outlier.is_ejected(h)]
            if not usable:
                return None
        elif self.plan is not None:     # the only cost of locality to a cluster it does not apply to
            usable = self._by_locality(self.plan, tried)
            if not usable:
                return None
        if exclude:
            usable = [h for h in usable if h not in exclude] or usable
        if self.hasher is not None:
            h = key.value if key is not None and key.value is not None else self.rng.getrandbits(64)
            return self.hasher.pick(hosts, usable, h, self._weight_list)
        weights: list[float] | None = None
        if self.weights is not None:
            weights = [self.weights.get(h, 1) for h in usable]
        if self.warmup is not None and self.warmup.warming(usable, now):
            factors = [self.warmup.factor(h, now) for h in usable]
            weights = factors if weights is None else [w * f for w, f in zip(weights, factors, strict=True)]
        return self.balancer.pick(usable, self.active, weights)

    def _by_locality(self, p: Plan, tried: Sequence[str]) -> list[str] | None:
        """The hosts of the priority (or `distribute` locality) drawn: `healthy` ones (not ejected,
        and ready: trafficDistribution counts the unready endpoints), or all of it in panic; a
        retry with `tried` leaves the priorities tried (not under consistent hashing)."""
        ok = self.healthy
        return pick_hosts(p, ok, self.rng.random, self.panic_percent, self._panicked,
                          retry_priorities(p, tried, ok) if tried and self.hasher is None else NONE)

    def ejected(self, address: str) -> bool:
        """Whether outlier detection has `address` ejected now (a session pinned to it re-balances,
        as Envoy's stateful session overrides only to a healthy host)."""
        if self.outlier is None:
            return False
        self.outlier.sweep(self.clock())
        return self.outlier.is_ejected(address)

    def _panicked(self) -> None:
        self.panics += 1

    def set_hosts(self, hosts: Sequence[str], places: Sequence[Place] | None = None) -> None:
        """The cluster's endpoints now (Envoy's membership update): outlier state and slow-start
        windows of endpoints gone are dropped, the locality plan is rebuilt (from `places`, the
        endpoints' localities and labels; without them, no locality balancing; for a Service with
        trafficDistribution, a `locality.Places` also names the endpoints not ready, which count
        as unhealthy). `choose` sees each request's endpoints; the waypoint also calls this on each
        config update, so a pod deleted (or its address given to a new pod) between requests leaves
        no ejection behind in the stats, /clusters or the new pod."""
        self.hosts = tuple(hosts)
        weights = getattr(places, "weights", ())
        if weights and len(weights) == len(self.hosts):
            self.weights, self._weight_list = dict(zip(self.hosts, weights, strict=True)), tuple(weights)
        else:
            self.weights = self._weight_list = None
        self.plan = None
        down = getattr(places, "unready", ()) if self.distribution else ()
        self.unready = tuple(a for a, _ in down)
        if self.locality is not None and places is not None and len(places) == len(self.hosts):
            self.plan = plan(self.locality, self.own[0], self.own[1], self.hosts, places, down)
        self.healthy = health(self.plan.unready if self.plan is not None else NO_HOSTS,
                              self.outlier.is_ejected if self.outlier is not None else None)
        if self.outlier is not None:
            self.outlier.set_hosts(self.hosts)
        if self.warmup is not None:
            self.warmup.observe(self.hosts, self.clock())

    # --- what the engine reports, per attempt -----------------------------------------------------

    def attempt_started(self, address: str) -> None:
        """A request (or a retry of one) was sent to `address`."""
        self.active[address] = self.active.get(address, 0) + 1
        self.retries.request_started()

    def attempt_result(self, address: str, outcome: Outcome) -> None:
        """The attempt's outcome: its response status, or a local failure."""
        if self.outlier is not None:
            self.outlier.result(address, outcome, self.clock())

    def attempt_ended(self, address: str) -> None:
        """The attempt's stream is over (its response ended, failed, or was abandoned)."""
        self.retries.request_ended()
        n = self.active.get(address, 0) - 1
        if n > 0:
            self.active[address] = n
        else:
            self.active.pop(address, None)

    def connected(self, address: str) -> None:
        """An opaque (L4) connection to `address` succeeded: clears its local-origin failures."""
        if self.outlier is not None:
            self.outlier.local_success(address)

    def _outlier_event(self, what: str, address: str, reason: str, seconds: float) -> None:
        if what == "eject":
            log.warning("outlier detection: cluster %s: endpoint %s ejected (%s, ejection %d, for %.3gs)",
                        self.name, address, reason, self.outlier.hosts[address].ejections if self.outlier else 0,
                        seconds)
        else:
            log.info("outlier detection: cluster %s: endpoint %s returned to service", self.name, address)

    def stats(self) -> dict[str, float]:
        """Counters and gauges, named as Envoy's cluster stats without the `envoy_cluster_` prefix
        (`upstream_rq_retry`, `outlier_detection_ejections_active`, `circuit_breakers_default_cx_open`,
        ...); waypoint/telemetry/clusters.py exports them per cluster at scrape time, as gauges for
        the names in `GAUGES` and as counters for the rest. Each part adds its own."""
        # the unready endpoints of a Service with trafficDistribution are members, never healthy (Envoy's EDS health)
        out: dict[str, float] = {"lb_healthy_panic": self.panics, "membership_total": len(self.hosts) + len(self.unready)}
        if self.outlier is not None:
            self.outlier.sweep(self.clock())
            out["outlier_detection_ejections_active"] = self.outlier.ejected_count
            out.update({f"outlier_detection_{k}": v for k, v in self.outlier.counters.items()})
        else:       # Envoy keeps the outlier stats of every cluster, at 0 without outlier detection
            out["outlier_detection_ejections_active"] = 0
        out["membership_healthy"] = len(self.hosts) - (self.outlier.ejected_count if self.outlier else 0)
        out.update(self.breaker.stats())
        out.update(self.retries.stats())
        return out

    def dump(self) -> dict[str, object]:
        """For the admin endpoint and `ambit waypoint status`: the stats, the load balancer, the
        connection-pool limits in force (what the DestinationRule gave, or the defaults), and each
        endpoint's active requests and outlier state (ejected, for how much longer, how often)."""
        now = self.clock()
        stats = self.stats()
        eps: list[dict[str, object]] = []
        # locality (locality.py): each endpoint's priority (failover) or locality weight (distribute)
        place: dict[str, object] = {}
        if self.plan is not None:
            for i, group in enumerate(self.plan.groups):
                for h in group:
                    place[h] = round(self.plan.weights[i], 3) if self.plan.weights else i
            if self.plan.weights:       # distribute: endpoints in no `to` get nothing
                place.update({h: 0 for h in self.hosts if h not in place})
        key = "locality_weight" if self.plan is not None and self.plan.weights else "priority"
        down = set(self.unready)
        for a in sorted(set(self.hosts) | set(self.active) | down):
            e: dict[str, object] = {"address": a, "active": self.active.get(a, 0)}
            if a in down:       # Envoy's /clusters health flag /failed_eds_health
                e["ready"] = False
            if a in place:
                e[key] = place[a]
            if self.outlier is not None:
                s = self.outlier.hosts.get(a)
                back = self.outlier.returns_at(a)
                e.update(ejected=back is not None, ejections=s.ejections if s else 0,
                         ejected_for=round(max(back - now, 0.0), 3) if back is not None else 0.0)
            if self.warmup is not None:
                e["warmup_factor"] = round(self.warmup.factor(a, now), 3)
            if self.weights is not None and a in self.weights:
                e["weight"] = self.weights[a]
            eps.append(e)
        lb = self.lb if self.hasher is None else f"{CONSISTENT_HASH}/{self.hasher.kind}"
        return {"name": self.name, "lb": lb, "outlier_detection": self.outlier is not None,
                "limits": self.breaker.thresholds(), "endpoints": eps, "stats": stats}


class Clusters:
    """Every cluster the waypoint has sent to, by key; state survives config updates whose policy
    for the cluster is unchanged."""

    def __init__(self, clock: Clock, rng: random.Random) -> None:
        self.clock = clock
        self.rng = rng
        # keyed by the plain (service, port, subset) tuple: `get` runs for every request, and a
        # tuple is hashed and compared in C where a ClusterKey costs ~60 bytecodes (§65)
        self._clusters: dict[tuple[str, int, str], Cluster] = {}
        self._routes: Mapping[str, WaypointRoutes] = {}
        self._services: Mapping[str, Service] = {}
        self.mesh_locality: TrafficPolicy | None = None     # MeshConfig localityLbSetting (None: unset)
        self.own: Place = ("", {})      # the waypoint's locality and labels (its own Workload's)

    def update(self, routes_by_service: Mapping[str, WaypointRoutes], services: Mapping[str, Service],
               mesh_locality: TrafficPolicy | None = None) -> None:
        """A new config: `routes_by_service` maps "ns/name" to the WaypointRoutes of its host,
        `services` every Service (and ServiceEntry) by "ns/name", `mesh_locality` the mesh-wide
        localityLbSetting. A cluster stays while its Service has its port (and the DestinationRule
        its subset) and its policy, trafficDistribution and the mesh's setting are unchanged."""
        self._routes = routes_by_service
        self._services = services
        if mesh_locality != self.mesh_locality:
            self.mesh_locality = mesh_locality
            self._clusters = {}
            return
        keep: dict[tuple[str, int, str], Cluster] = {}
        for t, c in self._clusters.items():
            key = c.key
            svc = services.get(key.service)
            if svc is None or not any(p.port == key.port for p in svc.ports):
                continue
            routes = routes_by_service.get(key.service)
            if key.subset and (routes is None or all(s.name != key.subset for s in routes.subsets)):
                continue
            if effective_policy(routes, key.port, key.subset) == c.policy and svc.traffic_distribution == c.distribution:
                keep[t] = c
        self._clusters = keep

    def get(self, service: str, port: int, subset: str = "", hostname: str = "") -> Cluster:
        c = self._clusters.get((service, port, subset))
        if c is None:
            routes = self._routes.get(service)
            svc = self._services.get(service)
            c = Cluster(ClusterKey(service, port, subset), effective_policy(routes, port, subset), self.clock,
                        self.rng, hostname or (routes.hostname if routes is not None else ""), self.own,
                        svc.traffic_distribution if svc is not None else "", self.mesh_locality)
            self._clusters[(service, port, subset)] = c
        return c

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(list(self._clusters.values()))

    def dump(self) -> list[dict[str, object]]:
        return [c.dump() for c in sorted(self._clusters.values(), key=lambda c: c.name)]
