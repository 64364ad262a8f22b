"""Retry backoff, one policy for every component: exponential with "equal jitter", capped.

Jitter matters because every ztunnel and agent of a cluster loses the controller at the same
moment (a controller restart); without it they would all reconnect in lock-step. `Backoff` is the
pure policy (a delay from a failure count and a random draw), so schedulers such as the identity
manager compute delays with an injected clock and random source. `Attempts` is the stateful
counter for a plain reconnect loop (the config client, the Kubernetes reflector).
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """Delay after the n-th consecutive failure: base = initial * multiplier**(n-1), capped at
    `maximum`, then drawn from [base * (1 - jitter), base]."""

    initial: float = 1.0
    maximum: float = 300.0
    multiplier: float = 2.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if self.initial <= 0 or self.maximum < self.initial:
            raise ValueError(f"backoff: need 0 < initial <= maximum, got initial={self.initial} "
                             f"maximum={self.maximum}")
        if self.multiplier < 1 or not 0 <= self.jitter <= 1:
            raise ValueError(f"backoff: need multiplier >= 1 and 0 <= jitter <= 1, got "
                             f"multiplier={self.multiplier} jitter={self.jitter}")

    def delay(self, failures: int, rand: float) -> float:
        """Delay after the `failures`-th consecutive failure (1-based); `rand` in [0, 1)."""
        try:
            growth = self.multiplier ** max(0, failures - 1)
        except OverflowError:   # 2.0 ** 1024: after ~1000 failures in a row, long past the cap
            growth = float("inf")
        base = min(self.maximum, self.initial * growth)
        return base * (1.0 - self.jitter * rand)

    def attempts(self, rng: random.Random | None = None) -> Attempts:
        return Attempts(self, rng)


class Attempts:
    """Counts consecutive failures under a `Backoff`; `reset()` after a success."""

    def __init__(self, policy: Backoff, rng: random.Random | None = None) -> None:
        self.policy = policy
        self.failures = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        self.failures += 1
        return self.policy.delay(self.failures, self._rng.random())

    def reset(self) -> None:
        self.failures = 0
