"""One connection's bookkeeping, for all three of ztunnel's handlers (outbound, inbound HBONE,
inbound plaintext): its access-log record, its Istio metric labels, the per-pod/per-source limits
it holds, and how it ends.

Why one class: every handler must, on every path (refused, failed, relayed, cancelled), release
exactly the limits it took, count the connection as opened exactly once and closed exactly once,
reset a refused client (RST, so it fails at once) or close a served one, and write one access-log
line. Written out three times, those rules drifted; here they are in `finish()`, which the handlers
call from their `finally`, or the relay calls when it ends (`hand_off`).
"""

from __future__ import annotations

import contextlib
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ambit.dataplane.hbone.limits import ConnLimiter
from ambit.dataplane.relay import Leg, TCPRelay, TunnelRelay
from ambit.dataplane.telemetry.accesslog import AccessLogSink, ConnRecord
from ambit.dataplane.telemetry.metrics import FLAG_DENY, ConnLabels, Metrics
from ambit.telemetrymetrics import DEFAULT, MetricsConfig

if TYPE_CHECKING:
    from ztunnel.admission import Admission


def reset(leg: Leg) -> None:
    """Close with RST (SO_LINGER 0): the app sees "connection reset" at once, whatever it sent."""
    sock = leg.get_extra_info("socket")
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # type: ignore[union-attr]
    with contextlib.suppress(Exception):
        if leg.transport is not None:
            leg.transport.abort()


@dataclass(slots=True)
class ConnBook:
    rec: ConnRecord
    metrics: Metrics
    access_log: AccessLogSink
    labels: ConnLabels | None = None        # None until the handler knows enough to label it
    metrics_config: MetricsConfig = DEFAULT  # the Telemetry API's, for the reporting side's workload
    client: Leg | None = None               # the accepted socket, if the handler owns one
    refused: bool = False
    opened: bool = False
    sent: int = 0                           # towards the destination
    recv: int = 0                           # back from the destination
    reverse: bool = False                   # the relay counts (recv, sent), not (sent, recv)
    _held: tuple[tuple[ConnLimiter, str], ...] = ()   # (a list per held connection was ~90 B more)
    _drain: set[Any] | None = None          # the pod's drain set, once handed to a relay (`hand_off`)
    _relay: Any = None                      # that relay while it runs: its counts so far (`flush`)
    _counted: tuple[int, int] = (0, 0)      # (sent, recv) already added to the byte counters
    # Inbound only, once admitted (`track`): the admission decided again with the config in force
    # now (`Proxy` re-asks on every policy update and `revoke`s the connection when it says no),
    # and the table of such connections the book sits in until `finish`.
    recheck: Callable[[], Admission] | None = None
    recheck_key: tuple[Any, ...] = ()       # what `recheck` reads of the connection: equal keys, equal verdicts
    admitted: dict[int, ConnBook] | None = None
    revoked: Admission | None = None        # the re-check that refused it

    @property
    def relaying(self) -> bool:
        """Handed to its relay, which finishes the book when it ends: the handler must not."""
        return self._drain is not None

    def hand_off(self, relay: TCPRelay | TunnelRelay, drain: set[Any], reverse: bool = False) -> None:
        """Let `relay` carry the connection on with no task awaiting it, and finish the book when
        it ends. The relay joins the pod's `drain` set until then, so draining the pod waits for
        it and cancelling it cuts the connection.

        Why: the handler's task, its context and its frames would otherwise stay with every open
        connection (docs/performance.md, §67). The handler skips its own `finish` once this ran."""
        self.reverse, self._drain = reverse, drain
        drain.add(relay)
        self._relay = relay
        if self.labels is not None:     # its bytes so far go into each scrape (Metrics.live)
            self.metrics.live[id(self)] = self
        relay.on_end(self._relay_ended)

    def track(self, recheck: Callable[[], Admission], admitted: dict[int, ConnBook], key: tuple[Any, ...]) -> None:
        """Admitted: from now until it ends, a policy update decides it again (`recheck`) and
        revokes it when no longer allowed, also while its app connection is still being made (the
        handler then checks `revoked` before it relays). `key`: everything of the connection that
        `recheck` reads, so that one pass decides each distinct key once (`Proxy._recheck_admitted`)."""
        self.recheck, self.admitted, self.recheck_key = recheck, admitted, key
        admitted[id(self)] = self

    def flush(self) -> None:
        """Add the bytes the relay moved since the last count: a scrape reads an open
        connection's bytes so far (Metrics.live calls this), as Istio's ztunnel reports them."""
        r, labels = self._relay, self.labels
        if r is None or labels is None:
            return
        a, b = r.counts()
        sent, recv = (b, a) if self.reverse else (a, b)
        done_sent, done_recv = self._counted
        if sent != done_sent or recv != done_recv:
            self.metrics.conn_bytes(labels, sent - done_sent, recv - done_recv, self.metrics_config)
            self._counted = (sent, recv)

    def _relay_ended(self, relay: Any, counts: tuple[int, int]) -> None:
        self.metrics.live.pop(id(self), None)
        self._relay = None
        if self._drain is not None:     # (always, once handed off)
            self._drain.discard(relay)
        if self.reverse:
            self.recv, self.sent = counts
        else:
            self.sent, self.recv = counts
        self.finish()

    def hold(self, limiter: ConnLimiter, key: str) -> bool:
        """Take one slot of `limiter` for `key` (released by `finish`); False, refused, when full."""
        if not limiter.acquire(key):
            self.refuse(f"{limiter.what}: limit {limiter.limit} reached")
            return False
        self._held += ((limiter, key),)
        return True

    def refuse(self, error: str, flags: str = "", policy: str = "") -> None:
        """The connection is refused (a plain client is reset): say why, and flag the metrics."""
        self.refused = True
        self.rec.error = error
        if policy:
            self.rec.policy = policy
        if flags and self.labels is not None and not self.opened:
            self.labels.response_flags = flags

    def revoke(self, adm: Admission) -> None:
        """The connection is no longer allowed (a policy changed since it was admitted): say why
        and cut it, a plain client with a reset, a tunnel with RST_STREAM (the relay's cancel).
        Not relaying yet, the handler cuts it when its app connection is made (`revoked`)."""
        self.revoked = adm
        self.refuse(f"{adm.status} no longer allowed after a policy update: {adm.reason}", FLAG_DENY, adm.policy)
        if self._relay is not None:
            if self.client is not None:
                reset(self.client)
            self._relay.cancel()

    def up(self) -> None:
        """The upstream (app or tunnel) is established: count it as opened now."""
        if self.labels is not None:
            self.metrics.conn_opened(self.labels, self.metrics_config)
        self.opened = True

    def finish(self) -> None:
        self.metrics.live.pop(id(self), None)
        if self.admitted is not None:
            self.admitted.pop(id(self), None)
        for limiter, key in self._held:
            limiter.release(key)
        self._held = ()
        self.rec.bytes_sent, self.rec.bytes_recv = self.sent, self.recv
        if self.client is not None:
            if self.refused:
                reset(self.client)
            else:
                self.client.close()
        if self.labels is not None:
            if not self.opened:
                self.metrics.conn_opened(self.labels, self.metrics_config)  # failures: opened and closed at once
            done_sent, done_recv = self._counted        # what scrapes already added
            self.metrics.conn_closed(self.labels, self.sent - done_sent, self.recv - done_recv, self.metrics_config)
        self.access_log.emit(self.rec)
