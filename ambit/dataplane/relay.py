"""Copy bytes both ways between two TCP connections, or a TCP connection and an HBONE tunnel.

Callback-driven (`asyncio.Protocol`), not StreamReader/StreamWriter with a task per direction:
bytes the kernel hands a `Leg` go straight to the other side's transport (or tunnel) in the same
callback. That saves, per chunk, the StreamReader's two copies and a task wake-up, and per
connection two tasks, their futures and two buffers. Nothing is held between callbacks, so an idle
connection pins no chunk.

- Backpressure: when the other side's write buffer passes its high-water mark (`pause_writing`),
  this side stops reading (`pause_reading`) until it drains (`resume_writing`). Against a tunnel:
  reading pauses while the tunnel is not `writable()`; the tunnel holds back its window while the
  app's transport is full.
- Half-close: when one side finishes sending (EOF), the other gets a FIN (`write_eof`) or, for a
  tunnel, END_STREAM, and the other direction goes on: request/response protocols that close their
  sending side early (HTTP/1.0 clients, iperf3's control flow) keep working.
- Errors on either side end both. A tunnel is reset (RST_STREAM), never the pooled connection it
  rides on.

The owner learns the byte counts when both directions are done (or one failed) in one of two
ways. It can await `wait()`, and cancelling that ends both sides. Or, as ztunnel does, it can
register a callback with `on_end()` and keep no coroutine at all; `cancel()` ends both sides.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ambit.dataplane.hbone.stream import HBONEStream

# A leg's transport pauses the other side's reading above WRITE_HIGH buffered bytes and resumes it
# below WRITE_LOW. Larger than asyncio's 64 KiB default: fewer pause/resume round trips in bulk.
WRITE_HIGH = 256 * 1024
WRITE_LOW = 64 * 1024
# Bytes a leg buffers before its relay is attached (the owner is still connecting upstream).
EARLY_LIMIT = 256 * 1024


class Leg(asyncio.Protocol):
    """One plaintext TCP connection of a relay (app <-> ztunnel, or ztunnel -> upstream/app).

    Until a relay is attached it buffers what arrives (up to `EARLY_LIMIT`, then stops reading),
    so the owner can accept, decide and connect upstream before relaying.
    """

    __slots__ = ("transport", "received", "_relay", "_early", "_early_size", "_eof", "_lost", "_lost_exc",
                 "_read_paused", "_on_made")

    def __init__(self, on_made: Callable[[Leg], None] | None = None) -> None:
        self.transport: asyncio.Transport | None = None
        self.received = 0
        self._relay: _Relay | None = None
        self._early: list[bytes] = []
        self._early_size = 0
        self._eof = False
        self._lost = False
        self._lost_exc: Exception | None = None
        self._read_paused = False
        self._on_made = on_made

    # --- asyncio.Protocol --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        try:        # (try, not contextlib.suppress: three Python calls fewer on every connection)
            self.transport.set_write_buffer_limits(WRITE_HIGH, WRITE_LOW)
        except (AttributeError, NotImplementedError):
            pass
        cb, self._on_made = self._on_made, None
        if cb is not None:
            cb(self)

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        r = self._relay
        if r is not None:
            r.leg_data(self, data)
            return
        self._early.append(data)
        self._early_size += len(data)
        if self._early_size >= EARLY_LIMIT:
            self.pause_reading()

    def eof_received(self) -> bool:
        self._eof = True
        if self._relay is not None:
            self._relay.leg_eof(self)
        return True     # keep the transport open: the other direction may still be sending

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost, self._lost_exc = True, exc
        # Unlink from the relay (it keeps its reference to us for the counts): no leg <-> relay
        # cycle outlives the connection, so plain reference counting frees both, not the collector.
        r, self._relay = self._relay, None
        if r is not None:
            r.leg_lost(self, exc)

    def pause_writing(self) -> None:
        if self._relay is not None:
            self._relay.leg_pause_writing(self)

    def resume_writing(self) -> None:
        if self._relay is not None:
            self._relay.leg_resume_writing(self)

    # --- used by relays and owners ---------------------------------------------------------------------

    def get_extra_info(self, name: str, default: object = None) -> object:
        return self.transport.get_extra_info(name, default) if self.transport is not None else default

    def pause_reading(self) -> None:
        if not self._read_paused and self.transport is not None and not self.transport.is_closing():
            self._read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._read_paused and self.transport is not None and not self.transport.is_closing():
            self._read_paused = False
            self.transport.resume_reading()

    def write(self, data: bytes | memoryview) -> None:
        t = self.transport
        if t is not None and not t.is_closing():
            t.write(data)

    def write_eof(self) -> None:
        """Half-close (FIN) if the transport can, otherwise nothing: the final close ends it."""
        t = self.transport
        if t is not None and not t.is_closing() and t.can_write_eof():
            try:
                t.write_eof()
            except (OSError, RuntimeError):
                pass

    def close(self) -> None:
        """Graceful: buffered bytes are still sent."""
        if self.transport is not None:
            self.transport.close()

    def _attach(self, relay: _Relay) -> None:
        self._relay = relay

    def _replay(self) -> None:
        """Hand the relay what arrived before it was attached."""
        relay = self._relay
        assert relay is not None
        self.resume_reading()   # first: if replaying fills the other side, the relay pauses it again
        early, self._early, self._early_size = self._early, [], 0
        for data in early:
            relay.leg_data(self, data)
        if self._eof:
            relay.leg_eof(self)
        if self._lost:
            relay.leg_lost(self, self._lost_exc)


class _Relay:
    """What legs report to; ends once, with the byte counts."""

    __slots__ = ("_loop", "_done", "over", "_on_end")

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._done: asyncio.Future[tuple[int, int]] | None = None
        self.over = False
        self._on_end: Callable[[_Relay, tuple[int, int]], None] | None = None

    def leg_data(self, leg: Leg, data: bytes) -> None: ...
    def leg_eof(self, leg: Leg) -> None: ...
    def leg_lost(self, leg: Leg, exc: Exception | None) -> None: ...
    def leg_pause_writing(self, leg: Leg) -> None: ...
    def leg_resume_writing(self, leg: Leg) -> None: ...

    def counts(self) -> tuple[int, int]:
        raise NotImplementedError

    def _end(self, failed: bool) -> None:
        if self.over:
            return
        self.over = True
        self._close(failed)
        counts = self.counts()
        cb, self._on_end = self._on_end, None
        if cb is not None:      # soon, not from inside a leg's or the tunnel's callback
            self._loop.call_soon(cb, self, counts)
        fut = self._done
        if fut is not None and not fut.done():
            fut.set_result(counts)

    def _close(self, failed: bool) -> None:
        raise NotImplementedError

    def on_end(self, cb: Callable[[_Relay, tuple[int, int]], None]) -> None:
        """Call `cb(relay, counts)` once the relay ends (soon, if it already has), with no task
        awaiting it.

        Why: a task awaiting `wait()` keeps a Task, its context and every frame of the await
        chain for as long as the connection is open (docs/performance.md, §67). The relay drops
        `cb` when it ends, so what `cb` refers to does not outlive the connection."""
        if self.over:
            self._loop.call_soon(cb, self, self.counts())
        else:
            self._on_end = cb

    def ended(self) -> asyncio.Future[tuple[int, int]]:
        """A future done with the counts once the relay ends. Made on first use: a relay whose
        end nobody awaits (see `on_end`) makes none."""
        fut = self._done
        if fut is None:
            fut = self._done = self._loop.create_future()
            if self.over:
                fut.set_result(self.counts())
        return fut

    def cancel(self) -> None:
        """End the relay now: both sides closed, a tunnel reset (a pod drained past its deadline)."""
        self._end(failed=True)

    async def wait(self) -> tuple[int, int]:
        """(bytes a->b, bytes b->a) once both directions are done or one failed. Cancelling the
        caller ends the relay (both sides closed, a tunnel reset)."""
        try:
            return await self.ended()
        except BaseException:
            self._end(failed=True)
            raise


class TCPRelay(_Relay):
    """Between two TCP connections (passthrough upstream, inbound plaintext delivery)."""

    __slots__ = ("a", "b", "_eofs")

    def __init__(self, a: Leg, b: Leg) -> None:
        super().__init__()
        self.a, self.b = a, b
        self._eofs = 0
        a._attach(self)
        b._attach(self)
        a._replay()
        b._replay()

    def _other(self, leg: Leg) -> Leg:
        return self.b if leg is self.a else self.a

    def leg_data(self, leg: Leg, data: bytes) -> None:
        if not self.over:
            self._other(leg).write(data)

    def leg_eof(self, leg: Leg) -> None:
        if self.over:
            return
        self._other(leg).write_eof()
        self._eofs += 1
        if self._eofs == 2:
            self._end(failed=False)

    def leg_lost(self, leg: Leg, exc: Exception | None) -> None:
        self._end(failed=True)

    def leg_pause_writing(self, leg: Leg) -> None:
        self._other(leg).pause_reading()

    def leg_resume_writing(self, leg: Leg) -> None:
        self._other(leg).resume_reading()

    def counts(self) -> tuple[int, int]:
        return self.a.received, self.b.received

    def _close(self, failed: bool) -> None:
        self.a.close()
        self.b.close()


class TunnelRelay(_Relay):
    """Between a local TCP connection and an HBONE tunnel, in push mode on both sides.

    App -> tunnel: the app's `bytes` are queued on the tunnel by reference. Tunnel -> app: payloads
    are written to the app as memoryviews into the TLS records they arrived in. FIN <-> END_STREAM.
    """

    __slots__ = ("app", "tunnel", "down", "_up_done", "_down_done")

    def __init__(self, app: Leg, tunnel: HBONEStream) -> None:
        super().__init__()
        self.app, self.tunnel = app, tunnel
        self.down = 0
        self._up_done = self._down_done = False
        app._attach(self)
        app._replay()
        if not self.over:
            tunnel.attach(self)

    # app side
    def leg_data(self, leg: Leg, data: bytes) -> None:
        if self.over:
            return
        try:
            writable = self.tunnel.write(data)
        except (ConnectionError, RuntimeError):
            self._end(failed=True)
            return
        if not writable:
            leg.pause_reading()

    def leg_eof(self, leg: Leg) -> None:
        if self.over or self._up_done:
            return
        self._up_done = True
        self.tunnel.write_eof()
        self._maybe_end()

    def leg_lost(self, leg: Leg, exc: Exception | None) -> None:
        if self.over:
            return
        if exc is None and not self._up_done:
            self.leg_eof(leg)       # closed without a FIN first: the app is done sending
        if exc is not None or not self._down_done:
            self._end(failed=True)

    def leg_pause_writing(self, leg: Leg) -> None:
        self.tunnel.pause_reading()

    def leg_resume_writing(self, leg: Leg) -> None:
        self.tunnel.resume_reading()

    # tunnel side (StreamSink)
    def tunnel_data(self, data: memoryview) -> None:
        if not self.over:
            self.down += len(data)
            self.app.write(data)

    def tunnel_eof(self) -> None:
        if self.over or self._down_done:
            return
        self._down_done = True
        self.app.write_eof()
        self._maybe_end()

    def tunnel_error(self, exc: Exception) -> None:
        self._end(failed=True)

    def tunnel_writable(self) -> None:
        if not self.over and self.tunnel.writable():
            self.app.resume_reading()

    def _maybe_end(self) -> None:
        if self._up_done and self._down_done:
            self._end(failed=False)

    def counts(self) -> tuple[int, int]:
        return self.app.received, self.down

    def _close(self, failed: bool) -> None:
        if failed:
            self.tunnel.reset()
        else:
            self.tunnel.close()
        self.tunnel.detach()    # nothing more to hand us; and no stream <-> relay cycle (see detach)
        self.app.close()


def relay(a: Leg, b: Leg) -> Coroutine[Any, Any, tuple[int, int]]:
    """Relay between two TCP connections; returns (bytes a->b, bytes b->a). Errors on either side
    end both directions (counted bytes are still returned).

    A plain function handing back `wait()`'s coroutine: an `async def` wrapper would add a coroutine
    frame to every held connection for the whole of its life (docs/performance.md, §66)."""
    return TCPRelay(a, b).wait()


def relay_tunnel(app: Leg, tunnel: HBONEStream) -> Coroutine[Any, Any, tuple[int, int]]:
    """Relay between a local TCP connection and an HBONE tunnel; returns (bytes app->tunnel,
    bytes tunnel->app); a plain function, as `relay`."""
    return TunnelRelay(app, tunnel).wait()
