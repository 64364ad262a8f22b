"""One HBONE tunnel as an asyncio byte stream: `read()` / `write()` / `drain()` / `write_eof()` / `close()`.

Backpressure both ways:
- receive: bytes are returned to the peer's flow-control window only when `read()` hands them to
  the caller, so a caller that stops reading (e.g. because its own socket is full) stops the peer
  after one stream window;
- send: `write()` queues; the connection frames queued bytes as windows allow; `drain()` waits
  while more than `high_water` bytes are queued or the TLS transport is paused.

`read_chunk()` returns a zero-copy view of received bytes, for relays that write them straight to
another transport. Relays can go further with `attach(sink)` (push mode): received bytes are handed
to the sink as they arrive, with no queue and no task waiting on `read()`, and `pause_reading()` /
`resume_reading()` hold back the flow-control window instead (the transport contract, applied to
the tunnel).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from ambit.dataplane.hbone import frames as f
from ambit.dataplane.hbone.connection import ConnectResponse

if TYPE_CHECKING:
    from ambit.dataplane.hbone.protocol import HBONEProtocol

HIGH_WATER = 1024 * 1024


class StreamResetError(ConnectionResetError):
    """The tunnel was aborted (RST_STREAM) or its connection died."""

    def __init__(self, stream_id: int, error_code: int, remote: bool, detail: str = "") -> None:
        who = "the peer" if remote else "us"
        super().__init__(f"HBONE stream {stream_id} reset by {who} ({f.error_name(error_code)})"
                         f"{' ' + detail if detail.startswith('for ') else ': ' + detail if detail else ''}")
        self.stream_id = stream_id
        self.error_code = error_code
        self.remote = remote


class StreamSink(Protocol):
    """Receives a tunnel's events in push mode (`HBONEStream.attach`). Called from the connection's
    protocol callbacks: must not block, may call back into the stream."""

    def tunnel_data(self, data: memoryview) -> None: ...
    def tunnel_eof(self) -> None: ...
    def tunnel_error(self, exc: Exception) -> None: ...
    def tunnel_writable(self) -> None: ...


# A stream's receive or send queue while it holds nothing: no empty deque per held tunnel.
_NO_QUEUE: tuple[()] = ()


class HBONEStream:
    """A CONNECT tunnel. Create through `HBONEClientPool.connect` or receive in `HBONEServer`."""

    # One per held tunnel: slots instead of an instance dict (~270 bytes less per tunnel;
    # docs/performance.md, §66).
    __slots__ = ("_proto", "stream_id", "authority", "peer_identity", "high_water", "response",
                 "_rx", "_rx_bytes", "_rx_eof", "_tx", "_tx_bytes", "_tx_eof", "_tx_eof_sent", "_error",
                 "_responded", "_rx_waiter", "_tx_waiter", "_response_waiter", "_closed", "_closed_waiter",
                 "_close_cbs", "_sink", "_rx_paused", "_rx_held", "_sink_held")

    def __init__(self, proto: HBONEProtocol, stream_id: int, *, authority: str, peer_identity: str,
                 high_water: int = HIGH_WATER) -> None:
        self._proto = proto
        self.stream_id = stream_id
        self.authority = authority
        self.peer_identity = peer_identity
        self.high_water = high_water
        self.response: ConnectResponse | None = None
        # Pull mode only (`read()`): a stream with a sink (every relay and the waypoint) never queues
        # what it receives, so its queue is made on the first queued piece; an empty deque costs
        # ~0.7 KB per stream, ~0.7 MB per 1000 tunnels (docs/performance.md, round 9).
        self._rx: deque[memoryview] | tuple[()] = _NO_QUEUE
        self._rx_bytes = 0
        self._rx_eof = False
        # Made on a write and dropped when framed out: a held tunnel (idle between requests, or
        # a waypoint's downstream tunnel) keeps no empty deque, as for `_rx`.
        self._tx: deque[memoryview] | tuple[()] = _NO_QUEUE
        self._tx_bytes = 0
        self._tx_eof = False          # write_eof() called
        self._tx_eof_sent = False
        self._error: Exception | None = None
        self._responded = False
        self._rx_waiter: asyncio.Future[None] | None = None
        self._tx_waiter: asyncio.Future[None] | None = None
        # Futures only for someone who waits: a server's stream never waits for a response, and
        # few callers wait for the close (docs/performance.md, round 10). Neither is kept once it
        # has served: the response's waiter goes when the response is in, and `on_closed` keeps
        # plain callbacks, dropped when unregistered (ztunnel's inbound registers one for the
        # connect to the app only): a held tunnel holds no future (§76).
        self._response_waiter: asyncio.Future[ConnectResponse] | None = None
        self._closed = False
        self._closed_waiter: asyncio.Future[None] | None = None
        self._close_cbs: list[Callable[[], None]] | None = None
        self._sink: StreamSink | None = None
        self._rx_paused = False       # push mode: window updates held back while paused
        self._rx_held = 0             # push mode: bytes delivered but not yet acknowledged
        self._sink_held = False       # push mode: `writable()` said no; the sink waits for `tunnel_writable`

    def __repr__(self) -> str:
        return f"<HBONEStream {self.stream_id} {self.authority} peer={self.peer_identity}>"

    # --- reading --------------------------------------------------------------------------------

    async def read(self, n: int = -1) -> bytes:
        """Up to `n` bytes (all buffered if n < 0); b"" at EOF; raises `StreamResetError` if aborted."""
        await self._wait_readable()
        if not self._rx:
            return b""
        if n < 0 or n >= self._rx_bytes:
            views = list(self._rx)
            self._rx.clear()  # type: ignore[union-attr]
            data = b"".join(views)
        else:
            parts: list[memoryview] = []
            want = n
            while want:
                v = self._rx[0]
                if len(v) <= want:
                    parts.append(self._rx.popleft())  # type: ignore[union-attr]
                    want -= len(v)
                else:
                    parts.append(v[:want])
                    self._rx[0] = v[want:]  # type: ignore[index]
                    want = 0
            data = b"".join(parts)
        self._consumed(len(data))
        return data

    async def read_chunk(self) -> memoryview | bytes:
        """The next received piece without copying; b"" at EOF."""
        await self._wait_readable()
        if not self._rx:
            return b""
        v = self._rx.popleft()  # type: ignore[union-attr]
        self._consumed(len(v))
        return v

    # --- push mode ----------------------------------------------------------------------------------

    def attach(self, sink: StreamSink) -> None:
        """Push mode: hand received bytes, EOF and errors to `sink` as they happen (no `read()`).

        Bytes queued before the call are delivered at once, then EOF or the error if already
        there. The window is returned to the peer as soon as the sink took the bytes, unless
        `pause_reading()` is in effect: then the peer stops after one stream window.
        """
        self._sink = sink
        while self._rx:
            v = self._rx.popleft()  # type: ignore[union-attr]
            self._rx_bytes -= len(v)
            self._deliver(sink, v)
        if self._error is not None:
            sink.tunnel_error(self._error)
        elif self._rx_eof:
            sink.tunnel_eof()

    def detach(self) -> None:
        """End push mode once the sink is done with the stream (it is closed or reset).

        Why: the sink (a relay) and the stream refer to each other. Left linked, every finished
        tunnel is a reference cycle that only the cyclic collector frees, with its transports and
        buffers, and each collection then walks all of them: pauses in the latency tail."""
        self._sink = None

    def pause_reading(self) -> None:
        """Push mode: stop returning window to the peer (its sends stop after one window)."""
        self._rx_paused = True

    def resume_reading(self) -> None:
        self._rx_paused = False
        if self._rx_held and self._error is None:
            n, self._rx_held = self._rx_held, 0
            self._proto.acknowledge(self.stream_id, n)

    def writable(self) -> bool:
        """True if `drain()` would return at once: below `high_water` and the connection not paused."""
        ok = self._error is None and self._tx_bytes <= self.high_water and not self._proto.write_paused
        if not ok:
            self._sink_held = True    # the sink (relay) holds back now: wake it when there is room
        return ok

    def _deliver(self, sink: StreamSink, v: memoryview) -> None:
        sink.tunnel_data(v)
        if self._rx_paused:
            self._rx_held += len(v)
        elif self._error is None:
            self._proto.acknowledge(self.stream_id, len(v))

    async def readexactly(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            chunk = await self.read(n - len(out))
            if not chunk:
                raise asyncio.IncompleteReadError(bytes(out), n)
            out += chunk
        return bytes(out)

    async def _wait_readable(self) -> None:
        while not self._rx and not self._rx_eof:
            if self._error is not None:
                raise self._error
            self._rx_waiter = self._proto.loop.create_future()
            try:
                await self._rx_waiter
            finally:
                self._rx_waiter = None
        if self._error is not None and not self._rx:
            raise self._error

    def _consumed(self, n: int) -> None:
        self._rx_bytes -= n
        self._proto.acknowledge(self.stream_id, n)

    # --- writing --------------------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> bool:
        """Queue bytes for the peer. Mutable buffers are copied; `bytes` are sent by reference.

        Returns what `writable()` would say next (and, if False, the sink is woken when there is
        room, as after `writable()`): a relay learns whether to hold back without a second call."""
        if self._error is not None:
            raise self._error
        if self._tx_eof:
            raise RuntimeError(f"{self!r}: write after write_eof()")
        if not data:
            return self.writable()
        view = memoryview(data if isinstance(data, bytes) else bytes(data))
        tx = self._tx
        if tx is _NO_QUEUE:
            # Nothing of ours is queued ahead of it: the connection may frame it at once (§69).
            n = self._proto.send_now(self, view)
            if n == len(view):
                return True     # (framed: nothing queued, and the transport was not paused)
            if n:
                view = view[n:]
            tx = self._tx = deque()
        tx.append(view)  # type: ignore[union-attr]
        self._tx_bytes += len(view)
        self._proto.push(self)
        return self.writable()

    async def drain(self) -> None:
        """Wait until the queue is below `high_water` and the connection can take more."""
        while True:
            if self._error is not None:
                raise self._error
            if self._tx_bytes <= self.high_water and not self._proto.write_paused:
                return
            self._tx_waiter = self._proto.loop.create_future()
            try:
                await self._tx_waiter
            finally:
                self._tx_waiter = None

    def write_eof(self) -> None:
        """Half-close: the peer reads EOF after everything written so far. Reading continues."""
        if self._tx_eof or self._error is not None:
            return
        self._tx_eof = True
        self._proto.push(self)

    def can_write_eof(self) -> bool:
        return True

    def reset(self, error_code: int = f.CANCEL) -> None:
        """Abort the tunnel (RST_STREAM); queued and unread bytes are dropped."""
        if self._error is None:
            self._proto.reset(self, error_code)

    def close(self) -> None:
        """Finish the tunnel: graceful if the peer already ended its side, otherwise a reset.

        A relay calls `write_eof()` when its local side ends and `close()` when both sides are done.
        """
        if self._error is not None or self._closed:
            return
        if self._rx_eof:
            self.write_eof()
        else:
            self.reset(f.CANCEL)

    def on_closed(self, cb: Callable[[], None]) -> Callable[[], None]:
        """Call `cb` from the loop (`call_soon`, never from inside the close) once the stream is
        closed or reset, or soon now if it already is; returns a function that unregisters it. Lets
        a server cancel work for a tunnel the peer gave up on."""
        if self._closed:
            return self._proto.loop.call_soon(cb).cancel
        cbs = self._close_cbs
        if cbs is None:
            cbs = self._close_cbs = []
        cbs.append(cb)

        def unregister() -> None:
            left = self._close_cbs
            if left is not None and cb in left:
                left.remove(cb)
                if not left:
                    self._close_cbs = None
        return unregister

    async def wait_closed(self) -> None:
        await asyncio.shield(self._closed_future())

    @property
    def is_closed(self) -> bool:
        return self._closed

    @property
    def error(self) -> Exception | None:
        """Why the tunnel was aborted, if it was: a `StreamResetError` says who reset it and why."""
        return self._error

    def _closed_future(self) -> asyncio.Future[None]:
        fut = self._closed_waiter
        if fut is None:
            fut = self._closed_waiter = self._proto.loop.create_future()
            if self._closed:
                fut.set_result(None)
        return fut

    def get_extra_info(self, name: str, default: object = None) -> object:
        """The underlying TLS transport's info (`ssl_object`, `peername`, `sockname`, ...)."""
        t = self._proto.transport
        return t.get_extra_info(name, default) if t is not None else default

    # --- server side ---------------------------------------------------------------------------------

    def respond(self, status: int = 200, reason: str = "", headers: list[tuple[str, str]] | None = None) -> None:
        """Server: answer the CONNECT; 200 opens the tunnel, anything else refuses it."""
        if self._responded:
            raise RuntimeError(f"{self!r}: already responded")
        if self._error is not None:
            raise self._error
        self._responded = True
        self._proto.respond(self, status, reason, headers)

    @property
    def responded(self) -> bool:
        return self._responded

    @property
    def attached(self) -> bool:
        """A sink took the tunnel over (push mode, `attach`)."""
        return self._sink is not None

    # --- the connection's side of the contract ------------------------------------------------------
    # HBONEProtocol (its only caller) drives a stream through these methods and nothing else: it
    # hands over what arrived (`feed`, `feed_eof`, `set_response`, `abort`) and pulls what the stream
    # has queued to send (`outgoing`, `sent`, `eof_to_send`, `eof_sent`, `drained`). A second user of
    # streams (the waypoint) relies on the same contract, so no class reaches into the other.

    def feed(self, data: memoryview) -> None:
        """DATA arrived for this stream: push it to the sink, or queue it for `read()`."""
        sink = self._sink
        if sink is not None:
            self._deliver(sink, data)
            return
        rx = self._rx
        if rx is _NO_QUEUE:
            rx = self._rx = deque()
        rx.append(data)  # type: ignore[union-attr]
        self._rx_bytes += len(data)
        self._wake_reader()

    def feed_eof(self) -> None:
        """END_STREAM arrived: the peer sends nothing more."""
        self._rx_eof = True
        self._wake_reader()
        self._maybe_closed()
        if self._sink is not None:
            self._sink.tunnel_eof()

    def set_response(self, resp: ConnectResponse) -> None:
        """The CONNECT's response arrived (client side)."""
        self.response = resp
        w = self._response_waiter
        if w is not None:
            self._response_waiter = None    # (its waiter holds it while it wakes)
            if not w.done():
                w.set_result(resp)

    async def wait_response(self) -> ConnectResponse:
        """The CONNECT's response (client side); raises `StreamResetError` if the stream died first."""
        if self.response is not None:
            return self.response
        if self._error is not None:
            raise self._error
        w = self._response_waiter
        if w is None:
            w = self._response_waiter = self._proto.loop.create_future()
        return await w

    def abort(self, exc: Exception) -> int:
        """Abort: wake everyone with `exc`; returns unread bytes for the connection to reclaim."""
        first = self._error is None
        if first:
            self._error = exc
        dropped = self._rx_bytes + self._rx_held
        self._rx = _NO_QUEUE
        self._rx_bytes = 0
        self._rx_held = 0
        self._tx = _NO_QUEUE
        self._tx_bytes = 0
        self._wake_reader()
        self._wake_writer()
        w = self._response_waiter
        if w is not None:
            self._response_waiter = None
            if not w.done():
                w.set_exception(exc)
                w.exception()  # mark retrieved: nobody may be waiting
        self._set_closed()
        if first and self._sink is not None:
            self._sink.tunnel_error(exc)
        return dropped

    def outgoing(self) -> memoryview | None:
        """The next queued piece to frame, or None when nothing is queued."""
        return self._tx[0] if self._tx else None

    def sent(self, n: int) -> bool:
        """`n` bytes of `outgoing()` were framed into the connection; True if more is queued (so the
        connection need not ask `outgoing()` again to learn that the queue is empty)."""
        self._tx_bytes -= n
        tx = self._tx
        view = tx[0]
        if n == len(view):
            tx.popleft()  # type: ignore[union-attr]
            if not tx:
                self._tx = _NO_QUEUE
                return False
            return True
        tx[0] = view[n:]  # type: ignore[index]
        return True

    @property
    def eof_to_send(self) -> bool:
        """write_eof() was called and END_STREAM has not gone out yet."""
        return self._tx_eof and not self._tx_eof_sent

    def eof_sent(self) -> None:
        """END_STREAM went out."""
        self._tx_eof_sent = True
        self._maybe_closed()

    def drained(self) -> None:
        """The connection framed some of our queue: wake a writer once it is below the high water.

        Only a writer that is held back: one waiting in `drain()`, or a sink that `writable()` told
        no. In the common case (a request framed at once) nobody is, and nobody is called."""
        if self._tx_bytes <= self.high_water and (self._sink_held or self._tx_waiter is not None):
            self._wake_writer()

    def writer_may_continue(self) -> None:
        """The transport below resumed: a writer held back by it may try again."""
        self._wake_writer()

    def _maybe_closed(self) -> None:
        if self._rx_eof and self._tx_eof_sent:
            self._set_closed()

    def _set_closed(self) -> None:
        if not self._closed:
            self._closed = True
            fut = self._closed_waiter
            if fut is not None and not fut.done():
                fut.set_result(None)
            cbs = self._close_cbs
            if cbs is not None:
                self._close_cbs = None
                call_soon = self._proto.loop.call_soon
                for cb in cbs:
                    call_soon(cb)

    def _wake_reader(self) -> None:
        w = self._rx_waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _wake_writer(self) -> None:
        w = self._tx_waiter
        if w is not None and not w.done():
            w.set_result(None)
        if self._sink is not None and self._error is None:
            self._sink_held = False
            self._sink.tunnel_writable()
