"""HBONE connection liveness: a peer that went silent is found, and its tunnels are reset.

Why: a peer node that crashed, or a network that partitioned, sends nothing, not even a reset.
The HBONE connection to it then looks healthy: its pooled tunnels' apps hold their own sockets to
their local ztunnel, which stay up, so an idle database connection through the mesh hangs until
TCP keepalive gives up (180 s + 9 × 180 s, istio/ztunnel's socket defaults: half an hour), and
every new tunnel the pool puts on the connection waits out its timeout. istio/ztunnel PINGs every
HBONE connection, client and server side, every 10 s and drops it when a PING goes unanswered for
20 s (src/proxy/h2.rs, `do_ping_pong`). Ambit does the same, data-aware: a connection that
received anything since the last look is alive and is not pinged.

`verdict` is the decision, pure; `Watch` is its asyncio edge: one timer per event loop that looks
at every started connection each `interval`, not one timer per connection.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ambit.dataplane.hbone.protocol import HBONEProtocol

log = logging.getLogger("ambit.dataplane.hbone")

PAYLOAD = b"ambitliv"

ALIVE, PING, WAIT, DEAD = "alive", "ping", "wait", "dead"


@dataclass(frozen=True, slots=True)
class Liveness:
    interval: float = 10.0      # seconds between looks; a connection silent for one is pinged
    timeout: float = 20.0       # seconds a PING may go unanswered (and nothing else arrive)

    @property
    def enabled(self) -> bool:
        return self.interval > 0 and self.timeout > 0


def verdict(reads: int, seen: int, ping_sent_at: float | None, now: float, timeout: float) -> str:
    """What to do with a connection at a look: `reads` is its count of reads now, `seen` the count
    at the last look, `ping_sent_at` when an unanswered PING went out (None: none)."""
    if reads != seen:
        return ALIVE
    if ping_sent_at is None:
        return PING
    if now - ping_sent_at >= timeout:
        return DEAD
    return WAIT


_settings = Liveness()
_watches: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Watch] = weakref.WeakKeyDictionary()


def configure(settings: Liveness) -> None:
    """The process's liveness settings (the proxy's `--tunnel-ping-*` flags), for the connections
    started from now on."""
    global _settings
    _settings = settings
    for w in _watches.values():
        w.settings = settings


def watch(proto: HBONEProtocol) -> None:
    """Look after `proto` (a started connection) until it is lost."""
    if not _settings.enabled:
        return
    w = _watches.get(proto.loop)
    if w is None:
        w = _watches[proto.loop] = Watch(proto.loop, _settings)
    w.add(proto)


def forget(proto: HBONEProtocol) -> None:
    w = _watches.get(proto.loop)
    if w is not None:
        w.discard(proto)


class Watch:
    """Every started connection of one event loop, looked at every `settings.interval`."""

    def __init__(self, loop: asyncio.AbstractEventLoop, settings: Liveness) -> None:
        # weakly: `_watches` holds the Watch for as long as its loop lives, which a strong
        # reference from the Watch back to its key would make for ever (a leak per closed loop)
        self._loop = weakref.ref(loop)
        self.settings = settings
        # connection -> [reads at the last look, when its unanswered PING went out or None]
        self._state: dict[HBONEProtocol, list] = {}
        self._timer: asyncio.TimerHandle | None = None

    def add(self, proto: HBONEProtocol) -> None:
        self._state[proto] = [proto.reads, None]
        if self._timer is None:
            self._timer = proto.loop.call_later(self.settings.interval, self._look)

    def discard(self, proto: HBONEProtocol) -> None:
        self._state.pop(proto, None)

    def _look(self) -> None:
        self._timer = None
        loop = self._loop()
        if loop is None:
            return
        now = loop.time()
        timeout = self.settings.timeout
        for proto, state in list(self._state.items()):
            if proto.lost:
                del self._state[proto]
                continue
            v = verdict(proto.reads, state[0], state[1], now, timeout)
            if v == ALIVE:
                state[0], state[1] = proto.reads, None
            elif v == PING:
                state[1] = now
                proto.ping(PAYLOAD)
            elif v == DEAD:
                del self._state[proto]
                log.warning("HBONE connection to %s: no answer to a PING in %gs: closed, %d tunnel(s) reset",
                            proto.peer_identity or "a peer", timeout, len(proto.streams))
                proto.abort(f"the peer answered no PING in {timeout:g}s")
        if self._state and self.settings.enabled:
            self._timer = loop.call_later(self.settings.interval, self._look)
