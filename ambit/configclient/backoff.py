"""Reconnect backoff: exponential with full jitter, capped, reset after a successful connection.

Jitter matters because every ztunnel and agent of a cluster loses the controller at the same
moment (a controller restart); without it they would all reconnect in lock-step.
"""

from __future__ import annotations

import random


class Backoff:
    def __init__(self, initial: float = 0.1, cap: float = 5.0, rng: random.Random | None = None):
        if initial <= 0 or cap < initial:
            raise ValueError(f"backoff: need 0 < initial <= cap, got initial={initial} cap={cap}")
        self.initial = initial
        self.cap = cap
        self.attempt = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        """The delay before the next attempt: uniform in [ceiling/2, ceiling], ceiling doubling to cap."""
        ceiling = min(self.cap, self.initial * (2 ** self.attempt))
        self.attempt += 1
        return self._rng.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.attempt = 0
