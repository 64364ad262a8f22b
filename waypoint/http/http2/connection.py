"""What both ends of the engine's HTTP/2 share: header (de)coding, one stream's send queue and held
acknowledgements, and the connection base that pumps DATA within the peer's windows and flushes
once per loop iteration (the package docstring has the flow-control rules)."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from itertools import chain
from typing import TYPE_CHECKING, Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import h2.stream
from hyperframe.frame import RstStreamFrame

from ambit.dataplane.hbone.limits import DEFENSES
from ambit.dataplane.nghttp2 import NgHttp2Connection
from waypoint.http.headers import HOP_BY_HOP
from waypoint.http.injection import BAD, percent_encoded, report
from waypoint.http.legs import Headers

if TYPE_CHECKING:
    from waypoint.http.exchange import Exchange
    from waypoint.http.settings import HttpSettings

log = logging.getLogger("waypoint.http")

DEFAULT_WINDOW = 65535
# Bytes a connection may write while its transport is over the high-water mark, i.e. while the
# peer is not reading: answers to its PINGs, SETTINGS and bad frames, response heads. No DATA is
# among them (`pump` waits for `resume_writing`). Past this the peer is flooding us without
# reading (CVE-2019-9512/9515/9518) and the connection is aborted. 1 MiB is ~60,000 PING ACKs, or
# a 1 KiB response head for each of 1,024 streams; Envoy's limit is 10,000 outbound frames.
MAX_UNREAD_BYTES = 1024 * 1024
# DATA moved into the codec since the last flush: past this, `pump` flushes at once, so that the
# transport sees it and can say it is full (`pause_writing`) before more is moved. Flushed once per
# loop iteration only, as many upstream reads as one iteration delivers (5 MB under uvloop) went
# into the transport of a client that reads nothing.
FLUSH_AT = 128 * 1024


def decode_headers(headers: list[tuple[bytes, bytes]]) -> tuple[dict[str, str], Headers]:
    pseudo: dict[str, str] = {}
    out: Headers = []
    for k, v in headers:
        ks, vs = k.decode("latin-1"), v.decode("latin-1")
        if ks.startswith(":"):
            pseudo[ks] = vs
        else:
            out.append((ks, vs))
    return pseudo, out


def encode_headers(pseudo: list[tuple[str, str]], headers: Headers) -> list[tuple[bytes, bytes]]:
    """The fields of a HEADERS frame: `pseudo` then `headers` without the hop-by-hop ones. The
    last guard against header injection (waypoint/http/injection.py): nghttp2 sends what it is
    given, and a CR, LF or NUL, which an HTTP/2 peer must refuse and one that downgrades to
    HTTP/1.1 might pass on, is looked for in C (all fields joined, three scans)."""
    out = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in pseudo]
    for k, v in headers:
        if k in HOP_BY_HOP and not (k == "te" and v == "trailers") or k == "host" or k.startswith(":"):
            continue
        out.append((k.encode("latin-1"), v.encode("latin-1")))
    blob = b"".join(chain.from_iterable(out))
    if b"\n" in blob or b"\r" in blob or b"\0" in blob:
        return _mended(out)
    return out


def _mended(fields: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Fields that would inject, without it: pseudo-headers' values percent-encoded (a request has
    to keep its `:path` and `:authority`), other fields holding CR, LF or NUL left out."""
    out, dropped = [], []
    for k, v in fields:
        if k[:1] == b":":
            out.append((k, percent_encoded(v)))
        elif BAD.search(k) or BAD.search(v):
            dropped.append(k)
        else:
            out.append((k, v))
    report("HTTP/2", dropped)
    return out


class _H2Codec(h2.connection.H2Connection):
    """h2's connection with a body that disagrees with its content-length a stream error, as RFC
    9113 §8.1.1 says ("malformed ... MUST be treated as a stream error of type PROTOCOL_ERROR") and
    nghttp2 (and so Envoy) treats it: h2 raises it out of `receive_data` as a connection error,
    which failed every stream of the connection (a pooled upstream's included) for one bad one.
    The stream is reset PROTOCOL_ERROR and reported as nghttp2 reports its own resets (a
    `StreamReset` that is not remote); the frame's bytes are given back to the connection window."""

    invalid_frames = 0      # nghttp2's count of stream errors it answered unseen; h2 reports each

    def _receive_headers_frame(self, frame: Any) -> tuple[list[Any], list[h2.events.Event]]:
        """A stream over our SETTINGS_MAX_CONCURRENT_STREAMS is refused alone (RFC 9113 §5.1.2: a
        stream error, REFUSED_STREAM, as nghttp2 does); h2 raised it as a connection error, which
        ended the client's other streams (up to 1,024 in flight) with it."""
        try:
            return super()._receive_headers_frame(frame)
        except h2.exceptions.TooManyStreamsError:
            sid = frame.stream_id
            self.decoder.decode(frame.data, raw=True)       # its block still updates HPACK state
            self.highest_inbound_stream_id = max(self.highest_inbound_stream_id, sid)
            self._closed_streams[sid] = h2.stream.StreamClosedBy.SEND_RST_STREAM
            f = RstStreamFrame(sid)
            f.error_code = h2.errors.ErrorCodes.REFUSED_STREAM
            log.info("HTTP/2 stream %d: over the concurrent stream limit, refused", sid)
            return [f], []

    def _receive_data_frame(self, frame: Any) -> tuple[list[Any], list[h2.events.Event]]:
        try:
            return super()._receive_data_frame(frame)
        except h2.exceptions.InvalidBodyLengthError as e:
            sid = frame.stream_id
            log.info("HTTP/2 stream %d: %s", sid, e)
            self.reset_stream(sid, h2.errors.ErrorCodes.PROTOCOL_ERROR)
            self.acknowledge_received_data(frame.flow_controlled_length, sid)
            return [], [h2.events.StreamReset(stream_id=sid, error_code=h2.errors.ErrorCodes.PROTOCOL_ERROR,
                                              remote_reset=False)]


def new_codec(s: HttpSettings, client_side: bool) -> h2.connection.H2Connection | NgHttp2Connection:
    """The sans-IO HTTP/2 connection of `s.h2_codec`: libnghttp2 (C, the default) or the pure-Python
    `h2` library (the fallback and test oracle). Both expose h2's `H2Connection` surface and events."""
    if s.h2_codec == "nghttp2":
        return NgHttp2Connection(client_side, max_concurrent_streams=s.h2_max_concurrent_streams,
                                 initial_window=s.h2_window, max_header_list_size=s.max_header_bytes,
                                 max_header_count=s.max_headers)
    c = _H2Codec(config=h2.config.H2Configuration(client_side=client_side, header_encoding=None))
    c.local_settings = h2.settings.Settings(client=client_side, initial_values={
        h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: s.h2_max_concurrent_streams,
        h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: s.h2_window,
        h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: s.max_header_bytes,
    })
    return c


class Stream:
    """One stream's send queue and held acknowledgements."""

    __slots__ = ("conn", "sid", "ex", "out", "out_bytes", "end_pending", "trailers", "ended", "held",
                 "paused", "blocked", "remote_ended")

    def __init__(self, conn: H2Base, sid: int, ex: Exchange) -> None:
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
        n = len(data)
        self.out_bytes += n
        self.conn.queued += n
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
            self.conn.discard(self)
            self.conn.reset(self, code)

    def on_blocked(self) -> None: ...
    def on_unblocked(self) -> None: ...


def unlink(st: Stream) -> None:
    """Forget a stream's exchange once both are over: the connection has dropped the stream (no
    event reaches it) and the exchange is done (it calls no leg any more). The two refer to each
    other; left linked, every request would be a reference cycle that only the cyclic collector
    frees (docs/performance.md, round 6)."""
    ex = st.ex
    if ex is not None and ex.done and st.sid not in st.conn.streams:
        st.ex = None  # type: ignore[assignment]


class H2Base(asyncio.Protocol):
    """One h2 connection (either end): receives and dispatches events, pumps stream queues within
    the peer's windows, acknowledges received DATA when its stream is not paused."""

    def __init__(self, settings: HttpSettings, client_side: bool) -> None:
        self.settings = settings
        self.h2 = new_codec(settings, client_side)
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, Stream] = {}
        self.lost = False
        self.closing = False
        self._flush_handle: asyncio.Handle | None = None
        self.loop = asyncio.get_running_loop()
        self.last = self.loop.time()
        # The transport is over its high-water mark (the peer does not read as fast as we write):
        # no DATA goes into the codec until it drains, so a peer with a large window that never
        # reads cannot make us buffer whole responses (or, upstream, whole uploads) in the
        # transport; streams over `buffer_bytes` pause their sources instead.
        self.write_paused = False
        self.unread = 0                 # bytes written since the transport paused (`MAX_UNREAD_BYTES`)
        self.moved = 0                  # DATA bytes given to the codec since the last flush (`FLUSH_AT`)
        self.queued = 0                 # DATA bytes queued on all streams, not yet given to the codec
        self.budget = 0                 # `queued` past which streams that cannot send pause (0: no bound)
        self.over = False               # over `budget`, and not yet back under half of it

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        s = self.settings
        self.h2.initiate_connection()
        if s.h2_window > DEFAULT_WINDOW:
            self.h2.increment_flow_control_window(s.h2_window - DEFAULT_WINDOW)
        self.flush()

    def data_received(self, data: bytes) -> None:
        self.last = self.loop.time()
        h = self.h2
        invalid = h.invalid_frames
        try:
            events = h.receive_data(data)
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
        if h.invalid_frames != invalid:
            # streams nghttp2 reset itself for the peer's error, unseen (before a head was whole)
            self._reset_caused(h.invalid_frames - invalid)
        self.flush()

    def _reset_caused(self, n: int = 1) -> None:
        """The peer reset `n` streams it had not been answered on, or made us reset them for its
        protocol errors: the server budgets them (server.py); a client's upstream is not flooding."""

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
        self.moved = 0
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.lost:
            if self.write_paused:
                self.unread += len(data)
                if self.unread > MAX_UNREAD_BYTES:
                    self._flooded()
                    return
            self.transport.write(data)

    def pause_writing(self) -> None:
        self.write_paused = True
        self.unread = 0

    def resume_writing(self) -> None:
        self.write_paused = False
        self.pump_all()

    def _flooded(self) -> None:
        """The peer made us write `MAX_UNREAD_BYTES` while it read nothing: abort (a GOAWAY would
        only join what it does not read)."""
        DEFENSES["unread_flood"] += 1
        log.warning("HTTP/2 peer %s does not read: over %d bytes of answers to its frames unsent, connection "
                    "aborted", self.peer(), MAX_UNREAD_BYTES)
        self.lost = True
        self._abort_all("peer does not read")
        if self.transport is not None:
            self.transport.abort()

    def pump(self, st: Stream) -> None:
        """Send what the windows allow of `st`'s queue; end the stream when it is empty."""
        h = self.h2
        try:
            while st.out and not self.write_paused:
                win = min(h.local_flow_control_window(st.sid), h.max_outbound_frame_size)
                if win <= 0:
                    break
                chunk = st.out[0]
                if len(chunk) <= win:
                    st.out.popleft()
                else:
                    st.out[0] = chunk[win:]
                    chunk = chunk[:win]
                n = len(chunk)
                st.out_bytes -= n
                self.queued -= n
                h.send_data(st.sid, chunk)
                self.moved += n
                if self.moved > FLUSH_AT:
                    self.flush()        # (the transport may pause us: the loop then stops)
            if not st.out and st.end_pending and not st.ended:
                st.ended = True
                if st.trailers:
                    h.send_headers(st.sid, encode_headers([], st.trailers), end_stream=True)
                else:
                    h.send_data(st.sid, b"", end_stream=True)
                self.sent_end(st)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError) as e:
            log.debug("stream %d closed while sending: %s", st.sid, e)
            st.ended = True
            self.discard(st)
            self.drop(st)
        self._pace(st)
        self.schedule_flush()

    def _pace(self, st: Stream) -> None:
        """Pause or resume `st`'s source. A stream pauses over `buffer_bytes` queued; while the
        connection as a whole is over its `budget`, so does every stream that cannot send (bytes
        queued, or its window closed), and it resumes only once it can. Streams that send what
        they get are never paused by the others. Without the connection's bound a client that
        opened every stream it may with a window of 0 held up to two `buffer_bytes` per stream:
        ~250 MiB on one connection of 1,000 streams (docs/security.md)."""
        if self.budget:
            self._check_budget()
        limit = self.settings.buffer_bytes
        if st.ex is None:       # its end went out and its exchange is done (`unlink`): no source to pace
            pass
        elif not st.blocked:
            if st.out_bytes > limit or (self.over and st.out_bytes):
                st.blocked = True
                st.on_blocked()
        elif st.out_bytes <= limit // 2 and (not self.over or (not st.out_bytes and self._can_send(st))):
            st.blocked = False
            st.on_unblocked()

    def _check_budget(self) -> None:
        """Crossing the budget pauses every stream with a closed window, before its source sends
        more (one read each would still be `budget` x streams); falling to half of it resumes
        those not over `buffer_bytes` themselves."""
        if not self.over and self.queued > self.budget:
            self.over = True
            for st in list(self.streams.values()):
                if not st.blocked and st.ex is not None and not st.ended and not self._can_send(st):
                    st.blocked = True
                    st.on_blocked()
        elif self.over and self.queued <= self.budget // 2:
            self.over = False
            half = self.settings.buffer_bytes // 2
            for st in list(self.streams.values()):
                if st.blocked and st.ex is not None and st.out_bytes <= half:
                    st.blocked = False
                    st.on_unblocked()

    def _can_send(self, st: Stream) -> bool:
        try:
            return self.h2.local_flow_control_window(st.sid) > 0
        except h2.exceptions.H2Error:   # (a closed stream: nothing to send, nothing to pause)
            return True

    def discard(self, st: Stream) -> None:
        """Forget what `st` had queued (reset, closed): it no longer counts against the budget."""
        self.queued -= st.out_bytes
        st.out_bytes = 0
        st.out.clear()
        if self.budget:
            self._check_budget()

    def pump_all(self) -> None:
        for st in list(self.streams.values()):
            if st.out or st.blocked or (st.end_pending and not st.ended):
                self.pump(st)       # (a paused stream whose window opened may resume: `_pace`)

    def sent_end(self, st: Stream) -> None:
        """END_STREAM went out on `st`."""

    def ack(self, sid: int, n: int) -> None:
        try:
            self.h2.acknowledge_received_data(n, sid)
        except h2.exceptions.H2Error:
            pass
        self.schedule_flush()

    def reset(self, st: Stream, code: int) -> None:
        try:
            self.h2.reset_stream(st.sid, code)
        except h2.exceptions.H2Error:
            pass
        self.drop(st)
        self.schedule_flush()

    def drop(self, st: Stream) -> None:
        self.streams.pop(st.sid, None)
        self.settle(st)
        unlink(st)
        self.maybe_done()

    def settle(self, st: Stream) -> None:
        """`st` is over (ended, reset): acknowledge what it held back while paused. Its DATA took
        the connection's window too (RFC 9113 §6.9), which nothing else gives back: left held, a
        response that ended while its client was slow shrank the connection's window for good,
        and a pooled connection whose window reached 0 stalled every later stream on it."""
        if st.held:
            n, st.held = st.held, 0
            self.ack(st.sid, n)

    def maybe_done(self) -> None:
        if self.closing and not self.streams and self.transport is not None and not self.lost:
            self.flush()
            self.transport.close()

    def received(self, st: Stream | None, ev: h2.events.DataReceived) -> None:
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
