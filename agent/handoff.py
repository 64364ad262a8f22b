"""Retrying the hand-off of a pod to ztunnel: a pure state machine with an injected clock.

The hand-off (ztunnel opening 15001/15006/15008 in the pod's netns) can fail for one pod while the
node is fine: the pod itself may hold one of those ports (it bound it while ztunnel restarted), or
the netns may be on its way out. The pod then stays captured (ambit_tc_in drops its inbound, its
outbound connect()s are refused: fail closed), its status says `capture-failed` with ztunnel's
reason, and the agent asks again with exponential backoff until ztunnel serves it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ambit.backoff import Backoff

STATE = "capture-failed"


@dataclass
class Attempt:
    failures: int
    next_at: float
    reason: str


@dataclass
class HandoffRetry:
    """uid -> the pending retry of a failed hand-off. Times are the caller's clock (monotonic)."""

    # No jitter: the retry is local to one pod on one node, so there is no fleet to de-synchronise.
    backoff: Backoff = field(default_factory=lambda: Backoff(initial=0.5, maximum=30.0, jitter=0.0))
    pending: dict[str, Attempt] = field(default_factory=dict)

    def delay(self, failures: int) -> float:
        """Seconds before the next attempt after `failures` consecutive failures (>= 1)."""
        return self.backoff.delay(failures, 0.0)

    def failed(self, uid: str, now: float, reason: str) -> Attempt:
        prev = self.pending.get(uid)
        n = prev.failures + 1 if prev else 1
        a = Attempt(failures=n, next_at=now + self.delay(n), reason=reason)
        self.pending[uid] = a
        return a

    def succeeded(self, uid: str) -> bool:
        """Forget `uid`; returns whether it had been failing."""
        return self.pending.pop(uid, None) is not None

    forget = succeeded

    def due(self, now: float) -> list[str]:
        return sorted(uid for uid, a in self.pending.items() if a.next_at <= now)

    def status(self, uid: str, now: float) -> dict[str, object] | None:
        """The pod's status-file entry while its hand-off is failing (None when it is not)."""
        a = self.pending.get(uid)
        if a is None:
            return None
        return {"state": STATE, "reason": a.reason, "failures": a.failures,
                "retryIn": round(max(0.0, a.next_at - now), 2)}


def reason_of(error: str) -> str:
    """ztunnel's own words, without the link's "ztunnel refused add: " preamble."""
    prefix = "ztunnel refused add: "
    return error[len(prefix):] if error.startswith(prefix) else error
