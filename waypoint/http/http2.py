"""HTTP/2 (h2c, prior knowledge) on both legs, with the `h2` library.

`H2Server` is one downstream connection (each stream an `Exchange`); `H2Client` one upstream
connection that multiplexes the exchanges the pool gives it.

Flow control is where an HTTP/2 proxy goes wrong, so, on both sides:
- received DATA is acknowledged (WINDOW_UPDATE) only once the other leg took it; while the other
  leg is full (`pause_*`), acknowledgements are held back, so the peer stops after one window;
- DATA to send waits in a per-stream queue for the peer's window; above `buffer_bytes` queued the
  exchange pauses the sending side's source.
So memory per stream is bounded by one window plus `buffer_bytes`, whatever the peers do.

Trailers (gRPC's `grpc-status`) pass both ways; RST_STREAM passes both ways with its error code;
`shutdown()` sends GOAWAY naming the last stream served, refuses newer streams (REFUSED_STREAM, which
clients retry elsewhere) and lets the open ones finish.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from h2.errors import ErrorCodes
from hyperframe.frame import GoAwayFrame

from waypoint.http.exchange import BODY_LENGTH, BODY_NONE, BODY_STREAM, Exchange
from waypoint.http.headers import HOP_BY_HOP, is_grpc
from waypoint.http.legs import Headers
from waypoint.request import Downstream, LocalReply, RequestHead

if TYPE_CHECKING:
    from waypoint.http.engine import Engine
    from waypoint.http.pool import Pools
    from waypoint.http.settings import HttpSettings

log = logging.getLogger("waypoint.http")

_DEFAULT_WINDOW = 65535


def _decode(headers: list[tuple[bytes, bytes]]) -> tuple[dict[str, str], Headers]:
    pseudo: dict[str, str] = {}
    out: Headers = []
    for k, v in headers:
        ks, vs = k.decode("latin-1"), v.decode("latin-1")
        if ks.startswith(":"):
            pseudo[ks] = vs
        else:
            out.append((ks, vs))
    return pseudo, out


def _encode(pseudo: list[tuple[str, str]], headers: Headers) -> list[tuple[bytes, bytes]]:
    out = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in pseudo]
    for k, v in headers:
        if k in HOP_BY_HOP and not (k == "te" and v == "trailers") or k == "host" or k.startswith(":"):
            continue
        out.append((k.encode("latin-1"), v.encode("latin-1")))
    return out


class _Stream:
    """One stream's send queue and held acknowledgements."""

    __slots__ = ("conn", "sid", "ex", "out", "out_bytes", "end_pending", "trailers", "ended", "held",
                 "paused", "blocked", "remote_ended")

    def __init__(self, conn: _H2Base, sid: int, ex: Exchange) -> None:
        self.conn = conn
        self.sid = sid
        self.ex = ex
        self.out: deque[bytes] = deque()
        self.out_bytes = 0
        self.end_pending = False
        self.trailers: Headers | None = None
        self.ended = False              # END_STREAM sent (or the stream reset)
        self.held = 0                   # received bytes not yet acknowledged (paused)
        self.paused = False
        self.blocked = False            # told the exchange to pause its source
        self.remote_ended = False

    # shared by DownLeg and UpLeg
    def send_data(self, data: bytes) -> None:
        if self.ended or not data:
            return
        self.out.append(data)
        self.out_bytes += len(data)
        self.conn.pump(self)

    def send_end(self, trailers: Headers | None) -> None:
        if self.ended or self.end_pending:
            return
        self.end_pending = True
        self.trailers = trailers
        self.conn.pump(self)

    def hold(self) -> None:
        self.paused = True

    def release(self) -> None:
        self.paused = False
        if self.held:
            n, self.held = self.held, 0
            self.conn.ack(self.sid, n)

    def reset(self, code: int) -> None:
        if not self.ended:
            self.ended = True
            self.out.clear()
            self.conn.reset(self, code)

    def on_blocked(self) -> None: ...
    def on_unblocked(self) -> None: ...


class _DownStream(_Stream):
    """A downstream stream: the exchange's DownLeg."""

    __slots__ = ()

    def send_head(self, status: int, headers: Headers, end: bool) -> None:
        if self.ended:
            return
        c = self.conn
        try:
            c.h2.send_headers(self.sid, _encode([(":status", str(status))], headers), end_stream=end)
        except h2.exceptions.H2Error as e:
            log.info("cannot send response head on stream %d: %s", self.sid, e)
            self.ended = True
            c.drop(self)
            return
        if end:
            self.ended = True
            c.drop(self)
        c.schedule_flush()

    def send_continue(self) -> None:
        pass

    def send_reset(self) -> None:
        self.reset(getattr(self.ex, "reset_code", None) or ErrorCodes.INTERNAL_ERROR)

    def pause_request(self) -> None:
        self.hold()

    def resume_request(self) -> None:
        self.release()

    def exchange_done(self, ex: object) -> None:
        if self.ended and self.sid in self.conn.streams:
            self.conn.drop(self)

    def on_blocked(self) -> None:
        self.ex.response_pause()

    def on_unblocked(self) -> None:
        self.ex.response_resume()


class _UpStream(_Stream):
    """An upstream stream: the exchange's UpLeg."""

    __slots__ = ()

    def abort(self) -> None:
        self.reset(getattr(self.ex, "reset_code", None) or ErrorCodes.CANCEL)

    def pause_response(self) -> None:
        self.hold()

    def resume_response(self) -> None:
        self.release()

    def on_blocked(self) -> None:
        self.ex.request_pause()

    def on_unblocked(self) -> None:
        self.ex.request_resume()


class _H2Base(asyncio.Protocol):
    def __init__(self, settings: HttpSettings, client_side: bool) -> None:
        self.settings = settings
        cfg = h2.config.H2Configuration(client_side=client_side, header_encoding=None)
        self.h2 = h2.connection.H2Connection(config=cfg)
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, _Stream] = {}
        self.lost = False
        self.closing = False
        self._flush_handle: asyncio.Handle | None = None
        self.loop = asyncio.get_running_loop()
        self.last = self.loop.time()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        s = self.settings
        self.h2.local_settings = h2.settings.Settings(client=self.h2.config.client_side, initial_values={
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: s.h2_max_concurrent_streams,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: s.h2_window,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: s.max_header_bytes,
        })
        self.h2.initiate_connection()
        if s.h2_window > _DEFAULT_WINDOW:
            self.h2.increment_flow_control_window(s.h2_window - _DEFAULT_WINDOW)
        self.flush()

    def data_received(self, data: bytes) -> None:
        self.last = self.loop.time()
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            log.info("HTTP/2 protocol error from %s: %s", self.peer(), e)
            self.flush()
            self._abort_all("protocol error")
            if self.transport is not None:
                self.transport.close()
            return
        for ev in events:
            try:
                self.event(ev)
            except Exception:
                log.exception("HTTP/2 event %r failed", type(ev).__name__)
        self.flush()

    def event(self, ev: h2.events.Event) -> None:
        raise NotImplementedError

    def peer(self) -> object:
        return self.transport.get_extra_info("peername") if self.transport is not None else None

    def _abort_all(self, why: str) -> None:
        raise NotImplementedError

    # --- sending --------------------------------------------------------------------------------

    def schedule_flush(self) -> None:
        if self._flush_handle is None and not self.lost:
            self._flush_handle = self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self._flush_handle = None
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.lost:
            self.transport.write(data)

    def pump(self, st: _Stream) -> None:
        """Send what the windows allow of `st`'s queue; end the stream when it is empty."""
        h = self.h2
        try:
            while st.out:
                win = min(h.local_flow_control_window(st.sid), h.max_outbound_frame_size)
                if win <= 0:
                    break
                chunk = st.out[0]
                if len(chunk) <= win:
                    st.out.popleft()
                else:
                    st.out[0] = chunk[win:]
                    chunk = chunk[:win]
                st.out_bytes -= len(chunk)
                h.send_data(st.sid, chunk)
            if not st.out and st.end_pending and not st.ended:
                st.ended = True
                if st.trailers:
                    h.send_headers(st.sid, _encode([], st.trailers), end_stream=True)
                else:
                    h.send_data(st.sid, b"", end_stream=True)
                self.sent_end(st)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError) as e:
            log.debug("stream %d closed while sending: %s", st.sid, e)
            st.ended = True
            st.out.clear()
            self.drop(st)
        limit = self.settings.buffer_bytes
        if not st.blocked and st.out_bytes > limit:
            st.blocked = True
            st.on_blocked()
        elif st.blocked and st.out_bytes <= limit // 2:
            st.blocked = False
            st.on_unblocked()
        self.schedule_flush()

    def pump_all(self) -> None:
        for st in list(self.streams.values()):
            if st.out or (st.end_pending and not st.ended):
                self.pump(st)

    def sent_end(self, st: _Stream) -> None:
        """END_STREAM went out on `st`."""

    def ack(self, sid: int, n: int) -> None:
        try:
            self.h2.acknowledge_received_data(n, sid)
        except h2.exceptions.H2Error:
            pass
        self.schedule_flush()

    def reset(self, st: _Stream, code: int) -> None:
        try:
            self.h2.reset_stream(st.sid, code)
        except h2.exceptions.H2Error:
            pass
        self.drop(st)
        self.schedule_flush()

    def drop(self, st: _Stream) -> None:
        self.streams.pop(st.sid, None)
        if st.held:
            n, st.held = st.held, 0
            self.ack(st.sid, n)
        self.maybe_done()

    def maybe_done(self) -> None:
        if self.closing and not self.streams and self.transport is not None and not self.lost:
            self.flush()
            self.transport.close()

    def received(self, st: _Stream | None, ev: h2.events.DataReceived) -> None:
        """DATA arrived; `st` took it (or is gone): acknowledge now, or later if `st` is paused."""
        n = ev.flow_controlled_length
        if st is not None and st.paused:
            st.held += n
        elif n:
            try:
                self.h2.acknowledge_received_data(n, ev.stream_id)
            except h2.exceptions.H2Error:
                pass

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class H2Server(_H2Base):
    """One downstream HTTP/2 connection (see the module docstring)."""

    def __init__(self, engine: Engine, downstream: Downstream) -> None:
        super().__init__(engine.settings, client_side=False)
        self.engine = engine
        self.downstream = downstream
        self.goaway_sid: int | None = None
        self.highest = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.engine.conns.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.engine.conns.discard(self)
        self._abort_all("connection lost")

    def _abort_all(self, why: str) -> None:
        for st in list(self.streams.values()):
            st.ended = True
            st.ex.request_abort("DC")
        self.streams.clear()

    def event(self, ev: h2.events.Event) -> None:
        if isinstance(ev, h2.events.DataReceived):
            st = self.streams.get(ev.stream_id)
            if st is not None and not st.ex.done:
                st.ex.request_data(ev.data)
            self.received(st, ev)
        elif isinstance(ev, h2.events.RequestReceived):
            self._request(ev)
        elif isinstance(ev, h2.events.StreamEnded):
            st = self.streams.get(ev.stream_id)
            if st is not None:
                st.remote_ended = True
                st.ex.request_end(None)
        elif isinstance(ev, h2.events.TrailersReceived):
            st = self.streams.get(ev.stream_id)
            if st is not None:
                st.remote_ended = True
                st.ex.request_end(_decode(ev.headers)[1])
        elif isinstance(ev, h2.events.StreamReset):
            st = self.streams.pop(ev.stream_id, None)
            if st is not None:
                st.ended = True
                st.out.clear()
                st.ex.reset_code = ev.error_code
                st.ex.request_abort("DR")
            self.maybe_done()
        elif isinstance(ev, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
            self.pump_all()
        elif isinstance(ev, h2.events.ConnectionTerminated):
            self.closing = True
            self.maybe_done()

    def _request(self, ev: h2.events.RequestReceived) -> None:
        sid = ev.stream_id
        self.highest = max(self.highest, sid)
        if self.goaway_sid is not None and sid > self.goaway_sid:
            try:
                self.h2.reset_stream(sid, ErrorCodes.REFUSED_STREAM)
            except h2.exceptions.H2Error:
                pass
            return
        pseudo, headers = _decode(ev.headers)
        authority = pseudo.get(":authority") or next((v for k, v in headers if k == "host"), "")
        headers = [(k, v) for k, v in headers if k != "host"]
        method = pseudo.get(":method", "GET")
        head = RequestHead(method, pseudo.get(":path", "/"), authority, pseudo.get(":scheme", "http"),
                           headers, "2", is_grpc(headers))
        if ev.stream_ended is not None:
            body = BODY_NONE
        elif any(k == "content-length" for k, _ in headers):
            body = BODY_LENGTH
        else:
            body = BODY_STREAM
        st = _DownStream(self, sid, None)  # type: ignore[arg-type]
        st.remote_ended = body == BODY_NONE
        ex = Exchange(self.engine, st, head, self.downstream, body=body)
        st.ex = ex
        self.streams[sid] = st
        self.engine.exchanges.add(ex)
        if method == "CONNECT":
            ex.reply(LocalReply(405, b"CONNECT is not supported", reason="CONNECT"))
            return
        ex.start()

    def sent_end(self, st: _Stream) -> None:
        if st.ex.done:
            self.drop(st)

    def drop(self, st: _Stream) -> None:
        if not st.remote_ended and st.sid in self.streams:
            # The response is complete but the request is not: ask the client to stop sending
            # (RFC 9113 §8.1: RST_STREAM NO_ERROR), or it would stall on a window nobody reopens.
            try:
                self.h2.reset_stream(st.sid, ErrorCodes.NO_ERROR)
            except h2.exceptions.H2Error:
                pass
            st.remote_ended = True
        super().drop(st)

    def check(self, now: float) -> None:
        for st in list(self.streams.values()):
            if not st.ex.done:
                st.ex.check(now)
        if not self.streams and now - self.last > self.settings.idle_timeout:
            self.shutdown()

    def shutdown(self) -> None:
        """GOAWAY (NO_ERROR) naming the last stream we will serve; close once those are done."""
        if self.lost or self.goaway_sid is not None:
            return
        self.flush()        # frames h2 already produced go first
        self.goaway_sid = self.highest
        f = GoAwayFrame(0)
        f.last_stream_id = self.highest
        f.error_code = 0
        if self.transport is not None:
            self.transport.write(f.serialize())
        self.closing = True
        self.maybe_done()


class H2Client(_H2Base):
    """One upstream h2c connection; the pool opens streams on it (`open_stream`)."""

    def __init__(self, pools: Pools, key: str, settings: HttpSettings) -> None:
        super().__init__(settings, client_side=True)
        self.pools = pools
        self.key = key
        self.waiting: deque[Exchange] = deque()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.pools.forget(self)
        self._abort_all("connection termination")

    def _abort_all(self, why: str) -> None:
        streams, self.streams = list(self.streams.values()), {}
        for st in streams:
            st.ended = True
            st.ex.upstream_reset("UC", "connection termination", retryable=False)
        waiting, self.waiting = list(self.waiting), deque()
        for ex in waiting:
            ex.upstream_reset("UC", "connection termination", retryable=True)

    def has_capacity(self) -> bool:
        if self.lost or self.closing:
            return False
        return len(self.streams) < self.h2.remote_settings.max_concurrent_streams

    def open_stream(self, ex: Exchange) -> None:
        if ex.done:
            return
        if not self.has_capacity():
            if self.lost or self.closing:
                ex.upstream_reset("UC", "connection termination", retryable=True)
            else:
                self.waiting.append(ex)
            return
        head = ex.up_head
        assert head is not None
        sid = self.h2.get_next_available_stream_id()
        pseudo = [(":method", head.method), (":scheme", head.scheme), (":authority", head.authority),
                  (":path", head.path)]
        headers = head.headers
        if ex.body == BODY_STREAM:      # from HTTP/1.1 chunked: HTTP/2 frames the body itself
            headers = [(k, v) for k, v in headers if k != "content-length"]
        end = ex.body == BODY_NONE
        st = _UpStream(self, sid, ex)
        try:
            self.h2.send_headers(sid, _encode(pseudo, headers), end_stream=end)
        except h2.exceptions.H2Error as e:
            log.info("cannot open a stream to %s: %s", self.key, e)
            ex.upstream_reset("UPE", "protocol error")
            return
        if end:
            st.ended = True
            st.end_pending = True
        self.streams[sid] = st
        self.schedule_flush()
        ex.bind(st)

    def event(self, ev: h2.events.Event) -> None:
        if isinstance(ev, h2.events.DataReceived):
            st = self.streams.get(ev.stream_id)
            if st is not None:
                st.ex.response_data(ev.data)
            self.received(st, ev)
        elif isinstance(ev, h2.events.ResponseReceived):
            st = self.streams.get(ev.stream_id)
            if st is not None:
                pseudo, headers = _decode(ev.headers)
                end = ev.stream_ended is not None
                if end:
                    st.remote_ended = True
                    if not st.ended:
                        st.reset(ErrorCodes.CANCEL)
                    self.streams.pop(st.sid, None)
                st.ex.response_head(int(pseudo.get(":status", "502")), headers, end)
                if end:
                    self._next()
                    self.maybe_done()
        elif isinstance(ev, h2.events.TrailersReceived):
            st = self.streams.get(ev.stream_id)
            if st is not None:
                st.remote_ended = True
                self._finish(st, _decode(ev.headers)[1])
        elif isinstance(ev, h2.events.StreamEnded):
            st = self.streams.get(ev.stream_id)
            if st is not None and not st.remote_ended:
                st.remote_ended = True
                self._finish(st, None)
        elif isinstance(ev, h2.events.StreamReset):
            st = self.streams.pop(ev.stream_id, None)
            if st is not None:
                st.ended = True
                st.ex.reset_code = ev.error_code
                refused = ev.error_code == ErrorCodes.REFUSED_STREAM and not st.ex.resp_started
                st.ex.upstream_reset("UR", "remote reset", retryable=refused)
            self._next()
        elif isinstance(ev, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
            self.pump_all()
            self._next()
        elif isinstance(ev, h2.events.ConnectionTerminated):
            self.closing = True
            self.pools.forget(self)
            last = ev.last_stream_id if ev.last_stream_id is not None else 0
            for sid, st in list(self.streams.items()):
                if sid > last:          # never processed: safe to send elsewhere
                    del self.streams[sid]
                    st.ended = True
                    st.ex.upstream_reset("UC", "connection termination", retryable=True)
            waiting, self.waiting = list(self.waiting), deque()
            for ex in waiting:
                self.pools.acquire(ex.target, ex, fresh=True)  # type: ignore[arg-type]
            self.maybe_done()

    def _finish(self, st: _Stream, trailers: Headers | None) -> None:
        if not st.ended:                # the server answered before the request ended: stop it
            st.reset(ErrorCodes.CANCEL)
        self.streams.pop(st.sid, None)
        st.ex.response_end(trailers)
        self._next()
        self.maybe_done()

    def sent_end(self, st: _Stream) -> None:
        if st.remote_ended:
            self.streams.pop(st.sid, None)
            self._next()

    def _next(self) -> None:
        while self.waiting and self.has_capacity():
            self.open_stream(self.waiting.popleft())

    def check(self, now: float) -> None:
        if not self.streams and not self.waiting and now - self.last > self.settings.upstream_idle_timeout:
            self.shutdown()

    def shutdown(self) -> None:
        self.closing = True
        self.pools.forget(self)
        if not self.streams and self.transport is not None and not self.lost:
            try:
                self.h2.close_connection()
            except h2.exceptions.H2Error:
                pass
            self.flush()
            self.transport.close()
