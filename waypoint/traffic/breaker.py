"""A cluster's circuit breaker: the connection-pool limits of its DestinationRule and the counters
they are checked against. Pure: no sockets, no clock; the pool (waypoint/http/pool.py) asks it
before it opens a connection, queues a request or binds one to a connection, and tells it when
each of those ends.

Semantics are Envoy's, as Istio configures them (istio/istio
pilot/pkg/networking/core/cluster_traffic_policy.go `applyConnectionPool`; envoyproxy/envoy
docs/root/intro/arch_overview/upstream/circuit_breaking.rst, source/common/conn_pool/conn_pool_base.cc):

- the limits are per cluster: every endpoint of the cluster shares them (the proto says "per host";
  Envoy's thresholds are per cluster and priority, and Ambit has one priority, `default`);
- `tcp.maxConnections` → max_connections: connections open *or being opened* to the cluster;
- `http.http1MaxPendingRequests` → max_pending_requests: requests waiting for a connection (also
  while the connection they will use is being opened);
- `http.http2MaxRequests` → max_requests: requests bound to a connection (stream), any protocol;
- a request over a limit fails at once (503 UO, `x-envoy-overloaded: true`): nothing waits beyond
  max_pending_requests.

Unset fields: Istio sets every threshold it does not get to 2^32-1, i.e. unlimited. Ambit instead
falls back to the node-wide pool settings (waypoint/http/settings.py: 1024 each, Envoy's own
defaults), so an unconfigured cluster is still bounded; a field set in the DestinationRule replaces
the node default, larger or smaller (see `Limits.of`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ambit.model import TrafficPolicy


@dataclass(frozen=True, slots=True)
class Limits:
    """The effective pool settings of one cluster."""

    max_connections: int = 1024
    max_pending: int = 1024
    max_requests: int = 1024
    max_requests_per_connection: int = 0    # 0: unlimited
    connect_timeout: float = 10.0           # seconds (Istio's default connectTimeout)
    idle_timeout: float = 3600.0            # seconds an upstream connection may carry no request
    h2_upgrade: bool = False                # speak h2c to HTTP/1.1 endpoints
    # No node default for the fields below (0, False: off, as before); the pool and the h2 client
    # apply them (waypoint/traffic/lifetime.py has the semantics of the duration and the keepalive).
    max_connection_duration: float = 0.0    # seconds after which an upstream connection is drained
    max_concurrent_streams: int = 0         # streams per h2 upstream connection, under the server's limit
    h2_keepalive_interval: float = 0.0      # seconds between HTTP/2 PINGs on h2 upstream connections
    h2_keepalive_timeout: float = 0.0       # seconds to wait for a PING ACK before the connection is closed
    use_client_protocol: bool = False       # h2 upstream iff the client spoke h2 (over the port and h2_upgrade)

    @classmethod
    def of(cls, policy: TrafficPolicy | None, defaults: Limits) -> Limits:
        """`defaults` with every connectionPool field the policy sets (the model's zero = unset)."""
        if policy is None:
            return defaults
        p = policy
        return replace(
            defaults,
            max_connections=p.max_connections or defaults.max_connections,
            max_pending=p.http1_max_pending_requests or defaults.max_pending,
            max_requests=p.http2_max_requests or defaults.max_requests,
            max_requests_per_connection=p.max_requests_per_connection or defaults.max_requests_per_connection,
            connect_timeout=p.connect_timeout or defaults.connect_timeout,
            idle_timeout=p.http_idle_timeout or defaults.idle_timeout,
            h2_upgrade=p.h2_upgrade or defaults.h2_upgrade,
            max_connection_duration=p.max_connection_duration or defaults.max_connection_duration,
            max_concurrent_streams=p.max_concurrent_streams or defaults.max_concurrent_streams,
            h2_keepalive_interval=p.h2_keepalive_interval or defaults.h2_keepalive_interval,
            h2_keepalive_timeout=p.h2_keepalive_timeout or defaults.h2_keepalive_timeout,
            use_client_protocol=p.use_client_protocol or defaults.use_client_protocol,
        )


class Breaker:
    """Counters and limits of one cluster. Each `try_*` either admits (and counts the resource as
    taken) or refuses (and counts the overflow); the matching `*_done` gives the resource back."""

    def __init__(self, policy: TrafficPolicy | None = None) -> None:
        self.policy = policy
        self.limits = Limits.of(policy, Limits())
        self._defaults: Limits | None = None
        # gauges
        self.cx_active = 0              # connections open or opening (counted against max_connections)
        self.rq_pending_active = 0      # requests waiting for a connection
        self.rq_active = 0              # requests bound to a connection
        # counters (Envoy's names without the upstream_ prefix)
        self.cx_total = 0
        self.cx_overflow = 0            # a connection was needed but max_connections was reached
        self.cx_connect_fail = 0
        self.cx_connect_timeout = 0
        self.cx_max_requests = 0        # closed after max_requests_per_connection requests
        self.cx_idle_timeout = 0
        self.cx_max_duration_reached = 0    # drained at max_connection_duration (counted then, as Envoy does)
        self.h2_keepalive_timeout = 0       # closed: no ACK to an HTTP/2 keepalive PING in time
        self.rq_total = 0
        self.rq_pending_total = 0
        self.rq_pending_overflow = 0    # refused: pending queue full, or max_requests reached

    def configure(self, defaults: Limits) -> Limits:
        """The limits under the node-wide `defaults` (computed once per defaults object)."""
        if defaults is not self._defaults:
            self._defaults = defaults
            self.limits = Limits.of(self.policy, defaults)
        return self.limits

    # --- connections ------------------------------------------------------------------------------

    def try_connect(self) -> bool:
        """May a new connection be opened? Counts it (as opening) when it may."""
        if self.cx_active >= self.limits.max_connections:
            self.cx_overflow += 1
            return False
        self.cx_active += 1
        self.cx_total += 1
        return True

    def connect_failed(self, timeout: bool = False) -> None:
        """A connection `try_connect` admitted did not open."""
        self.cx_connect_fail += 1
        if timeout:
            self.cx_connect_timeout += 1
        self.connection_closed()

    def connection_closed(self, why: str = "") -> None:
        """A counted connection closed; `why` names an Envoy close counter (`max_requests`,
        `idle_timeout`, `keepalive_timeout`) when the pool closed it for that reason."""
        self.cx_active = max(0, self.cx_active - 1)
        if why == "max_requests":
            self.cx_max_requests += 1
        elif why == "idle_timeout":
            self.cx_idle_timeout += 1
        elif why == "keepalive_timeout":
            self.h2_keepalive_timeout += 1

    def max_duration_reached(self) -> None:
        """A connection reached max_connection_duration and is being drained (Envoy counts it then,
        not when it closes after its last request)."""
        self.cx_max_duration_reached += 1

    # --- requests ---------------------------------------------------------------------------------

    def try_pending(self) -> bool:
        """May a request wait for a connection? Counts it as pending when it may."""
        if self.rq_pending_active >= self.limits.max_pending:
            self.rq_pending_overflow += 1
            return False
        self.rq_pending_active += 1
        self.rq_pending_total += 1
        return True

    def pending_done(self) -> None:
        self.rq_pending_active = max(0, self.rq_pending_active - 1)

    def try_request(self) -> bool:
        """May a request be bound to a connection (become active)? Envoy checks max_requests when
        it attaches a stream to a connection and counts a refusal as upstream_rq_pending_overflow."""
        if self.rq_active >= self.limits.max_requests:
            self.rq_pending_overflow += 1
            return False
        self.rq_active += 1
        self.rq_total += 1
        return True

    def request_done(self) -> None:
        self.rq_active = max(0, self.rq_active - 1)

    def connection_spent(self, requests: int) -> bool:
        """Has a connection that carried `requests` reached max_requests_per_connection?"""
        n = self.limits.max_requests_per_connection
        return n > 0 and requests >= n

    # --- what is visible --------------------------------------------------------------------------

    @property
    def idle(self) -> bool:
        """Nothing counted: the breaker can be dropped without losing state."""
        return not (self.cx_active or self.rq_pending_active or self.rq_active)

    def stats(self) -> dict[str, float]:
        """Envoy's cluster stats for the circuit breaker and the pool (names as Istio exports them,
        without `envoy_cluster_`): `circuit_breakers_default_*_open` is 1 while the limit is
        reached, `circuit_breakers_default_remaining_*` what is left (Istio enables
        track_remaining)."""
        lim = self.limits
        return {
            "circuit_breakers_default_cx_open": int(self.cx_active >= lim.max_connections),
            "circuit_breakers_default_rq_pending_open": int(self.rq_pending_active >= lim.max_pending),
            "circuit_breakers_default_rq_open": int(self.rq_active >= lim.max_requests),
            "circuit_breakers_default_remaining_cx": max(0, lim.max_connections - self.cx_active),
            "circuit_breakers_default_remaining_pending": max(0, lim.max_pending - self.rq_pending_active),
            "circuit_breakers_default_remaining_rq": max(0, lim.max_requests - self.rq_active),
            "upstream_cx_active": self.cx_active,
            "upstream_rq_active": self.rq_active,
            "upstream_rq_pending_active": self.rq_pending_active,
            "upstream_cx_total": self.cx_total,
            "upstream_cx_overflow": self.cx_overflow,
            "upstream_cx_connect_fail": self.cx_connect_fail,
            "upstream_cx_connect_timeout": self.cx_connect_timeout,
            "upstream_cx_max_requests": self.cx_max_requests,
            "upstream_cx_idle_timeout": self.cx_idle_timeout,
            "upstream_cx_max_duration_reached": self.cx_max_duration_reached,
            "http2_keepalive_timeout": self.h2_keepalive_timeout,
            "upstream_rq_total": self.rq_total,
            "upstream_rq_pending_total": self.rq_pending_total,
            "upstream_rq_pending_overflow": self.rq_pending_overflow,
        }

    def thresholds(self) -> dict[str, object]:
        """The effective limits, for the admin view."""
        lim = self.limits
        return {"max_connections": lim.max_connections, "max_pending_requests": lim.max_pending,
                "max_requests": lim.max_requests, "max_requests_per_connection": lim.max_requests_per_connection,
                "connect_timeout": lim.connect_timeout, "idle_timeout": lim.idle_timeout,
                "h2_upgrade": lim.h2_upgrade, "max_connection_duration": lim.max_connection_duration,
                "max_concurrent_streams": lim.max_concurrent_streams, "use_client_protocol": lim.use_client_protocol,
                "http2_keepalive": {"interval": lim.h2_keepalive_interval, "timeout": lim.h2_keepalive_timeout}}
