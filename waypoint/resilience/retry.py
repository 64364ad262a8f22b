"""Retries: which outcomes are retried, how many times, after which backoff (Envoy's router
retry policy, as Istio configures it).

Sources:
- istio/istio pilot/pkg/networking/core/route/retry/retry.go: a route without `retries` gets
  `DEFAULT` (num_retries 2, i.e. up to 3 tries; retryOn
  `connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes` with no status codes
  since Istio 1.24, so a 503 answer is *not* retried by default; the previous-hosts predicate);
  `attempts: 0` disables retries; integers in `retryOn` are status codes and add
  `retriable-status-codes`; `backoff` is the base interval; `retryRemoteLocalities: true` adds the
  retry priority `envoy.retry_priorities.previous_priorities` with update_frequency 2 (the cluster
  does it: waypoint/traffic/locality.py `retry_priorities`).
- istio/istio pilot/pkg/config/kube/gateway/conversion.go: an HTTPRoute `retry` becomes retryOn
  `connect-failure,refused-stream,unavailable,cancelled` plus its `codes`, attempts default 2.
  Ambit adds `reset` (controller.translate.routes.GW_RETRY_ON) and keeps its `backoff` a minimum
  (`RetryPolicy.min_backoff`), as Gateway API's HTTPRouteRetry defines them.
- envoyproxy/envoy source/common/router/retry_state_impl.cc: `wouldRetryFromHeaders` (5xx,
  gateway-error 502/503/504, retriable-4xx = 409, retriable-status-codes, gRPC status in the head;
  never an `x-envoy-overloaded` answer), `wouldRetryFromReset` (5xx / gateway-error / reset retry
  every reset, a per-try timeout included; refused-stream only REFUSED_STREAM; connect-failure only
  connection failures), `shouldRetry` (the order: success accounting, limit, circuit breaker),
  JitteredBackOffStrategy (next = random % interval, interval doubling up to max = 10 x base);
  a response carrying `x-envoy-ratelimited` is retried only under `envoy-ratelimited`, whatever its
  status; `reset-before-request` retries a failure only while no try of the request has sent a
  byte upstream (the router's sticky `upstream_request_started_`).

Which retryOn values exist is Istio's list (`ambit.resilience`, which the controller validates
against); of those, `retriable-headers` and `http3-post-connect-failure` are not applied here
(`RetryPolicy.unknown`, warned about by `ambit apply`).

`RetryState` is the per-request state machine; the cluster-wide limit (retry budget or
max_retries) is a `waypoint.resilience.budget.RetryCircuit` passed in. Pure: the random source is
injected; the exchange drives the timers.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ambit.model import Retry
from ambit.resilience import RETRY_ON_APPLIED, RETRY_ON_GRPC

# retryOn conditions Ambit honours (Envoy's x-envoy-retry-on and x-envoy-retry-grpc-on values)
GRPC_ON = RETRY_ON_GRPC
KNOWN_ON = RETRY_ON_APPLIED

DEFAULT_ON = frozenset({"connect-failure", "refused-stream", "unavailable", "cancelled", "retriable-status-codes"})
BASE_INTERVAL = 0.025           # Envoy's upstream.base_retry_backoff_ms default

# Failure kinds (`would_retry_failure`)
CONNECT_FAILURE = "connect-failure"
RESET = "reset"
REFUSED_STREAM = "refused-stream"
PER_TRY_TIMEOUT = "per-try-timeout"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    num_retries: int                            # retries after the first try (Istio `attempts`)
    retry_on: frozenset[str] = DEFAULT_ON
    codes: frozenset[int] = frozenset()         # retriable-status-codes
    base_interval: float = BASE_INTERVAL
    ignore_previous_hosts: bool = True          # Envoy's previous_hosts retry host predicate
    unknown: tuple[str, ...] = ()               # retryOn values not applied (`ambit apply` warns)
    remote_localities: bool = False             # Envoy's previous_priorities (update_frequency 2)
    min_backoff: bool = False                   # Gateway API: every wait is at least base_interval

    @property
    def max_interval(self) -> float:
        return self.base_interval * 10

    @property
    def grpc_codes(self) -> frozenset[str]:
        return frozenset(GRPC_ON[c] for c in self.retry_on if c in GRPC_ON)


DEFAULT = RetryPolicy(2)
DISABLED = RetryPolicy(0)


def compile_retry(r: Retry | None) -> RetryPolicy | None:
    """The retry policy of a route's `retries`. None (a route without `retries`) stays None: the
    exchange applies `DEFAULT`, Istio's default policy, as for a Service's default route;
    `attempts: 0` gives `DISABLED`."""
    if r is None:
        return None
    if r.attempts <= 0:
        return DISABLED
    on: set[str] = set()
    codes = {int(c) for c in r.codes if 400 <= int(c) <= 599}
    unknown = []
    for part in r.retry_on:
        part = part.strip()
        if not part:
            continue
        if part.isascii() and part.isdigit():     # (isdigit alone takes "²": int() raises)
            codes.add(int(part))
        elif part in KNOWN_ON:
            on.add(part)
        else:
            unknown.append(part)
    if not on and not unknown:
        on = set(DEFAULT_ON)    # Istio keeps the default retryOn when none is given
    if codes:
        on.add("retriable-status-codes")
    return RetryPolicy(r.attempts, frozenset(on), frozenset(codes), r.backoff or BASE_INTERVAL,
                       r.ignore_previous_hosts, tuple(unknown), remote_localities=r.remote_localities,
                       min_backoff=r.min_backoff)


def would_retry_response(p: RetryPolicy, status: int, grpc_status: str = "", overloaded: bool = False,
                         ratelimited: bool = False) -> bool:
    """Envoy's wouldRetryFromHeaders: is this response head worth another try? `overloaded`,
    `ratelimited`: it carries `x-envoy-overloaded` (never retried) or `x-envoy-ratelimited` (an
    upstream Envoy's rate limit: retried under `envoy-ratelimited` only, whatever its status)."""
    if overloaded:
        return False
    on = p.retry_on
    if ratelimited:
        return "envoy-ratelimited" in on
    if "5xx" in on and 500 <= status <= 599:
        return True
    if "gateway-error" in on and status in (502, 503, 504):
        return True
    if "retriable-4xx" in on and status == 409:
        return True
    if "retriable-status-codes" in on and status in p.codes:
        return True
    return bool(grpc_status) and grpc_status in p.grpc_codes


def would_retry_failure(p: RetryPolicy, kind: str, started: bool = True) -> bool:
    """Envoy's wouldRetryFromReset: is this local failure (`CONNECT_FAILURE`, `RESET`,
    `REFUSED_STREAM`, `PER_TRY_TIMEOUT`) worth another try? `started`: a try of this request (this
    one or an earlier one) sent its head upstream; `reset-before-request` retries only before."""
    on = p.retry_on
    if "5xx" in on or "gateway-error" in on or "reset" in on:
        return True
    if not started and "reset-before-request" in on:
        return True
    if kind == REFUSED_STREAM:
        return "refused-stream" in on
    return kind == CONNECT_FAILURE and "connect-failure" in on


class Backoff:
    """Envoy's JitteredBackOffStrategy: the n-th delay is uniform in [0, min(base * 2^(n-1), max)).
    `floor` (Gateway API's `retry.backoff`, a minimum): uniform in [floor, min(base * 2^(n-1),
    max)) instead, so the first delay is the floor itself."""

    __slots__ = ("base", "max", "rng", "floor", "_next")

    def __init__(self, base: float, maximum: float, rng: random.Random, floor: float = 0.0) -> None:
        self.base, self.max, self.rng, self.floor = base, maximum, rng, floor
        self._next = base

    def next(self) -> float:
        interval = self._next
        self._next = interval * 2 if interval < self.max / 2 else self.max
        if self.floor:
            return self.floor + self.rng.random() * max(0.0, min(interval, self.max) - self.floor)
        return min(self.rng.random() * interval, self.max)


# RetryState.decide verdicts
RETRY, NO, LIMIT, OVERFLOW = "retry", "no", "limit", "overflow"


class RetryState:
    """One request's retries. `decide(would_retry)` after each try's outcome returns RETRY (and
    `delay`, the backoff before the next try), NO, LIMIT (retries exhausted: response flag URX) or
    OVERFLOW (the cluster's retry budget / max_retries refused: UO). `end()` when the request ends.

    Mirrors Envoy's shouldRetry: a retry counts in the circuit from when it is granted until the
    next decision (or the end); a decision not to retry after a granted retry counts
    `upstream_rq_retry_success`."""

    __slots__ = ("policy", "circuit", "left", "backoff", "armed", "delay", "retries", "tried", "started")

    def __init__(self, policy: RetryPolicy, circuit: object, rng: random.Random) -> None:
        self.policy = policy
        self.circuit = circuit          # waypoint.resilience.budget.RetryCircuit (or None: no limit, no stats)
        self.left = policy.num_retries
        self.backoff = Backoff(policy.base_interval, policy.max_interval, rng,
                               floor=policy.base_interval if policy.min_backoff else 0.0)
        self.armed = False
        self.delay = 0.0
        self.retries = 0
        self.tried: list[str] = []      # addresses tried, for the previous-hosts predicate
        self.started = False            # a try sent its head upstream (reset-before-request: no more)

    def decide(self, would_retry: bool) -> str:
        c = self.circuit
        if self.armed:
            self.armed = False
            if c is not None:
                c.retry_ended()
                if not would_retry:
                    c.count("upstream_rq_retry_success")
        if not would_retry:
            return NO
        if self.left <= 0:
            if c is not None:
                c.count("upstream_rq_retry_limit_exceeded")
            return LIMIT
        self.left -= 1
        if c is not None and not c.can_retry():
            c.count("upstream_rq_retry_overflow")
            return OVERFLOW
        if c is not None:
            c.retry_started()
            c.count("upstream_rq_retry")
        self.armed = True
        self.retries += 1
        self.delay = self.backoff.next()
        return RETRY

    def exclude(self) -> frozenset[str]:
        return frozenset(self.tried) if self.policy.ignore_previous_hosts else frozenset()

    def end(self) -> None:
        if self.armed:
            self.armed = False
            if self.circuit is not None:
                self.circuit.retry_ended()
