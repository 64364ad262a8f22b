"""What the waypoint's own sub-requests share: a request that is no client's, standing in for an
`Exchange` towards the pools and the upstream legs, bounded by a timer, its attempt reported to its
target's cluster. Two kinds: a mirror's shadow (waypoint/http/shadow.py) and an external
authorization check (waypoint/http/authzcall.py).

Ending one (`_stop`) ends everything it holds: its timer, its upstream leg, its attempt in the
cluster's stats and its claim on the cluster's circuit breaker (`Pools.attempt_over`, as an
exchange's `finish` does). A shadow used to keep its claim, so each completed shadow held one of
the mirror cluster's `max_requests` for good.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from waypoint.http import attempt

if TYPE_CHECKING:
    import asyncio

    from waypoint.http.engine import Engine, UpstreamTarget
    from waypoint.http.legs import UpLeg


class SubRequest:
    """Mixed into a sub-request class that has these slots: `engine`, `target`, `up`, `done`,
    `_timer`, `_attempt`, and implements `_timed_out` (its own end after `timeout` s)."""

    __slots__ = ()

    engine: Engine
    target: UpstreamTarget
    up: UpLeg | None
    done: bool
    _timer: asyncio.TimerHandle | None
    _attempt: bool

    def _send(self, timeout: float) -> None:
        """Start the timer and the attempt, and ask the pools for a connection."""
        self._timer = self.engine.loop.call_later(timeout, self._on_timer)
        c = self.target.cluster
        if c is not None:
            self._attempt = True
            c.attempt_started(self.target.address)
        self.engine.pools.acquire(self.target, self)  # type: ignore[arg-type]

    def _on_timer(self) -> None:
        self._timer = None
        if not self.done:
            self._result(attempt.Outcome(attempt.TIMEOUT))
            self._timed_out()

    def _timed_out(self) -> None:
        raise NotImplementedError

    def _result(self, outcome: attempt.Outcome) -> None:
        c = self.target.cluster
        if self._attempt and c is not None:
            c.attempt_result(self.target.address, outcome)

    def _stop(self) -> Any:
        """Done: the timer, the leg, the attempt and the breaker claim end."""
        self.done = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        up, self.up = self.up, None
        if up is not None:
            up.abort()
        self.engine.pools.attempt_over(self)  # type: ignore[arg-type]
        c = self.target.cluster
        if self._attempt and c is not None:
            self._attempt = False
            c.attempt_ended(self.target.address)
