"""asyncio edge of one HBONE connection: TLS transport in, `HBONEConnection` events out to streams.

All protocol decisions live in the sans-IO `HBONEConnection`; this class only moves bytes, wakes
streams, and keeps transport backpressure (pause/resume_writing) and stream queues in step.
While the transport is paused nothing more is handed to it: what the connection queues meanwhile
(answers to the peer's PINGs and SETTINGS, RST_STREAMs, WINDOW_UPDATEs) waits in the connection,
which bounds the answers (`max_unsent_answers`, counted only while paused: `conn.output_paused`),
so a peer that sends without reading cannot grow the transport's buffer without end
(CVE-2019-9512/9515), while a peer that reads may send any number of PINGs in one read. Only a
graceful close hands them over regardless; a connection that failed while paused is aborted.
An error on one stream never touches the others or the connection.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from ambit.dataplane.hbone import frames as f
from ambit.dataplane.hbone import liveness
from ambit.dataplane.hbone.connection import (
    ConnectionClosed,
    ConnectRequest,
    ConnectResponse,
    Data,
    Event,
    HBONEConnection,
    HBONEError,
    StreamEnded,
    StreamReset,
    WindowAvailable,
)
from ambit.dataplane.hbone.stream import HBONEStream, StreamResetError

log = logging.getLogger("ambit.dataplane.hbone")

TURN = 1024 * 1024                  # bytes one stream may frame before the next gets a turn
# The TLS transport (uvloop's, as asyncio's) encrypts what it is handed into an OpenSSL memory BIO
# and sends from there; while the socket is full, the BIO keeps everything written since, and
# OpenSSL never shrinks a BIO. So what a connection may hand it decides what stays allocated for
# the connection's life: a flush used to frame every stream's window (4 MiB each) before writing,
# ~5-10 MB per pooled tunnel after a throughput burst (docs/performance.md, round 13). Now a flush
# writes every TLS_BATCH framed bytes and stops when the transport passes TRANSPORT_HIGH_WATER
# (uvloop's own default for TLS writes is 512 KiB); each call carries at most TLS_BATCH bytes.
TRANSPORT_HIGH_WATER = 512 * 1024
TRANSPORT_LOW_WATER = 128 * 1024
TLS_BATCH = 256 * 1024
# A write up to this size, with nothing of its stream queued ahead of it, is framed when written
# (`send_now`) instead of queued for the end of the loop iteration: most writes of a request or a
# response. Larger ones take the queue, where streams take turns.
DIRECT_MAX = 64 * 1024


class HBONEProtocol(asyncio.Protocol):
    """Bridges an (already TLS-wrapped) transport and a sans-IO `HBONEConnection`.

    Incoming bytes are buffered until `start()`, so the owner can verify the peer identity first.
    """

    def __init__(
        self,
        conn: HBONEConnection,
        *,
        loop: asyncio.AbstractEventLoop,
        on_request: Callable[[HBONEStream, dict[str, str]], None] | None = None,
        on_unusable: Callable[[HBONEProtocol], None] | None = None,
    ) -> None:
        self.conn = conn
        self.loop = loop
        self.on_request = on_request
        self.on_unusable = on_unusable      # GOAWAY or loss: the pool must stop handing us out
        self.transport: asyncio.Transport | None = None
        self.peer_identity = ""
        self.context: object | None = None      # the pool's note of the TLS context it dialled with
        self.streams: dict[int, HBONEStream] = {}
        self.write_paused = False
        self.lost = False
        self.reads = 0          # reads since the start: the liveness watch's sign of life
        self._abort_reason = ""
        self._started = False
        self._early: list[bytes] = []
        self._pushq: dict[int, HBONEStream] = {}
        self._flush_scheduled = False
        self._direct = 0        # bytes `send_now` framed since the last write to the transport
        self.closed: asyncio.Future[None] = loop.create_future()
        self.idle_since = loop.time()       # when the last stream went away (loop clock)

    # --- asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def start(self, peer_identity: str) -> None:
        """Peer verified: send our preface/SETTINGS and process anything that arrived meanwhile."""
        assert self.transport is not None
        self.peer_identity = peer_identity
        self._started = True
        try:
            self.transport.set_write_buffer_limits(TRANSPORT_HIGH_WATER, TRANSPORT_LOW_WATER)
        except (AttributeError, NotImplementedError):
            pass
        self.conn.initiate()
        self._write_out()
        liveness.watch(self)
        early, self._early = self._early, []
        for d in early:
            self.data_received(d)

    def data_received(self, data: bytes) -> None:
        if not self._started:
            self._early.append(bytes(data))
            return
        self.reads += 1
        try:
            events = self.conn.receive_data(data)
            self._dispatch(events)
            self._flush_tx()
        except Exception:  # a bug here must not leave every stream hanging
            log.exception("HBONE connection to %s: internal error", self.peer_identity)
            self.abort()
            return
        self._write_out()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        liveness.forget(self)
        detail = f"connection lost: {exc}" if exc else self._abort_reason or "connection closed"
        for st in list(self.streams.values()):
            st.abort(StreamResetError(st.stream_id, f.CANCEL, remote=True, detail=detail))
        self.streams.clear()
        self._pushq.clear()
        if self.on_unusable is not None:
            self.on_unusable(self)
        if not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        self.write_paused = self.conn.output_paused = True

    def resume_writing(self) -> None:
        self.write_paused = self.conn.output_paused = False
        self._flush_tx()
        self._write_out()
        for st in list(self.streams.values()):
            st.writer_may_continue()

    # --- used by streams, pool and server ---------------------------------------------------------------

    @property
    def usable(self) -> bool:
        return not self.lost and self.conn.can_open_stream and not self.conn.dead

    def open_stream(self, authority: str, headers: list[tuple[str, str]]) -> HBONEStream:
        sid = self.conn.open_stream(authority, headers)
        st = HBONEStream(self, sid, authority=authority, peer_identity=self.peer_identity)
        self.streams[sid] = st
        self._schedule_flush()
        return st

    def push(self, st: HBONEStream) -> None:
        """A stream has bytes (or its EOF) queued: frame them at the end of this loop iteration.

        Deferred so that everything the streams queue in one iteration (a response and its EOF, many
        tunnels' small writes) goes out as one TLS write: one record and one send() instead of one
        each. `drain()` still sees the bytes as queued, so backpressure is unchanged.
        """
        self._pushq[st.stream_id] = st
        if not self._flush_scheduled:       # `_schedule_flush`, inlined: this runs for every write
            self._flush_scheduled = True
            self.loop.call_soon(self._deferred_flush)

    def send_now(self, st: HBONEStream, view: memoryview) -> int:
        """Frame a stream's write at once; returns the bytes framed (0: none, the stream queues it).

        For a write with nothing of its stream queued ahead of it (the stream's to ask). The bytes
        still reach the transport at the end of the loop iteration, with everything else framed in
        it, so writes of many streams in one iteration still make one TLS record. Why: queueing
        the write, its stream in `_pushq` and the flush's turn over it cost about 170 bytecodes per
        DATA frame, most of a request's or response's send path (docs/performance.md, §69).

        Nothing is framed while the transport is paused, for a write over DIRECT_MAX (the queue
        gives streams turns), or once TLS_BATCH bytes wait for the transport (the queue writes them
        out in batches: what the TLS transport buffers stays bounded). A stream the connection
        refuses (reset, closed for sending) is left to the queue's flush, which drops it."""
        n = len(view)
        if self.write_paused or self.lost or n > DIRECT_MAX or self._direct >= TLS_BATCH:
            return 0
        try:
            n = self.conn.send_data(st.stream_id, view)
        except HBONEError:
            return 0
        if n:
            self._direct += n
            if not self._flush_scheduled:       # `_schedule_flush`, inlined
                self._flush_scheduled = True
                self.loop.call_soon(self._deferred_flush)
        return n

    def acknowledge(self, stream_id: int, n: int) -> None:
        """A reader consumed `n` bytes. Flushed only if that queued a WINDOW_UPDATE (one per
        quarter window), not once per read: a request's response costs no extra loop callback."""
        if self.conn.acknowledge(stream_id, n):
            self._schedule_flush()

    def respond(self, st: HBONEStream, status: int, reason: str, headers: list[tuple[str, str]] | None) -> None:
        self.conn.respond(st.stream_id, status, headers, reason)
        if status != 200:
            self._drop(st, StreamResetError(st.stream_id, f.NO_ERROR, remote=False, detail=f"refused with {status}"))
        self._schedule_flush()

    def reset(self, st: HBONEStream, code: int) -> None:
        self.conn.reset_stream(st.stream_id, code)
        self._drop(st, StreamResetError(st.stream_id, code, remote=False))
        self._schedule_flush()
        self._maybe_finish()

    def close(self, reason: str = "") -> None:
        """Graceful: GOAWAY now, close the transport once the last stream is done."""
        self.conn.close(f.NO_ERROR, reason)
        self._write_out()
        if self.on_unusable is not None:
            self.on_unusable(self)
        self._maybe_finish()

    def abort(self, reason: str = "") -> None:
        """Close at once; open streams are reset, with `reason` as their detail when given."""
        self._abort_reason = reason
        if self.transport is not None:
            self.transport.abort()

    def ping(self, payload: bytes) -> None:
        """Send a PING (8 bytes); any frame the peer sends after it counts as its answer."""
        self.conn.ping(payload)
        self._write_out()

    # --- internals ------------------------------------------------------------------------------------------

    def _dispatch(self, events: list[Event]) -> None:
        for ev in events:
            if isinstance(ev, Data):
                st = self.streams.get(ev.stream_id)
                if st is not None:
                    st.feed(ev.data)
                else:
                    self.conn.acknowledge(ev.stream_id, len(ev.data))
            elif isinstance(ev, StreamEnded):
                st = self.streams.get(ev.stream_id)
                if st is not None:
                    st.feed_eof()
                    self._forget_if_done(st)
            elif isinstance(ev, WindowAvailable):
                pass  # _flush_tx runs after every dispatch
            elif isinstance(ev, ConnectResponse):
                st = self.streams.get(ev.stream_id)
                if st is not None:
                    st.set_response(ev)
            elif isinstance(ev, ConnectRequest):
                self._on_connect_request(ev)
            elif isinstance(ev, StreamReset):
                st = self.streams.get(ev.stream_id)
                if st is not None:
                    self._drop(st, StreamResetError(ev.stream_id, ev.error_code, ev.remote, ev.reason))
            elif isinstance(ev, ConnectionClosed):
                if ev.remote:
                    log.debug("GOAWAY from %s: code %d %s", self.peer_identity, ev.error_code, ev.reason)
                elif ev.fatal:
                    log.warning("HBONE connection to %s failed: %s", self.peer_identity, ev.reason)
                else:       # retired (a server's protocol error): its streams finish, no new ones
                    log.warning("HBONE connection to %s %s", self.peer_identity, ev.reason)
                if self.on_unusable is not None:
                    self.on_unusable(self)
                if ev.fatal and self.transport is not None:
                    if self.write_paused or ev.abort:
                        # The peer does not read: its GOAWAY would wait behind all the rest, and
                        # a close with it, while we read and discard what it keeps sending.
                        self.transport.abort()
                    else:
                        self._write_out()
                        self.transport.close()
        if not self.streams:        # (`_maybe_finish` ends there when streams are open: every read)
            self._maybe_finish()

    def _on_connect_request(self, ev: ConnectRequest) -> None:
        # The request's headers go to `on_request` only: a held tunnel's stream keeps no copy (§76).
        st = HBONEStream(self, ev.stream_id, authority=ev.authority, peer_identity=self.peer_identity)
        self.streams[ev.stream_id] = st
        if self.on_request is None:
            self.respond(st, 501, "this endpoint accepts no tunnels", None)
            return
        self.on_request(st, ev.headers)

    def _drop(self, st: HBONEStream, exc: Exception) -> None:
        if self.streams.pop(st.stream_id, None) is not None and not self.streams:
            self.idle_since = self.loop.time()
        self._pushq.pop(st.stream_id, None)
        dropped = st.abort(exc)
        if dropped:
            self.conn.acknowledge(st.stream_id, dropped)  # unread bytes: give the window back

    def _forget_if_done(self, st: HBONEStream) -> None:
        if st.is_closed:
            self._pushq.pop(st.stream_id, None)
            if self.streams.pop(st.stream_id, None) is not None and not self.streams:
                self.idle_since = self.loop.time()
                # The last stream of a closing (or retired) connection may end with our own EOF:
                # nothing then reads again to close it, and no pool holds it any more.
                self._maybe_finish()

    def _flush_tx(self) -> None:
        """Frame queued stream bytes into the connection, round robin, as windows allow.

        Framed bytes go to the transport every TLS_BATCH bytes, not once at the end, so a full
        transport (`pause_writing`) stops the framing: the rest stays queued in its streams, by
        reference, instead of a whole flush's worth (all the streams' windows, MBs) landing in the
        TLS transport's memory BIO, which OpenSSL never shrinks (docs/performance.md, round 13)."""
        conn = self.conn
        progress = True
        framed = 0
        while progress and self._pushq and not self.write_paused:
            progress = False
            for sid, st in list(self._pushq.items()):
                try:
                    view = st.outgoing()
                    if view is not None:
                        n = conn.send_data(sid, view[:TURN] if len(view) > TURN else view)
                        if n:
                            progress = True
                            framed += n
                            if not st.sent(n):
                                view = None
                    if view is None:
                        del self._pushq[sid]
                        if st.eof_to_send:
                            conn.end_stream(sid)
                            st.eof_sent()
                            self._forget_if_done(st)
                except HBONEError as e:
                    self._drop(st, StreamResetError(sid, f.STREAM_CLOSED, remote=False, detail=str(e)))
                    continue
                st.drained()
                if framed >= TLS_BATCH:
                    framed = 0
                    self._write_out()
                    if self.write_paused:
                        break

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._deferred_flush)

    def _deferred_flush(self) -> None:
        self._flush_scheduled = False
        if self.lost:
            return
        try:
            self._flush_tx()
        except Exception:  # a bug here must not leave every stream hanging
            log.exception("HBONE connection to %s: internal error", self.peer_identity)
            self.abort()
            return
        self._write_out()

    def _write_out(self, last: bool = False) -> None:
        """Hand what the connection queued to the transport, unless the transport is paused (the
        connection keeps it, bounded; module docstring) and this is not the connection's `last`."""
        if self.write_paused and not last:
            return
        self._direct = 0
        out = self.conn.data_to_send()
        if out and self.transport is not None and not self.transport.is_closing():
            if sum(map(len, out)) <= TLS_BATCH:
                self.transport.writelines(out)
            else:
                for batch in tls_batches(out):
                    self.transport.writelines(batch)

    def _maybe_finish(self) -> None:
        if self.streams or self.transport is None or self.transport.is_closing():
            return
        if self.conn.closed is not None or self.conn.goaway_received is not None:
            self._write_out(last=True)
            self.transport.close()


def tls_batches(pieces: list[bytes | memoryview], limit: int = TLS_BATCH) -> list[list[bytes | memoryview]]:
    """`pieces` in order, grouped into lists of at most `limit` bytes each (a larger piece is cut
    into memoryview slices), so that no single TLS write buffers more than `limit` (TLS_BATCH)."""
    batches: list[list[bytes | memoryview]] = []
    batch: list[bytes | memoryview] = []
    size = 0
    for piece in pieces:
        n = len(piece)
        if size + n > limit and batch:
            batches.append(batch)
            batch, size = [], 0
        if n > limit:
            view = memoryview(piece)
            for start in range(0, n - limit, limit):
                batches.append([view[start:start + limit]])
            piece = view[(n - 1) // limit * limit:]
            n = len(piece)
        batch.append(piece)
        size += n
    if batch:
        batches.append(batch)
    return batches
