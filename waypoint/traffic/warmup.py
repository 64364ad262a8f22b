"""Slow start (DestinationRule `loadBalancer.warmup` / `warmupDurationSecs`; Envoy's
`slow_start_config`, envoyproxy/envoy:docs/root/intro/arch_overview/upstream/load_balancing/
slow_start.rst and `EdfLoadBalancerBase::applySlowStartFactor`).

An endpoint that joined the cluster less than `duration` ago gets its weight scaled by
`max(min_percent / 100, time_factor ** (1 / aggression))`, `time_factor = max(age, 1 ms) /
duration`, so a new pod's share ramps up over the window instead of getting its full share at once.
It applies to ROUND_ROBIN and LEAST_REQUEST only (Envoy supports slow start in those two).

"Joined" is when the cluster first saw the endpoint among its candidates. The endpoints present
when the cluster first picks are taken as warm: when every endpoint is new, slow start has no
effect anyway (Envoy's doc says so), and a waypoint restart should not throttle a whole Service.
An endpoint that leaves and comes back starts a new window, as a re-added Envoy host does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable


class SlowStart:
    def __init__(self, duration: float, aggression: float = 1.0, min_percent: float = 10.0,
                 clock: Callable[[], float] | None = None) -> None:
        self.duration = duration
        self.aggression = aggression if aggression > 0 else 1.0   # Envoy: invalid values mean 1.0
        self.min_factor = max(0.0, min(min_percent, 100.0)) / 100.0
        self.clock = clock
        self._joined: dict[str, float] = {}
        self._seen_any = False

    def observe(self, hosts: Iterable[str], now: float) -> None:
        """The cluster's current endpoints: new ones start their window now."""
        hs = set(hosts)
        for h in list(self._joined):
            if h not in hs:
                del self._joined[h]
        for h in hs:
            if h not in self._joined:
                self._joined[h] = now if self._seen_any else float("-inf")
        if hs:
            self._seen_any = True

    def factor(self, host: str, now: float) -> float:
        """The weight multiplier of `host` now: 1.0 once warm."""
        age = now - self._joined.get(host, float("-inf"))
        if self.duration <= 0 or age >= self.duration:
            return 1.0
        t = max(age, 0.001) / self.duration
        if self.aggression != 1.0:
            t = t ** (1.0 / self.aggression)
        return max(t, self.min_factor)

    def warming(self, hosts: Iterable[str], now: float) -> bool:
        return any(self.factor(h, now) < 1.0 for h in hosts)
