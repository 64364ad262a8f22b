"""Request mirroring (VirtualService `mirror`/`mirrors`, HTTPRoute `RequestMirror`): which mirrors
a request goes to, and how many shadow requests may be in flight at once.

Istio turns each mirror into an Envoy route `request_mirror_policies` entry
(istio/istio:pilot/pkg/networking/core/route/route.go `TranslateRequestMirrorPolicy`) whose
`runtime_fraction` is `mirrorPercentage` (default 100 %, explicit 0 disables) as a fraction per
million. Envoy's router decides per request with one stable random value, the stream id, compared
with every policy's fraction (envoyproxy/envoy:source/common/router/router.cc `shouldShadow(...,
callbacks_->streamId())`): two 50 % mirrors shadow the *same* half of the requests, not two
independent halves. Ambit draws once per request the same way.

Shadows are fire and forget: Envoy sends them after the fault filter (an aborted request is not
mirrored, a delayed one is mirrored after its delay), once per request (not per retry), and
discards their responses. Envoy has no bound of its own on them beyond the shadow cluster's
circuit breakers, which Istio leaves at 2^32-1. Ambit bounds them (`MirrorGate`): a shadow that
would exceed `mirror_max_active` is dropped and counted, never queued, so a slow shadow backend
costs the primary nothing.

Pure: the random source is injected; the shadow exchange (waypoint/http/shadow.py) does the I/O.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass

from ambit.model import Mirror
from waypoint.resilience.fault import MILLION, per_million


@dataclass(frozen=True, slots=True)
class MirrorPolicy:
    """One compiled mirror: where shadows go, and how many of them."""

    service: str                    # "ns/name" of the mirror Service
    hostname: str                   # its FQDN
    port: int = 0                   # 0: the port the request arrived on
    subset: str = ""
    per_million: int = MILLION


def compile_mirrors(mirrors: Iterable[Mirror]) -> tuple[MirrorPolicy, ...]:
    """Mirrors that can ever fire. A mirror whose host is no known Service (no `service`) has no
    endpoints to go to and is left out (the controller's advisories report unknown hosts)."""
    out = []
    for m in mirrors:
        d = m.destination
        n = per_million(m.percent)
        if n <= 0 or not d.service:
            continue
        out.append(MirrorPolicy(d.service, d.host, d.port, d.subset, n))
    return tuple(out)


def pick(mirrors: tuple[MirrorPolicy, ...], rng: random.Random) -> list[MirrorPolicy]:
    """The mirrors this request goes to: one draw per request, compared with each fraction."""
    if not mirrors:
        return []
    r = rng.randrange(MILLION)
    return [m for m in mirrors if m.per_million >= MILLION or r < m.per_million]


class MirrorGate:
    """Admission for shadow requests: at most `max_active` in flight; over that, drop (and count).

    Counters, for the admin endpoint and metrics: `started` (admitted), `overflow` (dropped at the
    gate), `no_upstream` (no endpoint for the mirror), `completed` (a response came back, any
    status), `failed` (connect failure, reset, timeout), `cut` (aborted: its body went past
    `mirror_buffer_bytes`, or the client left before the request ended)."""

    __slots__ = ("max_active", "active", "started", "overflow", "no_upstream", "completed", "failed", "cut")

    def __init__(self, max_active: int) -> None:
        self.max_active = max_active
        self.active = 0
        self.started = self.overflow = self.no_upstream = 0
        self.completed = self.failed = self.cut = 0

    def admit(self) -> bool:
        if self.active >= self.max_active:
            self.overflow += 1
            return False
        self.active += 1
        self.started += 1
        return True

    def release(self, outcome: str) -> None:
        """A shadow admitted by `admit` is over: `completed`, `failed`, `cut` or `no_upstream`."""
        self.active = max(0, self.active - 1)
        if outcome == "completed":
            self.completed += 1
        elif outcome == "cut":
            self.cut += 1
        elif outcome == "no_upstream":
            self.no_upstream += 1
        else:
            self.failed += 1

    def stats(self) -> dict[str, int]:
        return {"active": self.active, "max_active": self.max_active, "started": self.started,
                "overflow": self.overflow, "no_upstream": self.no_upstream, "completed": self.completed,
                "failed": self.failed, "cut": self.cut}
