"""A cluster's cap on concurrent retries, and its retry and timeout stats.

Envoy limits retries per cluster with its `retries` circuit-breaker resource: at most
`max_retries` retries outstanding at once (Istio `connectionPool.http.maxRetries`; unset or 0 in
Istio means its default, 2^32-1: effectively unlimited, istio/istio
pilot/pkg/networking/core/cluster_traffic_policy.go getDefaultCircuitBreakerThresholds), or, when a
retry budget is configured (Istio 1.27 DestinationRule `trafficPolicy.retryBudget`), at most
`max(min_retry_concurrency, percent/100 x (active + pending requests))`, and then `max_retries` is
ignored (envoyproxy/envoy api/envoy/config/cluster/v3/circuit_breaker.proto RetryBudget: percent
default 20, min_retry_concurrency default 3; source/common/upstream/resource_manager_impl.h
RetryBudgetImpl). A retry is outstanding from when it is granted until the next retry decision
for its request (see `waypoint.resilience.retry.RetryState`). With `budgetInterval` (Envoy's
`budget_interval`, source/common/upstream/resource_manager_impl.h RetryBudgetImpl: "a fixed window
inspired by tower.rs" tps_budget) the base is not the requests active now but the requests started
in the last `budgetInterval`, counted in buckets of a tenth of it (a bucket expires one interval
after it closes, as Envoy's expiry timers do). A refused retry counts
`upstream_rq_retry_overflow`, and the original failure goes downstream.

Active requests are the cluster's attempts in flight (started, not yet ended: waiting for a
connection, i.e. Envoy's pending, included), as the exchange reports them.

Linkerd's budgets (a ratio of retries to original requests over a window, plus a minimum rate)
bound the retry *rate*; Envoy's and Istio's bound retry *concurrency*. Ambit follows Istio; with
`budgetInterval` the base becomes a recent request *rate*, which is the closest Istio gets to
Linkerd's (and tower's) budgets.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from ambit.model import TrafficPolicy

UNLIMITED = 2**32 - 1

COUNTERS = ("upstream_rq_retry", "upstream_rq_retry_success", "upstream_rq_retry_overflow",
            "upstream_rq_retry_limit_exceeded", "upstream_rq_timeout", "upstream_rq_per_try_timeout",
            "retry_or_shadow_abandoned")


class RetryCircuit:
    """Concurrent retries of one cluster, against its budget (or max_retries); and the counters."""

    __slots__ = ("budget", "percent", "min_concurrency", "max_retries", "active_requests", "active_retries",
                 "counters", "interval", "clock", "_buckets", "_in_window")

    def __init__(self, policy: TrafficPolicy | None = None, clock: Callable[[], float] | None = None) -> None:
        p = policy or TrafficPolicy()
        self.budget = bool(p.retry_budget)
        self.percent = float(p.retry_budget_percent)
        self.min_concurrency = int(p.retry_budget_min_concurrency)
        self.max_retries = int(p.max_retries) if p.max_retries > 0 else UNLIMITED
        self.interval = float(p.retry_budget_interval) if self.budget else 0.0
        self.clock = clock
        self._buckets: deque[list[float]] = deque()     # [opened at, requests] per tenth of the interval
        self._in_window = 0
        self.active_requests = 0
        self.active_retries = 0
        self.counters = dict.fromkeys(COUNTERS, 0)

    def limit(self) -> int:
        """How many retries may be outstanding now."""
        if self.budget:
            base = self.requests_in_interval() if self.interval > 0 and self.clock is not None else self.active_requests
            return max(self.min_concurrency, int(self.percent / 100.0 * base))
        return self.max_retries

    def requests_in_interval(self) -> int:
        """Requests started in the last `interval` (with `budgetInterval`)."""
        assert self.clock is not None
        self._expire(self.clock())
        return self._in_window

    def _expire(self, now: float) -> None:
        """Drop the buckets that closed more than an interval ago (Envoy's expiry timers)."""
        width, b = self.interval / 10, self._buckets
        while b and b[0][0] + width + self.interval <= now:
            self._in_window -= int(b.popleft()[1])

    def can_retry(self) -> bool:
        return self.active_retries < self.limit()

    def retry_started(self) -> None:
        self.active_retries += 1

    def retry_ended(self) -> None:
        if self.active_retries > 0:
            self.active_retries -= 1

    def request_started(self) -> None:
        self.active_requests += 1
        if self.interval > 0 and self.clock is not None:
            now, b = self.clock(), self._buckets
            if b and now < b[-1][0] + self.interval / 10:
                b[-1][1] += 1
            else:               # a new bucket: expire old ones here too, or a cluster that never
                self._expire(now)   # retries would keep one per tenth of an interval forever
                b.append([now, 1])
            self._in_window += 1

    def request_ended(self) -> None:
        if self.active_requests > 0:
            self.active_requests -= 1

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] += n

    def stats(self) -> dict[str, float]:
        out: dict[str, float] = dict(self.counters)
        limit = self.limit()
        out["circuit_breakers_default_rq_retry_open"] = 1 if self.active_retries >= limit else 0
        out["circuit_breakers_default_remaining_retries"] = max(0, limit - self.active_retries)
        return out
