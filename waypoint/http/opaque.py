"""A tunnel that is not HTTP: its bytes are relayed untouched to the upstream the caller chooses
for the whole tunnel (L4 forwarding, with the caller's L4 policy), never held waiting for HTTP.

Both sides are plain asyncio protocols: reading pauses on one side while the other's write buffer
is above its high-water mark, and a half-close (EOF) on one side becomes a half-close on the
other, so request/response protocols that shut their sending side early keep working.

A tunnel that carries no bytes either way for its idle timeout is closed on both sides, as Envoy's
tcp_proxy `idle_timeout` does: the upstream's `idle_timeout` attribute when the caller set one (the
cluster's DestinationRule `tcp.idleTimeout`), else the engine's `tcp_idle_timeout` (1 h).

The opener (the engine's `opaque`) has `connect_timeout` to give an upstream; one that first holds
the tunnel for an external authorization check says so (`hold_for`), and the deadline moves by the
check's own bound, so a check the provider allows 600 s is not cut at the connect timeout. An
opener that refuses the tunnel (policy, a check) answers `Refused`, which the access-log line shows.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from waypoint.http.record import TunnelRecord
from waypoint.request import Downstream

if TYPE_CHECKING:
    from waypoint.http.engine import Engine

log = logging.getLogger("waypoint.http")

# the connect deadline of the relay whose opener runs in this task (`hold_for`)
_deadline: contextvars.ContextVar[asyncio.Timeout] = contextvars.ContextVar("opaque_deadline")


@dataclass(frozen=True, slots=True)
class Refused:
    """An opener's answer for a tunnel it refuses (not one it found no upstream for): the access
    log's response flags (RBAC, UAEX), details (why, naming the policy) and connection termination
    details (Envoy's network RBAC filter's `rbac_access_denied_matched_policy[...]`; none for a
    check's refusal, as Envoy's network ext_authz filter sets none)."""

    flags: str
    detail: str
    termination: str = ""


def hold_for(seconds: float) -> None:
    """Called by an opener about to hold its tunnel for up to `seconds` (an external authorization
    check bounded by its provider's timeout) before it connects: the relay's connect deadline moves
    `seconds` later. Outside a relay's opener it does nothing."""
    d = _deadline.get(None)
    when = d.when() if d is not None else None
    if d is not None and when is not None:
        d.reschedule(when + seconds)


class _Side(asyncio.Protocol):
    def __init__(self, relay: OpaqueRelay, name: str) -> None:
        self.relay = relay
        self.name = name
        self.transport: asyncio.Transport | None = None
        self.received = 0
        self.eof = False
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        self.relay.data(self, data)

    def eof_received(self) -> bool:
        self.eof = True
        self.relay.eof(self)
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.relay.lost(self, exc)

    def pause_writing(self) -> None:
        other = self.relay.other(self)
        if other is not None and other.transport is not None and not other.lost:
            other.transport.pause_reading()

    def resume_writing(self) -> None:
        other = self.relay.other(self)
        if other is not None and other.transport is not None and not other.lost:
            other.transport.resume_reading()


class OpaqueRelay:
    """Relays one tunnel; created by the detector with the bytes it already read."""

    def __init__(self, engine: Engine, downstream: Downstream, transport: asyncio.Transport, early: bytes,
                 eof: bool) -> None:
        self.engine = engine
        self.downstream = downstream
        self.down = _Side(self, "down")
        self.up: _Side | None = None
        self.early: list[bytes] = [early] if early else []
        self.down_eof_early = eof
        self.done = False
        self.record = TunnelRecord("", "", "", "TCP", downstream, bytes_received=len(early))
        self._t0 = time.monotonic()
        self.last = engine.loop.time()
        self._idle: asyncio.TimerHandle | None = None
        self.opened = False     # counted in istio_tcp_connections_opened_total (the engine's tcp_stats)
        transport.set_protocol(self.down)
        self.down.connection_made(transport)
        self.down.received = len(early)
        if not eof:
            transport.pause_reading()       # until the upstream is there
        self._task = engine.loop.create_task(self._connect())

    async def _connect(self) -> None:
        opener = self.engine.opaque
        try:
            plug = None
            if opener is not None:
                async with asyncio.timeout(self.engine.settings.connect_timeout) as deadline:
                    _deadline.set(deadline)
                    plug = await opener(self.downstream)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.info("opaque upstream for %s failed: %s", self.downstream.source_ip, e)
            self.record.detail = f"{type(e).__name__}: {e}"
            self.record.response_flags = "UF"
            self._end()
            return
        if isinstance(plug, Refused):       # denied by policy or by an external authorizer
            self.record.response_flags, self.record.detail = plug.flags, plug.detail
            if plug.termination:
                self.record.termination = plug.termination
            self._end()
            return
        if plug is None:        # no route for non-HTTP traffic (NR), or no endpoint for it (UH)
            self.record.response_flags = "UH" if opener is not None else "NR"
            self._end()
            return
        if self.down.lost:
            self.up = _Side(self, "up")
            plug.attach(self.up)
            self._end()
            return
        self.up = up = _Side(self, "up")
        plug.attach(up)
        self.record.upstream = getattr(plug, "upstream", "")
        routed = getattr(plug, "routed", None)  # a tcp route's backend: (route, "ns/name", host), waypoint/app.py
        if routed is not None:
            self.record.route, self.record.service, self.record.hostname = routed
        audit = getattr(plug, "audit", ())      # the AUDIT policies the tunnel matched (waypoint/app.py `opaque`)
        if audit:
            self.record.audit = audit
        self._tcp_stats("open")
        self._arm(getattr(plug, "idle_timeout", 0.0) or self.engine.settings.tcp_idle_timeout)
        if self.done:
            return
        assert up.transport is not None
        for d in self.early:
            up.transport.write(d)
        self.early = []
        if self.down_eof_early or self.down.eof:
            self._half_close(up)
        elif self.down.transport is not None:
            self.down.transport.resume_reading()

    def _tcp_stats(self, event: str) -> None:
        """Istio's TCP metrics for the tunnel (the waypoint's `tcp_stats(record, event)` hook):
        "open" once the upstream is there, "close" at the end; a tunnel that never reached an
        upstream counts as opened and closed at once, as ztunnel counts its failures."""
        sink = getattr(self.engine, "tcp_stats", None)
        if sink is None:
            return
        try:
            if event == "close" and not self.opened:
                sink(self.record, "open")
            self.opened = True
            sink(self.record, event)
        except Exception:
            log.exception("tcp stats sink failed")

    def other(self, side: _Side) -> _Side | None:
        return self.up if side is self.down else self.down

    def _arm(self, limit: float) -> None:
        """Close the tunnel once it has been idle for `limit` seconds (checked at most twice per
        `limit`, not per read)."""
        now = self.engine.loop.time()
        idle_for = now - self.last
        if idle_for >= limit:
            log.info("opaque tunnel from %s idle for %.0fs: closed", self.downstream.source_ip, idle_for)
            self.record.detail = "idle timeout"
            self._end()
            return
        self._idle = self.engine.loop.call_later(limit - idle_for, self._arm, limit)

    def data(self, side: _Side, data: bytes) -> None:
        self.last = self.engine.loop.time()
        rec = self.record       # counted as they go: a scrape reads an open tunnel's bytes so far
        if side is self.down:
            rec.bytes_received += len(data)
        else:
            rec.bytes_sent += len(data)
        other = self.other(side)
        if other is None or other.transport is None:
            self.early.append(data)
            return
        other.transport.write(data)

    def eof(self, side: _Side) -> None:
        other = self.other(side)
        if other is not None and other.transport is not None:
            self._half_close(other)
        if self.down.eof and self.up is not None and self.up.eof:
            self._end()

    def _half_close(self, side: _Side) -> None:
        t = side.transport
        if t is not None and not t.is_closing() and t.can_write_eof():
            try:
                t.write_eof()
            except (OSError, RuntimeError):
                self._end()

    def lost(self, side: _Side, exc: Exception | None) -> None:
        self._end()

    def _end(self) -> None:
        if self.done:
            return
        self.done = True
        if self._idle is not None:
            self._idle.cancel()
        for s in (self.down, self.up):
            if s is not None and s.transport is not None and not s.lost:
                s.transport.close()
        rec = self.record
        rec.bytes_received = self.down.received
        rec.bytes_sent = self.up.received if self.up is not None else 0
        rec.duration_ms = (time.monotonic() - self._t0) * 1000
        self._tcp_stats("close")
        try:
            self.engine.access_log(rec)
        except Exception:
            log.exception("access-log sink failed")
