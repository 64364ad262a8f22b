"""Upstream connections, per upstream key (one endpoint: the caller's `UpstreamTarget.key`).

- HTTP/1.1: a LIFO list of idle connections per key (the most recently used is the warmest and
  the least likely to have been closed by the server), at most `pool_max_idle` per key, each
  dropped after `upstream_idle_timeout`. At most `pool_max_connections` per key are open; beyond
  that requests wait (at most `pool_max_pending`) for one to free up, and beyond that get 503 with
  `x-envoy-overloaded: true` (flag UO) at once, as Envoy's default circuit breakers (1024/1024) do. A connection goes back only after a clean end of both
  messages; no liveness probe per request: a reused connection that turns out closed before any
  response byte is retried once on a fresh one (`Exchange.upstream_reset(retryable=True)`).
- h2c: one multiplexed connection per key, a second one when the first is full (the server's
  SETTINGS_MAX_CONCURRENT_STREAMS) or going away (GOAWAY).

Connecting is the only task a request may create, and only when no connection is free.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING

from waypoint.http.http1 import H1Client
from waypoint.http.http2 import H2Client

if TYPE_CHECKING:
    from waypoint.http.engine import Engine, UpstreamTarget
    from waypoint.http.exchange import Exchange

log = logging.getLogger("waypoint.http")


class Pools:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.settings = engine.settings
        self.idle: dict[str, list[H1Client]] = {}
        self.h2: dict[str, list[H2Client]] = {}
        self._h2_connecting: dict[str, list[Exchange]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.connections = 0            # upstream connections opened, for tests and stats
        self.open: dict[str, int] = {}  # HTTP/1.1 connections open or opening, per key
        self.pending: dict[str, deque[tuple[UpstreamTarget, Exchange]]] = {}

    def acquire(self, target: UpstreamTarget, ex: Exchange, *, fresh: bool = False) -> None:
        """Bind `ex` to an upstream connection for `target`: a pooled one now, or a new one soon."""
        assert ex.up_head is not None
        if target.protocol == "h2":
            self._acquire_h2(target, ex, fresh)
            return
        key = target.key
        lst = self.idle.get(key)
        while lst and not fresh:
            c = lst.pop()
            if c.usable:
                c.bind(ex, ex.up_head, reused=True)
                return
        if self.open.get(key, 0) < self.settings.pool_max_connections:
            self.open[key] = self.open.get(key, 0) + 1
            self._spawn(self._connect_h1(target, ex))
            return
        waiting = self.pending.setdefault(key, deque())
        if len(waiting) >= self.settings.pool_max_pending:
            ex.overflow()
            return
        waiting.append((target, ex))

    def _next_pending(self, key: str) -> tuple[UpstreamTarget, Exchange] | None:
        waiting = self.pending.get(key)
        while waiting:
            target, ex = waiting.popleft()
            if not ex.done:
                return target, ex
        self.pending.pop(key, None)
        return None

    def closed(self, c: H1Client) -> None:
        """An HTTP/1.1 connection closed: a waiting request may open a new one."""
        self.forget(c)
        self._one_less(c.key)

    def _one_less(self, key: str) -> None:
        n = self.open.get(key, 1) - 1
        if n > 0:
            self.open[key] = n
        else:
            self.open.pop(key, None)
        nxt = self._next_pending(key)
        if nxt is not None:
            self.acquire(*nxt)

    def _spawn(self, coro: object) -> None:
        t = self.engine.loop.create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def _open(self, target: UpstreamTarget, ex: Exchange) -> object | None:
        try:
            plug = await asyncio.wait_for(target.connect(), self.settings.connect_timeout)
        except asyncio.CancelledError:
            raise
        except Exception as e:      # OSError, TimeoutError, HBONE refusals: all a connect failure
            ex.connect_failed(f"{type(e).__name__}: {e}")
            return None
        self.connections += 1
        return plug

    async def _connect_h1(self, target: UpstreamTarget, ex: Exchange) -> None:
        plug = await self._open(target, ex)
        if plug is None:
            self._one_less(target.key)
            return
        c = H1Client(self, target.key)
        plug.attach(c)  # type: ignore[attr-defined]
        if ex.done:         # the client left while we connected: keep the connection for later
            self.release(c)
            return
        assert ex.up_head is not None
        c.bind(ex, ex.up_head, reused=False)

    def release(self, c: H1Client) -> None:
        """`c` finished an exchange cleanly: keep it for the next request to its key."""
        if not c.usable:
            return
        nxt = self._next_pending(c.key)
        if nxt is not None:
            ex = nxt[1]
            assert ex.up_head is not None
            c.bind(ex, ex.up_head, reused=True)
            return
        lst = self.idle.setdefault(c.key, [])
        if len(lst) >= self.settings.pool_max_idle:
            c._close()
            return
        c.idle_since = self.engine.loop.time()
        lst.append(c)

    def forget(self, c: H1Client | H2Client) -> None:
        """`c` closed: drop it from the pool."""
        pools = self.h2 if isinstance(c, H2Client) else self.idle
        lst = pools.get(c.key)
        if lst and c in lst:
            lst.remove(c)  # type: ignore[arg-type]
            if not lst:
                del pools[c.key]

    # --- h2c ------------------------------------------------------------------------------------

    def _acquire_h2(self, target: UpstreamTarget, ex: Exchange, fresh: bool) -> None:
        for c in self.h2.get(target.key, ()):
            if c.has_capacity() and not fresh:
                c.open_stream(ex)
                return
        waiting = self._h2_connecting.get(target.key)
        if waiting is not None and not fresh:
            waiting.append(ex)
            return
        self._h2_connecting[target.key] = [ex]
        self._spawn(self._connect_h2(target, ex))

    async def _connect_h2(self, target: UpstreamTarget, ex: Exchange) -> None:
        try:
            plug = await self._open(target, ex)
        finally:
            waiting = self._h2_connecting.pop(target.key, [])
        if plug is None:
            for w in waiting:
                if w is not ex:
                    w.connect_failed("connection failure (shared h2 connect)")
            return
        c = H2Client(self, target.key, self.settings)
        plug.attach(c)  # type: ignore[attr-defined]
        self.h2.setdefault(target.key, []).append(c)
        for w in waiting:
            if not w.done:
                c.open_stream(w)

    # --- upkeep ---------------------------------------------------------------------------------

    def sweep(self, now: float) -> None:
        limit = self.settings.upstream_idle_timeout
        for key, lst in list(self.idle.items()):
            keep = []
            for c in lst:
                if now - c.idle_since > limit or not c.usable:
                    c._close()
                else:
                    keep.append(c)
            if keep:
                self.idle[key] = keep
            else:
                del self.idle[key]
        for lst in list(self.h2.values()):
            for c in list(lst):
                c.check(now)

    def close(self) -> None:
        for lst in self.idle.values():
            for c in lst:
                c._close()
        self.idle.clear()
        for lst in list(self.h2.values()):
            for c in list(lst):
                c.shutdown()
        for t in self._tasks:
            t.cancel()
        for waiting in self.pending.values():
            for _, ex in waiting:
                ex.connect_failed("shutting down")
        self.pending.clear()
