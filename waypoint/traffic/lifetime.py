"""How long an upstream connection may live, and whether an HTTP/2 one is still answering: the
DestinationRule's `tcp.maxConnectionDuration` and `http.http2KeepAlive`. Pure: the caller passes
the time (`now`, the loop's clock) and, for the keepalive's jitter, a random source; the pool and
the h2 client (waypoint/http/pool.py, waypoint/http/http2/client.py) hold the timers and act on
what these say.

Semantics are Envoy's, as Istio configures them (pilot/pkg/networking/core/cluster_traffic_policy.go
`applyConnectionPool`):

- `tcp.maxConnectionDuration` → `common_http_protocol_options.max_connection_duration`: a connection
  that reaches it is drained (Envoy's `upstream_cx_max_duration_reached`): it takes no new request,
  the requests on it finish, then it closes. An idle HTTP/1.1 connection closes at once, a busy one
  after its response; an h2 connection stops taking streams and closes when the last one ends.
- `http.http2KeepAlive` → `http2_protocol_options.connection_keepalive` (KeepaliveSettings,
  envoy source/common/http/http2/codec_impl.cc): a PING every `interval` plus a jitter of up to
  15% (Envoy's default `interval_jitter`); the next one is scheduled when the ACK comes. No ACK
  within `timeout` closes the connection (`http2.keepalive_timeout`), its streams reset
  ("connection termination", 503 UC). Any frame received while waiting extends the wait, as
  Envoy does, so a PING queued behind a large response does not kill a healthy connection.
  Envoy requires `timeout`; Istio's API does not: unset, it is `DEFAULT_TIMEOUT` (gRPC's own
  keepalive timeout). Without `interval` no PING is sent (Envoy sends interval PINGs only then).
"""

from __future__ import annotations

import random
from collections.abc import Callable

PING, TIMEOUT = "ping", "timeout"
JITTER = 0.15               # Envoy's default interval_jitter: up to 15% of the interval added
DEFAULT_TIMEOUT = 20.0      # seconds, when http2KeepAlive sets an interval but no timeout


def drain_at(opened: float, max_duration: float) -> float:
    """When a connection opened at `opened` is to be drained; 0 when the duration is unlimited."""
    return opened + max_duration if max_duration > 0 else 0.0


def expired(opened: float, now: float, max_duration: float) -> bool:
    """Has a connection opened at `opened` reached the cluster's maxConnectionDuration?"""
    return max_duration > 0 and now - opened >= max_duration


class Keepalive:
    """The PING schedule of one h2 upstream connection. `poll(now, last_rx)` says what to do now
    (send a PING, give up on the connection, or nothing) and when to be asked again; `acked(now)`
    takes the PING ACK. `last_rx` is when the connection last received anything."""

    __slots__ = ("interval", "timeout", "rand", "sent_at", "next_at")

    def __init__(self, interval: float, timeout: float, now: float,
                 rand: Callable[[], float] = random.random) -> None:
        self.interval = interval
        self.timeout = timeout or DEFAULT_TIMEOUT
        self.rand = rand
        self.sent_at: float | None = None       # a PING is out, unanswered, since then
        self.next_at = now + self._period()

    @classmethod
    def of(cls, interval: float, timeout: float, now: float,
           rand: Callable[[], float] = random.random) -> Keepalive | None:
        """The schedule for a cluster's http2KeepAlive, or None when it sends no PING."""
        return cls(interval, timeout, now, rand) if interval > 0 else None

    def _period(self) -> float:
        return self.interval * (1.0 + JITTER * self.rand())

    def poll(self, now: float, last_rx: float) -> tuple[str, float]:
        """(`PING` | `TIMEOUT` | "", when to poll next). `PING`: send one now (it is counted as out);
        `TIMEOUT`: no ACK, and nothing else received, within `timeout` of the PING: close."""
        if self.sent_at is not None:
            deadline = max(self.sent_at, last_rx) + self.timeout
            if now >= deadline:
                return TIMEOUT, now
            return "", deadline
        if now >= self.next_at:
            self.sent_at = now
            return PING, now + self.timeout
        return "", self.next_at

    def acked(self, now: float) -> float:
        """A PING ACK arrived (Envoy takes any ACK): the next PING is due an interval from now."""
        self.sent_at = None
        self.next_at = now + self._period()
        return self.next_at
