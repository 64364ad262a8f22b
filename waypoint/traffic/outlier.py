"""Outlier detection: passive health checking of a cluster's endpoints (DestinationRule
`outlierDetection`; istio/istio:pilot/pkg/networking/core/cluster_traffic_policy.go
`applyOutlierDetection`; envoyproxy/envoy:source/common/upstream/outlier_detection_impl.cc and
docs/root/intro/arch_overview/upstream/outlier.rst). Only Istio's consecutive-error detectors
exist (Istio disables success-rate ejection).

Per endpoint, counters of consecutive failures, reset by a success:
- `consecutive_5xx`: 5xx answers (a gRPC trailers-only answer counts its grpc-status mapped to
  HTTP: UNAVAILABLE 503, INTERNAL/UNKNOWN 500, ...), and (unless `split`) local-origin failures counted as 503
  (connect failure, reset) or 504 (timeout), as Envoy's `putResultNoLocalExternalSplit` maps them.
  0 disables it (Istio sets its enforcement to 0).
- `consecutive_gateway`: 502/503/504 (and the same local failures unless `split`). 0: off (Istio
  enforces it only when set above 0).
- with `split` (`splitExternalLocalOriginErrors`): local-origin failures count only in
  `consecutive_local`, reset by any response; 5xx answers only in the two above.
- `error_codes` (`outlierDetectionHttpErrorCodes`) redefines which answers are errors, as Istio
  translates it (pilot cluster_traffic_policy.go `applyOutlierDetectionErrorCodes`: an Envoy
  `HttpProtocolOptions.outlier_detection.error_matcher` on `:status`) and Envoy's router reports
  a matcher's verdict (router_outlier_detection_test.cc): an answer whose HTTP status is listed
  (`:status`, so 200 for a gRPC trailers-only answer) counts as its own status above if 5xx, else
  as a 500 (so a listed 429 counts towards `consecutive_5xx`, a listed 503 towards both
  counters); any other answer, 5xx included, as a 200 (a success, which resets the counters).
  Local-origin failures are not answers and count as before. Empty: 5xx answers are errors.

When a counter reaches its threshold the endpoint is ejected at once (inline), unless that would
make the ejected share exceed `max_ejection_percent` of the cluster's endpoints (Envoy:
`100 * (ejected + 1) / hosts <= max`, no exception for the first host: with 2 endpoints and the
default 10 % nothing is ejected, as in Envoy). Counters reset on ejection and on return.

Ejection lasts `base_ejection_time × backoff` (capped at max(300 s, base), Envoy's default
max_ejection_time), where `backoff` goes up by one per ejection and down by one per `interval`
sweep that finds the endpoint in service for at least an interval: an endpoint that keeps failing
stays out longer each time, one that recovers is soon forgiven.

Ejected endpoints come back at the first interval sweep past their ejection time. Sweeps run every
`interval` from the detector's creation, lazily: `sweep(now)` runs every sweep due up to `now`
(each at its own time), and the cluster calls it before each pick and each stats/dump, so the
result is the same as a timer's without a task per cluster.

`events` receives ("eject", address, reason, seconds) and ("return", address, "", 0.0) for logs.
Pure: the clock is injected (the caller passes `now`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ambit.model import TrafficPolicy
from waypoint.http.attempt import TIMEOUT, Outcome

DEFAULT_MAX_EJECTION_TIME = 300.0
MAX_CATCH_UP = 10_000        # sweeps run at most per call; past that, jump (backoffs are 0 by then)

CONSECUTIVE_5XX = "consecutive_5xx"
CONSECUTIVE_GATEWAY = "consecutive_gateway_failure"
CONSECUTIVE_LOCAL = "consecutive_local_origin_failure"
KINDS = (CONSECUTIVE_5XX, CONSECUTIVE_GATEWAY, CONSECUTIVE_LOCAL)


@dataclass(frozen=True)
class OutlierConfig:
    consecutive_5xx: int = 5
    consecutive_gateway: int = 0
    consecutive_local: int = 5
    split: bool = False
    interval: float = 10.0
    base_ejection_time: float = 30.0
    max_ejection_percent: int = 10
    min_health_percent: int = 0
    error_codes: frozenset[int] = frozenset()   # outlierDetectionHttpErrorCodes; empty: 5xx

    @classmethod
    def from_policy(cls, p: TrafficPolicy) -> OutlierConfig | None:
        if not p.outlier_detection:
            return None
        return cls(p.consecutive_5xx_errors, p.consecutive_gateway_errors, p.consecutive_local_origin_failures,
                   p.split_external_local_origin_errors, p.interval if p.interval > 0 else 10.0,
                   p.base_ejection_time if p.base_ejection_time > 0 else 30.0,
                   p.max_ejection_percent, p.min_health_percent, frozenset(p.outlier_http_error_codes))

    def counted_status(self, outcome: Outcome) -> int:
        """The status an answer counts as: its own (`outlier_status`), unless `error_codes`
        redefines the errors (see the module docstring): a listed HTTP status is an error (a 5xx
        as itself, anything else as a 500), every other answer a success (200)."""
        status = outcome.outlier_status
        if not self.error_codes:
            return status
        if outcome.status in self.error_codes:
            return status if 500 <= status < 600 else 500
        return 200

    @property
    def max_ejection_time(self) -> float:
        return max(DEFAULT_MAX_EJECTION_TIME, self.base_ejection_time)


@dataclass
class HostState:
    c5xx: int = 0
    cgw: int = 0
    clocal: int = 0
    ejected_at: float | None = None     # set while ejected
    ejection_time: float = 0.0          # how long this ejection lasts
    ejections: int = 0                  # times ejected, ever
    backoff: int = 0                    # Envoy's ejectTimeBackoff
    returned_at: float | None = None    # last return to service

    @property
    def ejected(self) -> bool:
        return self.ejected_at is not None


Events = Callable[[str, str, str, float], None]


class OutlierDetector:
    def __init__(self, cfg: OutlierConfig, now: float, events: Events | None = None) -> None:
        self.cfg = cfg
        self.hosts: dict[str, HostState] = {}
        self.next_sweep = now + cfg.interval
        self.events = events or (lambda *_: None)
        self.counters = {"ejections_enforced_total": 0, "ejections_overflow": 0, "ejections_total": 0,
                         "ejections_consecutive_5xx": 0}
        for k in KINDS:
            self.counters[f"ejections_detected_{k}"] = 0
            self.counters[f"ejections_enforced_{k}"] = 0

    # --- membership ---------------------------------------------------------------------------

    def set_hosts(self, hosts: Iterable[str]) -> None:
        """The cluster's endpoints now; state of the ones gone is dropped (Envoy removes their
        monitors, and an ejected one stops counting as ejected)."""
        hs = set(hosts)
        for h in [h for h in self.hosts if h not in hs]:
            del self.hosts[h]
        for h in hs:
            self.hosts.setdefault(h, HostState())

    @property
    def ejected_count(self) -> int:
        return sum(1 for s in self.hosts.values() if s.ejected)

    def is_ejected(self, host: str) -> bool:
        s = self.hosts.get(host)
        return s is not None and s.ejected

    # --- results --------------------------------------------------------------------------------

    def result(self, host: str, outcome: Outcome, now: float) -> None:
        """An attempt's outcome on `host` (waypoint/http/attempt.py). An endpoint the cluster no
        longer has (a request that was in flight when it left) is ignored, as Envoy ignores a
        removed host's results: it must not come back as a phantom that can be ejected and count
        against `max_ejection_percent`."""
        s = self.hosts.get(host)
        if s is None:
            return
        if outcome.local_origin:
            if self.cfg.split:
                s.clocal += 1
                if s.clocal == self.cfg.consecutive_local and self.cfg.consecutive_local > 0:
                    self._detected(host, s, CONSECUTIVE_LOCAL, now)
                return
            self._http(host, s, 504 if outcome.kind == TIMEOUT else 503, now)
            return
        if self.cfg.split:
            s.clocal = 0        # the connection worked: Envoy's localOriginNoFailure
        self._http(host, s, self.cfg.counted_status(outcome) if self.cfg.error_codes else outcome.outlier_status,
                   now)

    def local_success(self, host: str) -> None:
        """A connection to `host` succeeded with no HTTP exchange (opaque forwarding)."""
        s = self.hosts.get(host)
        if s is not None:
            s.clocal = 0

    def _http(self, host: str, s: HostState, status: int, now: float) -> None:
        """Envoy's `putHttpResponseCode`."""
        if 500 <= status < 600:
            if status in (502, 503, 504):
                s.cgw += 1
                if s.cgw == self.cfg.consecutive_gateway and self.cfg.consecutive_gateway > 0:
                    self._detected(host, s, CONSECUTIVE_GATEWAY, now)
            else:
                s.cgw = 0
            s.c5xx += 1
            if s.c5xx == self.cfg.consecutive_5xx and self.cfg.consecutive_5xx > 0:
                self._detected(host, s, CONSECUTIVE_5XX, now)
        else:
            s.c5xx = s.cgw = 0

    def _detected(self, host: str, s: HostState, kind: str, now: float) -> None:
        """Envoy's `onConsecutiveErrorWorker`: eject (if allowed), then reset that counter."""
        if s.ejected:
            return
        self.counters[f"ejections_detected_{kind}"] += 1
        self._eject(host, s, kind, now)
        if kind == CONSECUTIVE_5XX:
            self.counters["ejections_consecutive_5xx"] += 1
            s.c5xx = 0
        elif kind == CONSECUTIVE_GATEWAY:
            s.cgw = 0
        else:
            s.clocal = 0

    def _eject(self, host: str, s: HostState, kind: str, now: float) -> None:
        """Envoy's `ejectHost`."""
        pct = 100.0 * (self.ejected_count + 1) / max(len(self.hosts), 1)
        if pct > min(self.cfg.max_ejection_percent, 100):
            self.counters["ejections_overflow"] += 1
            return
        if kind == CONSECUTIVE_5XX:
            self.counters["ejections_total"] += 1
        self.counters["ejections_enforced_total"] += 1
        self.counters[f"ejections_enforced_{kind}"] += 1
        base, cap = self.cfg.base_ejection_time, self.cfg.max_ejection_time
        if s.backoff * base < cap + base:
            s.backoff += 1
        s.ejected_at = now
        s.ejection_time = min(base * s.backoff, cap)
        s.ejections += 1
        self.events("eject", host, kind, s.ejection_time)

    # --- the interval sweep ---------------------------------------------------------------------

    def sweep(self, now: float) -> None:
        """Run every interval sweep due by `now`."""
        iv = self.cfg.interval
        if self.next_sweep + MAX_CATCH_UP * iv <= now:
            self.next_sweep += ((now - self.next_sweep) // iv - MAX_CATCH_UP + 1) * iv
        while self.next_sweep <= now:
            self._sweep_at(self.next_sweep)
            self.next_sweep += iv

    def _sweep_at(self, t: float) -> None:
        """Envoy's `onIntervalTimer`: return endpoints whose ejection is over, then decay the
        backoff of those in service for at least an interval."""
        for host, s in self.hosts.items():
            if s.ejected_at is not None and t - s.ejected_at >= s.ejection_time:
                s.ejected_at = None
                s.c5xx = s.cgw = s.clocal = 0
                s.returned_at = t
                self.events("return", host, "", 0.0)
        for s in self.hosts.values():
            if s.ejected_at is None and s.returned_at is not None and t - s.returned_at >= self.cfg.interval \
                    and s.backoff > 0:
                s.backoff -= 1

    def returns_at(self, host: str) -> float | None:
        """When the ejected `host` comes back: the first sweep at or after its ejection's end."""
        s = self.hosts.get(host)
        if s is None or s.ejected_at is None:
            return None
        due = s.ejected_at + s.ejection_time
        iv = self.cfg.interval
        k = max(0.0, -(-(due - self.next_sweep) // iv))
        return self.next_sweep + k * iv

    # --- panic ----------------------------------------------------------------------------------

    def panic(self, hosts: list[str]) -> bool:
        """Envoy's healthy panic threshold, which Istio sets to `minHealthPercent`: when the share
        of endpoints in service is below it, balance over all of them, ejected included. 0 (the
        default) disables it."""
        if not self.cfg.min_health_percent or not hosts:
            return False
        healthy = sum(1 for h in hosts if not self.is_ejected(h))
        return 100.0 * healthy / len(hosts) < self.cfg.min_health_percent
