"""A sans-IO HTTP/2 connection on libnghttp2, shaped like the `h2` library's `H2Connection`.

Bytes in (`receive_data`), `h2.events` out; submissions (`send_headers`, `send_data`, ...) queue
frames that `data_to_send` returns as bytes. The surface is the subset of `H2Connection` the
waypoint uses, with the same events and exceptions (`h2.exceptions`), so the two codecs are
interchangeable behind one interface and `h2` stays the oracle in tests.

Why nghttp2: the `h2` library costs ~76 µs of Python per stream (HPACK, validation, the state
machine); nghttp2 does those in C and calls back into Python only per header field and per event.

How the h2 model maps onto nghttp2:
- flow control is the application's (`no_auto_window_update`): `acknowledge_received_data` is
  `nghttp2_session_consume`, so a paused stream's window stays closed until the data is taken;
- nghttp2 pulls DATA from a data provider when it serialises; `send_data` queues the bytes in
  Python and (re)arms the stream's provider. `local_flow_control_window` subtracts what is queued
  but not yet framed, so a caller that, like h2's users, sizes chunks by the window never queues
  more than the peer allows;
- trailers after DATA go out through the provider's `NO_END_STREAM` + `nghttp2_submit_trailer`;
- a connection error nghttp2 detects (bad preface, flow-control violation, flood, ...) makes
  `receive_data` raise `h2.exceptions.ProtocolError`, with nghttp2's GOAWAY in `data_to_send`;
  a stream error nghttp2 answers with RST_STREAM itself surfaces as `StreamReset`.
"""

from __future__ import annotations

import logging
import weakref
from collections import deque
from typing import Any

import h2.events
import h2.exceptions

from ambit.dataplane.nghttp2.ffi import ffi, lib

# bound once (one call per header field); the out-of-line `ffi`'s methods are C functions, no wrappers
_unpack = ffi.unpack
_from_handle = ffi.from_handle

log = logging.getLogger("ambit.nghttp2")

# frame types and flags (RFC 9113 §6)
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE = 0, 1, 3, 4, 6, 7, 8
FRAME_NAMES = {0: "DATA", 1: "HEADERS", 2: "PRIORITY", 3: "RST_STREAM", 4: "SETTINGS", 5: "PUSH_PROMISE", 6: "PING",
               7: "GOAWAY", 8: "WINDOW_UPDATE", 9: "CONTINUATION"}
FLAG_END_STREAM = FLAG_ACK = 0x1
HCAT_REQUEST, HCAT_RESPONSE = 0, 1
# settings ids
MAX_CONCURRENT_STREAMS, INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE, MAX_HEADER_LIST_SIZE = 3, 4, 5, 6
ENABLE_PUSH, NO_RFC7540_PRIORITIES = 2, 9
# nghttp2 return codes and data flags
ERR_DEFERRED = -508
ERR_TEMPORAL_CALLBACK_FAILURE = -521
ERR_CALLBACK_FAILURE = -902
DATA_FLAG_EOF, DATA_FLAG_NO_END_STREAM = 0x1, 0x2
PROTOCOL_ERROR, INTERNAL_ERROR = 0x1, 0x2
DEFAULT_WINDOW = 65535


class _Out:
    """One stream's DATA waiting for nghttp2 to pull it, and how the stream ends."""

    __slots__ = ("q", "pending", "armed", "deferred", "eof", "trailers", "rst_after")

    def __init__(self) -> None:
        self.q: deque[bytes] = deque()
        self.pending = 0            # bytes queued, not yet framed
        self.armed = False          # a data provider is submitted and has not signalled EOF
        self.deferred = False       # the provider said DEFERRED: resume it when data comes
        self.eof = False
        self.trailers: Any = None   # (nv array, keepalive) once trailers are queued
        self.rst_after = False      # RST_STREAM NO_ERROR once the last DATA is framed


class _RemoteSettings:
    """`conn.remote_settings.max_concurrent_streams`, as h2 spells it."""

    __slots__ = ("_s",)

    def __init__(self, session: Any) -> None:
        self._s = session

    @property
    def max_concurrent_streams(self) -> int:
        return lib().nghttp2_session_get_remote_settings(self._s, MAX_CONCURRENT_STREAMS)


def _nva(headers: list[tuple[bytes, bytes]]) -> tuple[Any, Any]:
    """A `nghttp2_nv[]` over one joined buffer (nghttp2 copies it on submit; the buffer is returned
    to be kept alive until then)."""
    buf = ffi.from_buffer(b"".join([k + v for k, v in headers]))
    init = []
    off = 0
    for k, v in headers:
        lk, lv = len(k), len(v)
        p = buf + off
        init.append((p, p + lk, lk, lv, 0))
        off += lk + lv
    return ffi.new("nghttp2_nv[]", init), buf


class NgHttp2Connection:
    """One end of an HTTP/2 connection (see the module docstring)."""

    def __init__(self, client_side: bool, *, max_concurrent_streams: int = 100,
                 initial_window: int = DEFAULT_WINDOW, max_header_list_size: int = 64 * 1024,
                 max_frame_size: int | None = None, header_list_overflow_fatal: bool = False,
                 own_flood_limits: bool = False, max_header_count: int = 2**31) -> None:
        """`max_frame_size`: SETTINGS_MAX_FRAME_SIZE to advertise (default: the protocol's 16 KiB).
        `max_header_count`: a header block with more fields (pseudo-headers included, as Envoy's
        `max_headers_count` counts them) is refused as one over `max_header_list_size` is, while it
        is decoded: HPACK lets a 1-byte field name an indexed entry, so bytes alone do not bound the
        fields (and the ~100 bytes of Python each costs) a client can make a stream hold.
        `header_list_overflow_fatal`: a header list over `max_header_list_size` ends the connection
        (`receive_data` raises) instead of resetting the stream; HBONE treats it as a flood.
        `own_flood_limits`: the caller budgets stream resets and CONTINUATION frames itself (HBONE's
        limits.py, configurable), so nghttp2's fixed limits (1000 resets then 33/s; 8 CONTINUATIONs)
        are lifted rather than cutting in first."""
        L = lib()
        self.client_side = client_side
        self.max_header_list_size = max_header_list_size
        self.max_header_count = max_header_count
        self._overflow_fatal = header_list_overflow_fatal
        self._local = [(MAX_CONCURRENT_STREAMS, max_concurrent_streams), (INITIAL_WINDOW_SIZE, initial_window),
                       (MAX_HEADER_LIST_SIZE, max_header_list_size), (NO_RFC7540_PRIORITIES, 1)]
        if max_frame_size is not None:
            self._local.append((MAX_FRAME_SIZE, max_frame_size))
        if client_side:
            self._local.append((ENABLE_PUSH, 0))
        self._events: list[Any] = []
        self._early: list[bytes] = []       # framed before `data_to_send` asked (see send_headers)
        # Something was submitted (or received) since the last `_serialise` found nothing more to
        # frame. nghttp2 queues frames only then, never on its own, so a clean session is not asked
        # again: about half of the `mem_send` calls (two cffi calls per codec action) found nothing.
        self._dirty = True
        self._pp = ffi.new("const char **")
        self._max_out_frame: int | None = None   # the peer's SETTINGS_MAX_FRAME_SIZE, until its next SETTINGS
        self._rst_ready: list[int] = []     # RST_STREAM NO_ERROR to send after what is queued
        self._hdrs: list[tuple[bytes, bytes]] = []    # the header block being received (blocks
        self._hsize = 0                                 # never interleave: RFC 9113 §4.3)
        self._hsid = 0
        self._out: dict[int, _Out] = {}
        self._pending = 0
        self._final: set[int] = set()       # client: streams whose final response arrived
        self._sent_head: set[int] = set()   # streams whose first HEADERS we submitted
        self._reset_seen: set[int] = set()
        self._known: set[int] = set()       # streams the application knows (it submitted or got HEADERS)
        self._goaway_recv = False
        self._terminated = False
        self._error: str | None = None
        # Frames nghttp2 found invalid and answered itself (a malformed request: RST_STREAM), so a
        # caller that budgets the resets a peer causes (HBONE) can count them.
        self.invalid_frames = 0
        # The session's callbacks find this object through a handle. A handle to the object itself
        # would keep it alive (it is stored here): a reference cycle per connection that only the
        # cyclic collector frees. A handle to a weak reference does not; the object is alive
        # whenever nghttp2 calls back, since only its own methods call nghttp2.
        self._handle = ffi.new_handle(weakref.ref(self))
        pp = ffi.new("nghttp2_session **")
        new = L.nghttp2_session_client_new2 if client_side else L.nghttp2_session_server_new2
        rv = new(pp, _CALLBACKS[0], self._handle, (_OPTION_OWN_LIMITS if own_flood_limits else _OPTION)[0])
        if rv != 0:
            raise MemoryError(ffi.string(L.nghttp2_strerror(rv)).decode())
        self._s = ffi.gc(pp[0], L.nghttp2_session_del)
        self._L = L
        self.remote_settings = _RemoteSettings(self._s)

    # --- h2's H2Connection surface --------------------------------------------------------------

    def initiate_connection(self) -> None:
        iv = ffi.new("nghttp2_settings_entry[]", self._local)
        self._dirty = True
        self._check(self._L.nghttp2_submit_settings(self._s, 0, iv, len(self._local)))

    def increment_flow_control_window(self, increment: int, stream_id: int | None = None) -> None:
        """Connection window only (what the waypoint uses): raise it by `increment`."""
        cur = DEFAULT_WINDOW if stream_id is None else 0
        self._dirty = True
        self._check(self._L.nghttp2_session_set_local_window_size(self._s, 0, stream_id or 0, cur + increment))

    def receive_data(self, data: bytes) -> list[Any]:
        events = self._events = []
        self._dirty = True      # it may answer (SETTINGS and PING ACKs, RST_STREAM, GOAWAY)
        rv = self._L.nghttp2_session_mem_recv(self._s, data, len(data))
        if rv < 0:
            why = ffi.string(self._L.nghttp2_strerror(rv)).decode()
            self._L.nghttp2_session_terminate_session(self._s, PROTOCOL_ERROR)
            raise h2.exceptions.ProtocolError(why)
        # A connection error nghttp2 found queues its GOAWAY and ends reading once that is framed:
        # frame it now (`data_to_send` returns it) so the error surfaces here, as in h2. (Nothing
        # framed: no GOAWAY, and no need to ask.)
        early = self._early
        before = len(early)
        self._serialise(early)
        if (len(early) != before and not self._goaway_recv and not self._terminated
                and not self._L.nghttp2_session_want_read(self._s)):
            raise h2.exceptions.ProtocolError(self._error or "HTTP/2 connection error")
        return events

    def data_to_send(self, amount: int | None = None) -> bytes:
        parts = self._early
        if parts:
            self._early = []
        else:
            parts = []
        self._serialise(parts)
        return b"".join(parts) if len(parts) != 1 else parts[0]

    def _serialise(self, parts: list[bytes]) -> None:
        if not self._dirty:
            return
        L, s = self._L, self._s
        pp = self._pp
        while True:
            n = L.nghttp2_session_mem_send(s, pp)
            if n > 0:
                parts.append(_unpack(pp[0], n))
                continue
            if n < 0:
                log.info("nghttp2 send failed: %s", ffi.string(L.nghttp2_strerror(n)).decode())
            elif self._rst_ready:
                ready, self._rst_ready = self._rst_ready, []
                for sid in ready:
                    L.nghttp2_submit_rst_stream(s, 0, sid, 0)
                continue
            break
        self._dirty = False

    def get_next_available_stream_id(self) -> int:
        return self._L.nghttp2_session_get_next_stream_id(self._s)

    @property
    def max_outbound_frame_size(self) -> int:
        """Asked for every DATA frame the waypoint sends: one cffi call per SETTINGS, not per frame."""
        m = self._max_out_frame
        if m is None:
            m = self._max_out_frame = self._L.nghttp2_session_get_remote_settings(self._s, MAX_FRAME_SIZE)
        return m

    def local_flow_control_window(self, stream_id: int) -> int:
        """What may still be queued on `stream_id`: the peer's windows minus what is queued."""
        w = self._L.nghttp2_session_get_stream_remote_window_size(self._s, stream_id)
        if w < 0:
            raise h2.exceptions.StreamClosedError(stream_id)
        out = self._out.get(stream_id)
        if out is not None:
            w -= out.pending
        c = self._L.nghttp2_session_get_remote_window_size(self._s) - self._pending
        return max(0, w if w < c else c)

    def send_headers(self, stream_id: int, headers: list[tuple[bytes, bytes]], end_stream: bool = False) -> None:
        self._dirty = True
        nva, keep = _nva(headers)
        if stream_id in self._sent_head:            # trailers
            out = self._out.get(stream_id)
            if out is not None and out.armed:
                out.trailers = (nva, keep, len(headers))
                self._end(stream_id, out)
                return
            self._check(self._L.nghttp2_submit_trailer(self._s, stream_id, nva, len(headers)), stream_id)
            return
        flags = FLAG_END_STREAM if end_stream else 0
        sid = stream_id if not self.client_side else -1
        if self.client_side and stream_id != self.get_next_available_stream_id():
            raise h2.exceptions.ProtocolError(f"stream {stream_id} is not the next stream id")
        rv = self._L.nghttp2_submit_headers(self._s, flags, sid, ffi.NULL, nva, len(headers), ffi.NULL)
        self._check(rv, stream_id)
        self._sent_head.add(stream_id)
        self._known.add(stream_id)
        if self.client_side:
            # nghttp2 opens a request's stream only when it frames the HEADERS; frame them now so
            # that the stream's window exists for `send_data` (the bytes wait for `data_to_send`)
            self._serialise(self._early)

    def send_data(self, stream_id: int, data: bytes, end_stream: bool = False, pad_length: Any = None) -> None:
        out = self._out.get(stream_id)      # (`_arm`, which every path ends in, marks the codec dirty)
        if out is None:
            if self._L.nghttp2_session_get_stream_remote_window_size(self._s, stream_id) < 0:
                raise h2.exceptions.StreamClosedError(stream_id)
            out = self._out[stream_id] = _Out()
        if out.eof:
            raise h2.exceptions.StreamClosedError(stream_id)
        if data:
            out.q.append(data)
            out.pending += len(data)
            self._pending += len(data)
        if end_stream:
            self._end(stream_id, out)
        else:
            self._arm(stream_id, out)

    def acknowledge_received_data(self, acknowledged_size: int, stream_id: int) -> None:
        self._dirty = True      # a WINDOW_UPDATE may be due
        self._L.nghttp2_session_consume(self._s, stream_id, acknowledged_size)

    def reset_stream(self, stream_id: int, error_code: int = 0) -> None:
        """As in h2, the RST_STREAM follows what was already submitted on the stream. nghttp2 sends
        RST_STREAM ahead of queued DATA and drops a queued HEADERS of a stream it is resetting, so
        RST_STREAM NO_ERROR (a complete response; RFC 9113 §8.1) waits until the stream's last
        frame is framed. Any other code aborts the stream: its unsent DATA is dropped."""
        self._dirty = True
        if not error_code:
            out = self._out.get(stream_id)
            if out is not None and out.armed:
                out.rst_after = True
            else:
                self._rst_ready.append(stream_id)
            return
        self._drop_out(stream_id)
        self._check(self._L.nghttp2_submit_rst_stream(self._s, 0, stream_id, int(error_code)), stream_id)

    def ping(self, opaque_data: bytes) -> None:
        """Send a PING with these 8 bytes (h2's `ping`); its ACK comes back as `PingAckReceived`."""
        if len(opaque_data) != 8:
            raise ValueError("a PING carries 8 bytes")
        self._dirty = True
        self._check(self._L.nghttp2_submit_ping(self._s, 0, opaque_data))

    def close_connection(self, error_code: int = 0, additional_data: bytes | None = None,
                         last_stream_id: int | None = None) -> None:
        self._terminated = True
        self._dirty = True
        self._check(self._L.nghttp2_session_terminate_session(self._s, int(error_code)))

    # --- internals ------------------------------------------------------------------------------

    def _check(self, rv: int, stream_id: int | None = None) -> None:
        if rv < 0:
            why = ffi.string(self._L.nghttp2_strerror(rv)).decode()
            if stream_id is not None:
                raise h2.exceptions.StreamClosedError(stream_id) if rv in (-510, -511, -512) else \
                    h2.exceptions.ProtocolError(f"stream {stream_id}: {why}")
            raise h2.exceptions.ProtocolError(why)

    def _end(self, stream_id: int, out: _Out) -> None:
        out.eof = True
        self._arm(stream_id, out)

    def _arm(self, stream_id: int, out: _Out) -> None:
        self._dirty = True
        if not out.armed:
            out.armed = True
            out.deferred = False
            rv = self._L.nghttp2_submit_data(self._s, FLAG_END_STREAM, stream_id, _PROVIDER[0])
            if rv < 0:
                out.armed = False
                self._drop_out(stream_id)
                self._check(rv, stream_id)
        elif out.deferred:
            out.deferred = False
            self._L.nghttp2_session_resume_data(self._s, stream_id)

    def _drop_out(self, stream_id: int) -> None:
        out = self._out.pop(stream_id, None)
        if out is not None:
            self._pending -= out.pending
            out.q.clear()
            out.pending = 0

    def _read(self, stream_id: int, buf: Any, length: int, flags: Any) -> int:
        """nghttp2 pulls up to `length` bytes of DATA for `stream_id`."""
        out = self._out.get(stream_id)
        if out is None:         # reset by us: the RST_STREAM already queued closes the stream
            return ERR_DEFERRED
        q = out.q
        n = 0
        while q and n < length:
            chunk = q[0]
            take = length - n
            if len(chunk) <= take:
                q.popleft()
                take = len(chunk)
            else:
                q[0] = chunk[take:]
                chunk = chunk[:take]
            ffi.memmove(buf + n, chunk, take)
            n += take
        out.pending -= n
        self._pending -= n
        if not q:
            if out.eof:
                f = DATA_FLAG_EOF
                out.armed = False
                if out.trailers is not None:
                    f |= DATA_FLAG_NO_END_STREAM
                    nva, _keep, nvlen = out.trailers
                    self._L.nghttp2_submit_trailer(self._s, stream_id, nva, nvlen)
                flags[0] |= f
                del self._out[stream_id]
                if out.rst_after:
                    self._rst_ready.append(stream_id)
            elif n == 0:
                out.deferred = True
                return ERR_DEFERRED
        return n

    def _on_frame(self, frame: Any) -> None:
        hd = frame.hd
        t = hd.type
        sid = hd.stream_id
        ev: Any
        if t == DATA:
            if hd.flags & FLAG_END_STREAM:
                self._events.append(h2.events.StreamEnded(stream_id=sid))
        elif t == HEADERS:
            headers = self._hdrs if self._hsid == sid else []
            self._hdrs = []
            self._hsid = 0
            if self.client_side:
                status = next((v for k, v in headers if k == b":status"), b"")
                if status[:1] == b"1":
                    cls: Any = h2.events.InformationalResponseReceived
                elif sid not in self._final:
                    self._final.add(sid)
                    cls = h2.events.ResponseReceived
                else:
                    cls = h2.events.TrailersReceived
            elif frame.headers.cat == HCAT_REQUEST:
                cls = h2.events.RequestReceived
            else:
                cls = h2.events.TrailersReceived
            ev = cls(stream_id=sid, headers=headers)
            self._known.add(sid)
            self._events.append(ev)
            if hd.flags & FLAG_END_STREAM:
                end = h2.events.StreamEnded(stream_id=sid)
                if cls is not h2.events.InformationalResponseReceived:
                    ev.stream_ended = end
                self._events.append(end)
        elif t == WINDOW_UPDATE:
            self._events.append(h2.events.WindowUpdated(stream_id=sid,
                                                        delta=frame.window_update.window_size_increment))
        elif t == RST_STREAM:
            self._reset_seen.add(sid)
            self._drop_out(sid)
            self._events.append(h2.events.StreamReset(stream_id=sid, error_code=frame.rst_stream.error_code))
        elif t == SETTINGS:
            if hd.flags & FLAG_ACK:
                ev = h2.events.SettingsAcknowledged()
                ev.changed_settings = {}
            else:
                self._max_out_frame = None      # (nghttp2 applied them on receipt)
                ev = h2.events.RemoteSettingsChanged()
                st = frame.settings
                ev.changed_settings = {st.iv[i].settings_id: st.iv[i].value for i in range(st.niv)}
            self._events.append(ev)
        elif t == PING:
            if hd.flags & FLAG_ACK:         # (a PING is answered by nghttp2 itself, unseen)
                self._events.append(h2.events.PingAckReceived(ping_data=ffi.buffer(frame.ping.opaque_data)[:]))
        elif t == GOAWAY:
            self._goaway_recv = True
            g = frame.goaway
            ev = h2.events.ConnectionTerminated()
            ev.error_code = g.error_code
            ev.last_stream_id = g.last_stream_id
            ev.additional_data = ffi.unpack(g.opaque_data, g.opaque_data_len) if g.opaque_data_len else None
            self._events.append(ev)

    def _too_big(self, sid: int) -> int:
        """RFC 9113 §10.5.1: the header list is over the limit we advertised (or has too many
        fields): refuse the stream (nghttp2 answers TEMPORAL_CALLBACK_FAILURE with RST_STREAM
        INTERNAL_ERROR, as Envoy resets a stream over its limits)."""
        self._hdrs = []
        self._hsid = 0
        why = f"header list over {self.max_header_list_size} bytes or {self.max_header_count} fields"
        if self._overflow_fatal:
            self._error = f"stream {sid}: {why}"
            return ERR_CALLBACK_FAILURE
        log.info("HTTP/2 stream %d: %s, reset", sid, why)
        return ERR_TEMPORAL_CALLBACK_FAILURE

    def _on_close(self, sid: int, code: int) -> None:
        self._drop_out(sid)
        if self._hsid == sid:
            self._hdrs = []
            self._hsid = 0
        self._final.discard(sid)
        self._sent_head.discard(sid)
        known = sid in self._known
        self._known.discard(sid)
        if sid in self._reset_seen:
            self._reset_seen.discard(sid)
        elif code and known:
            self._events.append(h2.events.StreamReset(stream_id=sid, error_code=code, remote_reset=False))


# --- the callbacks, shared by every session (user_data is the connection's handle) -----------------

def _onerror(exc: Any, val: Any, tb: Any) -> None:
    log.error("nghttp2 callback failed", exc_info=(exc, val, tb))


@ffi.callback("nghttp2_on_begin_headers_callback", error=ERR_CALLBACK_FAILURE, onerror=_onerror)
def _cb_begin_headers(session: Any, frame: Any, ud: Any) -> int:
    c = _from_handle(ud)()
    c._hdrs = []
    c._hsize = 0
    c._hsid = frame.hd.stream_id
    return 0


@ffi.callback("nghttp2_on_header_callback", error=ERR_CALLBACK_FAILURE, onerror=_onerror)
def _cb_header(session: Any, frame: Any, name: Any, namelen: int, value: Any, valuelen: int, flags: int,
               ud: Any) -> int:
    c = _from_handle(ud)()
    size = c._hsize + namelen + valuelen + 32
    hdrs = c._hdrs
    if size > c.max_header_list_size or len(hdrs) >= c.max_header_count:   # checked before it is kept
        return c._too_big(frame.hd.stream_id)
    c._hsize = size
    hdrs.append((_unpack(name, namelen), _unpack(value, valuelen)))
    return 0


@ffi.callback("nghttp2_on_frame_recv_callback", error=ERR_CALLBACK_FAILURE, onerror=_onerror)
def _cb_frame(session: Any, frame: Any, ud: Any) -> int:
    _from_handle(ud)()._on_frame(frame)
    return 0


@ffi.callback("nghttp2_on_data_chunk_recv_callback", error=ERR_CALLBACK_FAILURE, onerror=_onerror)
def _cb_data(session: Any, flags: int, sid: int, data: Any, length: int, ud: Any) -> int:
    _from_handle(ud)()._events.append(
        h2.events.DataReceived(stream_id=sid, data=ffi.unpack(data, length), flow_controlled_length=length))
    return 0


@ffi.callback("nghttp2_on_stream_close_callback", error=ERR_CALLBACK_FAILURE, onerror=_onerror)
def _cb_close(session: Any, sid: int, code: int, ud: Any) -> int:
    _from_handle(ud)()._on_close(sid, code)
    return 0


@ffi.callback("nghttp2_on_invalid_frame_recv_callback", error=ERR_CALLBACK_FAILURE, onerror=_onerror)
def _cb_invalid(session: Any, frame: Any, code: int, ud: Any) -> int:
    c = _from_handle(ud)()
    c.invalid_frames += 1
    c._error = f"invalid {FRAME_NAMES.get(frame.hd.type, 'frame')} on stream {frame.hd.stream_id}: " + \
        ffi.string(c._L.nghttp2_strerror(code)).decode()
    return 0


@ffi.callback("nghttp2_error_callback2", error=ERR_CALLBACK_FAILURE, onerror=_onerror)
def _cb_error(session: Any, code: int, msg: Any, length: int, ud: Any) -> int:
    _from_handle(ud)()._error = ffi.unpack(msg, length).decode("utf-8", "replace")
    return 0


@ffi.callback("nghttp2_data_source_read_callback", error=ERR_CALLBACK_FAILURE, onerror=_onerror)
def _cb_read(session: Any, sid: int, buf: Any, length: int, flags: Any, source: Any, ud: Any) -> int:
    return _from_handle(ud)()._read(sid, buf, length, flags)


class _Lazy(list):
    """The callbacks/option/provider structs, built on first use (so importing needs no library)."""

    def __init__(self, build: Any) -> None:
        super().__init__()
        self._build = build

    def __getitem__(self, i: Any) -> Any:
        if not len(self):
            self.append(self._build())
        return super().__getitem__(i)


def _build_callbacks() -> Any:
    L = lib()
    pp = ffi.new("nghttp2_session_callbacks **")
    if L.nghttp2_session_callbacks_new(pp) != 0:
        raise MemoryError("nghttp2_session_callbacks_new")
    cbs = pp[0]         # lives for the process: every session uses it
    L.nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, _cb_begin_headers)
    L.nghttp2_session_callbacks_set_on_header_callback(cbs, _cb_header)
    L.nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, _cb_frame)
    L.nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, _cb_data)
    L.nghttp2_session_callbacks_set_on_stream_close_callback(cbs, _cb_close)
    L.nghttp2_session_callbacks_set_error_callback2(cbs, _cb_error)
    L.nghttp2_session_callbacks_set_on_invalid_frame_recv_callback(cbs, _cb_invalid)
    return cbs


def _build_option() -> Any:
    L = lib()
    pp = ffi.new("nghttp2_option **")
    if L.nghttp2_option_new(pp) != 0:
        raise MemoryError("nghttp2_option_new")
    opt = pp[0]         # lives for the process, as the callbacks
    L.nghttp2_option_set_no_auto_window_update(opt, 1)
    return opt


def _build_option_own_limits() -> Any:
    opt = _build_option()
    L = lib()
    L.nghttp2_option_set_stream_reset_rate_limit(opt, 2**62, 2**62)
    L.nghttp2_option_set_max_continuations(opt, 2**30)
    return opt


def _build_provider() -> Any:
    prd = ffi.new("nghttp2_data_provider *")
    prd.read_callback = _cb_read
    return prd


_CALLBACKS = _Lazy(_build_callbacks)
_OPTION = _Lazy(_build_option)
_OPTION_OWN_LIMITS = _Lazy(_build_option_own_limits)
_PROVIDER = _Lazy(_build_provider)
