"""Sans-IO HBONE: HTTP/2 CONNECT tunnels, with libnghttp2 for control and our own DATA path.

Why not a whole HTTP/2 library: pure-Python `h2` parses every DATA frame into objects, copies
payloads, and runs its state machine per frame; a receiving ztunnel spent a whole core on it and
topped out at 235–430 MB/s, while TLS itself does ~700 MB/s (notes/feasibility.md §5). So:

- **Receive.** We read the 9-byte frame headers ourselves. DATA payloads are handed out as
  `memoryview` slices of the bytes we were given, as they arrive (a 1 MiB frame is streamed, never
  reassembled). WINDOW_UPDATE, PING and GOAWAY are handled here too. Every other frame (HEADERS,
  CONTINUATION, SETTINGS, RST_STREAM, PRIORITY, unknown types) is passed whole to the control codec.
- **The control codec** is libnghttp2 through cffi (`ambit.dataplane.nghttp2`, the waypoint's
  HTTP/2 codec): HPACK, header validation and the stream state machine in C (issue 17, round 7:
  the `h2` library on the HEADERS path was 12–17 % of each ztunnel's CPU at new connections).
- **Send.** DATA frame headers are built here and payloads are passed through untouched.
- **Flow control** is entirely ours, for both directions. The codec never sees a non-empty DATA
  frame or a WINDOW_UPDATE, so its own windows stay at their initial values and never interfere.
- **The codec's state machine stays exact.** Stream ends travel through it: locally as an empty
  DATA frame with END_STREAM that it frames, remotely by feeding it an equivalent empty DATA frame
  once the real one has been delivered. Resets and SETTINGS are the codec's. DATA for a stream we do
  not know is judged here from the stream ids (idle: a connection error; closed: RST_STREAM
  STREAM_CLOSED, unless we reset it ourselves, RFC 9113 §5.1).
- **Settings.** We advertise our stream limit, but refuse streams over it ourselves
  (REFUSED_STREAM, counted against the reset budget): the codec would end the whole connection.
  So the SETTINGS frame on the wire is built here, and the codec's own (same values, no stream
  limit) is discarded; it takes effect in the codec when the peer acknowledges ours.
- **GOAWAY is ours**, both ways: we stop opening/accepting new streams ourselves and let existing
  streams drain; the codec never sees a GOAWAY.

**Answers a peer does not read are bounded.** PING and SETTINGS ACKs and the RST_STREAMs its
errors cost are queued until the edge takes them (`data_to_send`), which it does only while the
transport accepts writes. While it does not (the edge sets `output_paused`), more than
`max_unsent_answers` of them waiting is a flood by a peer that sends without reading
(CVE-2019-9512/9515): GOAWAY(ENHANCE_YOUR_CALM). While it does, one read may hold any number of
them (a chatty peer's 20,000 PINGs): the edge writes them out after the read.

**A stream we must reset for the peer's protocol error** (WINDOW_UPDATE of 0, DATA on a
half-closed stream, a malformed request, ...) is reported with that reason (`StreamReset.reason`).
Server side it spends the peer's reset budget as a reset it sent would ("MadeYouReset",
CVE-2025-8671): either way the peer made us set up and tear down a stream. The budget protects a
server from its clients, as Envoy's flood checks do: client side, a server that breaks the
protocol is not flooding us (it serves only the streams we open), so it is not charged; the
connection is retired instead (`ConnectionClosed`, not fatal: no new streams, the pool drops it,
and the streams in flight on it finish).

Receive windows are replenished only when the consumer says it has consumed the bytes
(`acknowledge`), so a slow reader pushes back on its sender and buffering per connection is
bounded by the connection window.

Use: feed `receive_data(bytes)`, act on the returned events, and write `data_to_send()`.
"""

from __future__ import annotations

import contextlib
import struct
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import h2.events
import h2.exceptions

from ambit.dataplane.hbone import frames as f
from ambit.dataplane.hbone import limits
from ambit.dataplane.hbone.limits import DEFENSES, Clock, ResetBudget
from ambit.dataplane.nghttp2 import NgHttp2Connection

MiB = 1024 * 1024
DEFAULT_STREAM_WINDOW = 4 * MiB
# Head-of-line headroom: a stream whose reader stalls pins up to one stream window of the
# connection window (bytes return to the connection only when its reader consumes them). With
# 16 stream windows of headroom, 15 stalled streams still leave a full window for everyone else,
# and the client pool moves new streams to another connection before that (`congested`). The
# connection window is also what one connection may make us buffer, so it is not unbounded.
DEFAULT_CONNECTION_WINDOW = 16 * DEFAULT_STREAM_WINDOW
DEFAULT_MAX_FRAME = 1 * MiB
DEFAULT_MAX_STREAMS = limits.MAX_CONCURRENT_STREAMS
_NO_CODEC_STREAM_LIMIT = 2**31 - 1   # the codec must not enforce it: it would kill the connection
_RECENT_RESETS = 256      # streams we reset, remembered so that their late DATA is dropped quietly
_PEER_ERROR = "for the peer's protocol error: "   # a `StreamReset.reason` we give
# SETTINGS ids (RFC 9113 §6.5.2)
ENABLE_PUSH, MAX_CONCURRENT_STREAMS, INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE, MAX_HEADER_LIST_SIZE = 2, 3, 4, 5, 6
_SETTING = struct.Struct(">HI")
_COALESCE = 16 * 1024     # pieces smaller than this are copied together; larger ones go out as-is
_unpack_header_at = f.HEADER.unpack_from  # (buffer, offset) -> (hi, lo, type, flags, stream id)
_pack_header = f.HEADER.pack              # (length >> 8, length & 0xFF, type, flags, stream id)

REASON_HEADER = "ambit-reason"
# What every tunnel's answer is: each client-side tunnel keeps its response for its life, so the
# bare 200's headers are one shared read-only mapping rather than a dict per tunnel (§76).
_OK_LIST = [(b":status", b"200")]
_OK_HEADERS: Mapping[str, str] = MappingProxyType({":status": "200"})


# --- events --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ConnectRequest:
    """Server side: a peer asked to open a tunnel to `authority` (`ip:port`)."""

    stream_id: int
    authority: str
    headers: dict[str, str]


@dataclass(frozen=True, slots=True)
class ConnectResponse:
    """Client side: the answer to our CONNECT. `status` 200 means the tunnel is up."""

    stream_id: int
    status: int
    headers: Mapping[str, str]      # read-only: a bare 200's is one shared mapping (`_OK_HEADERS`)

    @property
    def reason(self) -> str:
        return self.headers.get(REASON_HEADER, "")


@dataclass(slots=True)
class Data:
    """Tunnel bytes. `data` is a view into the buffer given to `receive_data`: do not mutate it.
    (Not frozen: one is made per DATA frame, and a frozen dataclass's `__init__` sets each field
    through `object.__setattr__`.)"""

    stream_id: int
    data: memoryview


@dataclass(frozen=True)
class StreamEnded:
    """The peer half-closed the stream (END_STREAM): no more data will arrive on it."""

    stream_id: int


@dataclass(frozen=True)
class StreamReset:
    """The stream is gone (RST_STREAM sent or received); `remote` says who reset it. `reason`:
    why we reset it, when it was for the peer's protocol error (so a log can say so, rather than
    blame whoever reset it)."""

    stream_id: int
    error_code: int
    remote: bool
    reason: str = ""


@dataclass(frozen=True)
class WindowAvailable:
    """Send window grew: for one stream, or (stream_id 0) for the whole connection."""

    stream_id: int


@dataclass(frozen=True)
class ConnectionClosed:
    """GOAWAY sent or received: no new streams. Streams up to `last_stream_id` may finish, unless
    `fatal` (a connection error), in which case every stream is already reset and the transport
    should be closed once `data_to_send()` is flushed. `abort`: the peer does not read what we send,
    so the transport should be aborted rather than closed (a close would wait for it to read)."""

    error_code: int
    last_stream_id: int
    reason: str
    remote: bool
    fatal: bool = False
    abort: bool = False


@dataclass(frozen=True)
class PingAck:
    data: bytes


Event = (ConnectRequest | ConnectResponse | Data | StreamEnded | StreamReset | WindowAvailable
         | ConnectionClosed | PingAck)


class HBONEError(Exception):
    """A local API misuse, e.g. sending on a stream that is closed for sending."""


# --- per-stream state ------------------------------------------------------------------------------

@dataclass(slots=True)
class _Stream:
    id: int
    send_window: int
    recv_window: int             # how much the peer may still send us
    unacked: int = 0             # consumed by the reader, not yet returned to the peer
    receiving: bool = False      # headers received (request/200 response) and no END_STREAM yet
    recv_ended: bool = False
    send_ended: bool = False
    response: int = 0            # client: status received; server: status sent


@dataclass
class _DataFrame:
    """Receive state of the DATA frame being streamed in."""

    stream: _Stream | None       # None: discard (unknown stream, or stream reset by flow control)
    flags: int
    payload_left: int
    pad_left: int = 0
    need_pad_len: bool = False


@dataclass
class _OtherFrame:
    header: bytes
    body: bytearray = field(default_factory=bytearray)
    length: int = 0


class HBONEConnection:
    """One HTTP/2 connection carrying CONNECT tunnels; see the module docstring."""

    def __init__(
        self,
        *,
        client_side: bool,
        stream_window: int = DEFAULT_STREAM_WINDOW,
        connection_window: int = DEFAULT_CONNECTION_WINDOW,
        max_frame: int = DEFAULT_MAX_FRAME,
        max_concurrent_streams: int = DEFAULT_MAX_STREAMS,
        max_header_list_size: int = limits.MAX_HEADER_LIST_SIZE,
        max_header_block: int = limits.MAX_HEADER_BLOCK,
        max_continuations: int = limits.MAX_CONTINUATIONS,
        max_unsent_answers: int = limits.MAX_UNSENT_ANSWERS,
        reset_budget: ResetBudget | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        if not f.DEFAULT_WINDOW <= stream_window <= f.MAX_WINDOW:
            raise ValueError(f"stream_window {stream_window} out of range")
        if not f.DEFAULT_WINDOW <= connection_window <= f.MAX_WINDOW:
            raise ValueError(f"connection_window {connection_window} out of range")
        if not f.DEFAULT_MAX_FRAME <= max_frame <= f.MAX_FRAME_LIMIT:
            raise ValueError(f"max_frame {max_frame} out of range")
        self.client_side = client_side
        self.stream_window = stream_window
        self.connection_window = connection_window
        # WINDOW_UPDATEs go out a quarter window at a time (`acknowledge`, run for every DATA frame)
        self._stream_ack_at = stream_window // 4
        self._conn_ack_at = connection_window // 4
        self.max_frame = max_frame
        if max_concurrent_streams < 1:
            raise ValueError(f"max_concurrent_streams {max_concurrent_streams} out of range")
        self.max_concurrent_streams = max_concurrent_streams
        self.max_header_block = max_header_block
        self.max_continuations = max_continuations
        if max_unsent_answers < 1:
            raise ValueError(f"max_unsent_answers {max_unsent_answers} out of range")
        self.max_unsent_answers = max_unsent_answers
        self._unsent_answers = 0        # answers the peer's frames made us queue while paused
        # Set by the edge while its transport takes no writes (the peer does not read): answers
        # queued meanwhile are counted against `max_unsent_answers` (`_answered`).
        self.output_paused = False
        self.reset_budget = reset_budget if reset_budget is not None else ResetBudget(clock=clock)
        self.refused_streams = 0        # streams refused over MAX_CONCURRENT_STREAMS (REFUSED_STREAM)
        self.peer_resets = 0            # RST_STREAM received

        # A header list over the limit is a flood: the connection ends, as it did with `h2`.
        self._ng = NgHttp2Connection(client_side, max_concurrent_streams=_NO_CODEC_STREAM_LIMIT,
                                     initial_window=stream_window, max_header_list_size=max_header_list_size,
                                     max_frame_size=max_frame, header_list_overflow_fatal=True,
                                     own_flood_limits=True)
        initial = [(INITIAL_WINDOW_SIZE, stream_window), (MAX_FRAME_SIZE, max_frame),
                   (MAX_CONCURRENT_STREAMS, max_concurrent_streams), (MAX_HEADER_LIST_SIZE, max_header_list_size)]
        if client_side:
            initial.append((ENABLE_PUSH, 0))
        self._initial_settings = initial
        # The peer's stream limit as the codec holds it (100 until its SETTINGS say otherwise),
        # mirrored from RemoteSettingsChanged: the pool asks `can_open_stream` for every tunnel.
        self._peer_max_streams = self._ng.remote_settings.max_concurrent_streams

        self._streams: dict[int, _Stream] = {}
        self._highest_inbound = 0       # the highest stream id the peer opened
        self._recent_resets: deque[int] = deque(maxlen=_RECENT_RESETS)
        self._peer_initial_window = f.DEFAULT_WINDOW
        self._max_out_frame = f.DEFAULT_MAX_FRAME
        self._conn_send_window = f.DEFAULT_WINDOW
        self._conn_unreturned = 0       # sent, connection window not yet given back by the peer
        self._conn_recv_window = connection_window
        self._conn_unacked = 0

        self._out: list[bytes | memoryview] = []
        self._small = bytearray()

        self._preface_left = len(f.PREFACE) if not client_side else 0
        self._preface_seen = client_side
        self._hdr = bytearray()
        self._frame: _DataFrame | _OtherFrame | None = None
        self._in_header_block = False
        self._header_block_bytes = 0
        self._continuations = 0

        self.closed: ConnectionClosed | None = None   # set once we sent GOAWAY, failed or retired
        self.goaway_received: ConnectionClosed | None = None
        self._fatal = False
        self._codec_fed = False         # fed since the last drain: `receive_data` drains only then

    # --- setup -----------------------------------------------------------------------------------

    def initiate(self) -> None:
        """Queue the preface/SETTINGS and open the connection window to its configured size."""
        self._ng.initiate_connection()
        # The codec's SETTINGS (and a client's preface) carry no stream limit: drop them and send
        # ours; the peer's one ACK applies the codec's pending settings (see the module docstring).
        self._ng.data_to_send()
        if self.client_side:
            self._emit(f.PREFACE)
        payload = b"".join(_SETTING.pack(k, v) for k, v in self._initial_settings)
        self._emit(f.pack_header(len(payload), f.SETTINGS, 0, 0) + payload)
        if self.connection_window > f.DEFAULT_WINDOW:
            self._emit(f.window_update(0, self.connection_window - f.DEFAULT_WINDOW))

    # --- output ------------------------------------------------------------------------------------

    def data_to_send(self) -> list[bytes | memoryview]:
        """Everything queued for the wire since the last call, in order (for `writelines`)."""
        if self._small:
            self._out.append(bytes(self._small))
            self._small.clear()
        out, self._out = self._out, []
        self._unsent_answers = 0
        return out

    def bytes_to_send(self) -> bytes:
        return b"".join(self.data_to_send())

    def _emit(self, piece: bytes | memoryview) -> None:
        if len(piece) < _COALESCE:
            self._small += piece
            return
        if self._small:
            self._out.append(bytes(self._small))
            self._small.clear()
        self._out.append(piece)

    def _drain_codec(self) -> None:
        self._codec_fed = False
        data = self._ng.data_to_send()
        if data:
            self._emit(data)

    # --- introspection ------------------------------------------------------------------------------

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    @property
    def can_open_stream(self) -> bool:
        return (self.closed is None and self.goaway_received is None and self.client_side
                and len(self._streams) < self._peer_max_streams)

    @property
    def preface_received(self) -> bool:
        """Server: the client's connection preface has fully arrived (client side: always True)."""
        return self._preface_seen

    @property
    def congested(self) -> bool:
        """Less than one stream window left on the connection, either way: stalled streams hold it.
        A pool should put new streams on another connection."""
        if self._conn_send_window < self._peer_initial_window and self._conn_unreturned >= self._peer_initial_window:
            return True     # (not merely the initial 64 KiB window before the peer's first update)
        held = self.connection_window - self._conn_recv_window - self._conn_unacked
        return held >= max(self.stream_window, self.connection_window - self.stream_window)

    @property
    def dead(self) -> bool:
        """A connection error happened: nothing more can be sent or received."""
        return self._fatal

    def send_window(self, stream_id: int) -> int:
        """Bytes `send_data` would accept now on this stream (0 if closed for sending)."""
        st = self._streams.get(stream_id)
        if st is None or st.send_ended or self._fatal:
            return 0
        return max(0, min(st.send_window, self._conn_send_window))

    def is_open(self, stream_id: int) -> bool:
        return stream_id in self._streams

    # --- local actions --------------------------------------------------------------------------------

    def open_stream(self, authority: str, headers: list[tuple[str, str]] | None = None) -> int:
        """Client: send `CONNECT authority` with extra headers; returns the new stream id."""
        if not self.client_side:
            raise HBONEError("only the client side opens streams")
        if not self.can_open_stream:
            why = self.closed or self.goaway_received
            raise HBONEError(f"cannot open a stream: {(why.reason or why.error_code) if why else 'stream limit'}")
        sid = self._ng.get_next_available_stream_id()
        hdrs = [(b":method", b"CONNECT"), (b":authority", authority.encode()), *_encoded(headers)]
        self._ng.send_headers(sid, hdrs, end_stream=False)
        self._drain_codec()
        self._streams[sid] = _Stream(sid, send_window=self._peer_initial_window, recv_window=self.stream_window)
        return sid

    def respond(self, stream_id: int, status: int, headers: list[tuple[str, str]] | None = None,
                reason: str = "") -> None:
        """Server: answer a CONNECT. 200 opens the tunnel; anything else ends the stream."""
        st = self._stream_or_raise(stream_id)
        if st.response:
            raise HBONEError(f"stream {stream_id}: response already sent")
        hdrs = [(b":status", str(status).encode()), *_encoded(headers)]
        if reason:
            hdrs.append((REASON_HEADER.encode(), _field_value(reason)))
        st.response = status
        if status == 200:
            self._ng.send_headers(stream_id, hdrs, end_stream=False)
            self._drain_codec()
            return
        self._ng.send_headers(stream_id, hdrs, end_stream=True)
        st.send_ended = True
        # The request body is of no use now: ask the client to stop, without an error.
        self._reset(st, f.NO_ERROR)
        self._drain_codec()

    def send_data(self, stream_id: int, data: bytes | memoryview, end_stream: bool = False) -> int:
        """Queue as much of `data` as the windows allow; returns how many bytes were taken.

        `data` must not be mutated afterwards (large payloads are queued by reference). With
        `end_stream`, END_STREAM follows once all of `data` has been taken.
        """
        st = self._streams.get(stream_id)
        if st is None:
            raise HBONEError(f"stream {stream_id} is not open")
        if st.send_ended:
            raise HBONEError(f"stream {stream_id}: already closed for sending")
        if self._fatal:
            raise HBONEError("connection is dead")
        if type(data) is memoryview and data.format == "B":
            mv = data       # a stream's queued piece: no second view
        else:
            mv = memoryview(data).cast("B") if not isinstance(data, bytes) else memoryview(data)
        n = max(0, min(len(mv), st.send_window, self._conn_send_window))  # windows may be negative
        if n and n == len(mv) and n <= self._max_out_frame:
            # The common case, one whole frame; a small one is copied next to its header at once.
            if n < _COALESCE:
                small = self._small
                small += _pack_header(n >> 8, n & 0xFF, 0, 0, stream_id)     # f.pack_header, inlined
                small += mv
            else:
                self._emit(f.pack_header(n, f.DATA, 0, stream_id))
                self._emit(mv)
            pos = n
        else:
            pos = 0
        while pos < n:
            chunk = min(n - pos, self._max_out_frame)
            self._emit(f.data_header(chunk, stream_id))
            self._emit(mv[pos:pos + chunk])
            pos += chunk
        st.send_window -= n
        self._conn_send_window -= n
        self._conn_unreturned += n
        if end_stream and n == len(mv):
            self.end_stream(stream_id)
        return n

    def end_stream(self, stream_id: int) -> None:
        """Half-close our side (END_STREAM): the peer's reader sees EOF after the data sent so far."""
        st = self._stream_or_raise(stream_id)
        if st.send_ended:
            return
        if self._peer_initial_window <= 0:
            # The codec frames even an empty DATA frame only into a positive window, and its windows
            # never move (module docstring): lend it one byte, which END_STREAM does not use.
            self._feed_codec(f.window_update(stream_id, 1 - self._peer_initial_window), [])
        self._ng.send_data(stream_id, b"", end_stream=True)
        self._drain_codec()
        st.send_ended = True
        self._maybe_forget(st)

    def reset_stream(self, stream_id: int, error_code: int = f.CANCEL) -> None:
        """Abort one stream (RST_STREAM). Other streams are unaffected. No-op if already gone."""
        st = self._streams.get(stream_id)
        if st is not None:
            self._reset(st, error_code)

    def acknowledge(self, stream_id: int, nbytes: int) -> bool:
        """The reader consumed `nbytes` of this stream: return them to the peer's send windows.

        Updates are batched (a quarter window at a time) so bulk transfer costs one small frame per
        ~1 MiB rather than one per read. Returns True if a WINDOW_UPDATE was queued: most calls
        queue nothing, and the edge then has nothing to flush (no loop callback per read).
        """
        if nbytes <= 0:
            return False
        unacked = self._conn_unacked + nbytes       # `_ack_connection`, inlined: this runs for every read
        self._conn_unacked = unacked
        queued = unacked >= self._conn_ack_at and self._ack_connection(0)
        st = self._streams.get(stream_id)
        if st is None or st.recv_ended:
            return queued
        unacked = st.unacked + nbytes
        if unacked >= self._stream_ack_at:
            self._emit(f.window_update(stream_id, unacked))
            st.recv_window += unacked
            st.unacked = 0
            return True
        st.unacked = unacked
        return queued

    def _ack_connection(self, nbytes: int) -> bool:
        self._conn_unacked += nbytes
        if self._conn_unacked >= self._conn_ack_at and not self._fatal:
            self._emit(f.window_update(0, self._conn_unacked))
            self._conn_recv_window += self._conn_unacked
            self._conn_unacked = 0
            return True
        return False

    def ping(self, payload: bytes = b"ambitpng") -> None:
        if len(payload) != 8:
            raise HBONEError("a PING carries exactly 8 bytes")
        self._emit(f.pack_header(8, f.PING, 0, 0) + payload)

    def close(self, error_code: int = f.NO_ERROR, reason: str = "") -> None:
        """Send GOAWAY. Existing streams may finish; no new ones are opened or accepted."""
        if self.closed is not None or self._fatal:
            return
        last = self._highest_inbound
        self._emit(_goaway(last, error_code, reason))
        self.closed = ConnectionClosed(error_code, last, reason, remote=False)

    # --- receive ----------------------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Event]:
        """Process bytes from the wire; returns events in wire order.

        `data` must be immutable (`bytes`): `Data` events are views into it.
        """
        if not isinstance(data, bytes):
            data = bytes(data)
        events: list[Event] = []
        if self._fatal:
            return events
        mv = memoryview(data)
        pos, n = 0, len(mv)
        if self._preface_left:
            take = min(self._preface_left, n)
            start = len(f.PREFACE) - self._preface_left
            if mv[:take] != f.PREFACE[start:start + take]:
                return self._fail(events, f.PROTOCOL_ERROR, "invalid HTTP/2 connection preface")
            self._preface_left -= take
            pos = take
            if not self._preface_left:
                self._preface_seen = True
                self._feed_codec(f.PREFACE, events)
        streams = self._streams
        while pos < n and not self._fatal:
            frame = self._frame
            if frame is None and not self._hdr and n - pos >= 9:      # f.HEADER_LEN
                # Fast path, the common case: a whole frame header here. A whole, unpadded DATA
                # frame for a stream that may receive it becomes its `Data` event at once, with no
                # per-frame receive state; anything else goes the general way below. (Literals and
                # an inline unpack: this runs for every DATA frame; f.DATA is 0, f.PADDED 0x8.)
                hi, lo, ftype, flags, sid = _unpack_header_at(data, pos)
                length = hi << 8 | lo
                end = pos + 9 + length
                if (ftype == 0 and end <= n and not flags & 0x8 and not self._in_header_block
                        and length <= self._conn_recv_window and length <= self.max_frame):
                    st = streams.get(sid & 0x7FFFFFFF)
                    if st is not None and st.receiving and length <= st.recv_window:
                        self._conn_recv_window -= length
                        st.recv_window -= length
                        if length:
                            events.append(Data(st.id, mv[pos + 9:end]))
                        pos = end
                        if flags & f.END_STREAM:
                            self._feed_codec(f.data_header(0, st.id, f.END_STREAM), events)
                        continue
                self._start_frame(data[pos:pos + 9], events)
                pos += 9
                continue
            if frame is None:
                take = min(f.HEADER_LEN - len(self._hdr), n - pos)
                self._hdr += mv[pos:pos + take]
                pos += take
                if len(self._hdr) < f.HEADER_LEN:
                    break
                header = bytes(self._hdr)
                self._hdr.clear()
                self._start_frame(header, events)
                continue
            if isinstance(frame, _DataFrame):
                pos = self._continue_data(frame, mv, pos, n, events)
            else:
                take = min(frame.length - len(frame.body), n - pos)
                frame.body += mv[pos:pos + take]
                pos += take
                if len(frame.body) == frame.length:
                    self._frame = None
                    self._finish_other(frame, events)
        if self._codec_fed and not self._fatal:
            self._drain_codec()
        return events

    def _fail(self, events: list[Event], code: int, reason: str, drain: bool = True,
              abort: bool = False) -> list[Event]:
        """Connection error: GOAWAY with `code`, stop parsing, reset every stream, tell the edge.
        `drain=False`: the codec failed, and what it queued (its own GOAWAY) is not sent.
        `abort`: the peer does not read (`ConnectionClosed.abort`)."""
        if drain and not self._fatal:
            self._drain_codec()
        last = self._highest_inbound
        self._emit(_goaway(last, code, reason))
        self._fatal = True
        self._frame = None
        self.closed = ConnectionClosed(code, last, reason, remote=False, fatal=True, abort=abort)
        for st in list(self._streams.values()):
            events.append(StreamReset(st.id, code, remote=False))
        self._streams.clear()
        events.append(self.closed)
        return events

    def _start_frame(self, header: bytes, events: list[Event]) -> None:
        length, ftype, flags, sid = f.unpack_header(header)
        if length > self.max_frame:
            self._fail(events, f.FRAME_SIZE_ERROR, f"frame of {length} bytes exceeds our maximum {self.max_frame}")
            return
        if self._in_header_block and ftype != f.CONTINUATION:
            self._fail(events, f.PROTOCOL_ERROR, "frame interleaved inside a header block")
            return
        if ftype == f.DATA:
            self._start_data(length, flags, sid, events)
            return
        if ftype in (f.HEADERS, f.PUSH_PROMISE, f.CONTINUATION):
            # Header floods: refuse the block on its frame headers, before buffering or decoding it.
            if ftype == f.CONTINUATION:
                self._continuations += 1
                self._header_block_bytes += length
            else:
                self._continuations = 0
                self._header_block_bytes = length
            if self._header_block_bytes > self.max_header_block or self._continuations > self.max_continuations:
                DEFENSES["header_flood"] += 1
                self._fail(events, f.ENHANCE_YOUR_CALM,
                           f"header block over {self.max_header_block} bytes or {self.max_continuations} CONTINUATIONs")
                return
        self._frame = _OtherFrame(header, length=length)
        if length == 0:
            self._frame = None
            self._finish_other(_OtherFrame(header, length=0), events)

    # DATA ------------------------------------------------------------------------------------------------

    def _start_data(self, length: int, flags: int, sid: int, events: list[Event]) -> None:
        if sid == 0:
            self._fail(events, f.PROTOCOL_ERROR, "DATA on stream 0")
            return
        if length > self._conn_recv_window:
            self._fail(events, f.FLOW_CONTROL_ERROR,
                       f"DATA of {length} bytes exceeds the connection window {self._conn_recv_window}")
            return
        self._conn_recv_window -= length
        st = self._streams.get(sid)
        if st is None:
            # Not ours: idle (never opened) is a connection error; closed gets RST_STREAM, unless we
            # reset it ourselves and this is DATA the peer sent before it saw that (RFC 9113 §5.1).
            if self._is_idle(sid):
                self._fail(events, f.PROTOCOL_ERROR, f"DATA on idle stream {sid}")
                return
            if sid not in self._recent_resets:
                self._emit(_rst_stream(sid, f.STREAM_CLOSED))
                self._answered(events)
            self._ack_connection(length)
            target = None
        elif not st.receiving:
            self._peer_error(st, f.STREAM_CLOSED if st.recv_ended else f.PROTOCOL_ERROR, events,
                             "DATA after END_STREAM" if st.recv_ended else "DATA before the stream was accepted")
            self._ack_connection(length)
            target = None
        elif length > st.recv_window:
            self._peer_error(st, f.FLOW_CONTROL_ERROR, events,
                             f"DATA of {length} bytes over the stream window {st.recv_window}")
            self._ack_connection(length)
            target = None
        else:
            st.recv_window -= length
            target = st
        padded = bool(flags & f.PADDED)
        frame = _DataFrame(target, flags, payload_left=length, need_pad_len=padded)
        if padded and length == 0:
            self._fail(events, f.PROTOCOL_ERROR, "padded DATA frame without a pad length")
            return
        self._frame = frame
        if length == 0:
            self._end_data(frame, events)

    def _continue_data(self, fr: _DataFrame, mv: memoryview, pos: int, n: int, events: list[Event]) -> int:
        if fr.stream is not None and self._streams.get(fr.stream.id) is not fr.stream:
            # Reset while this frame was arriving: drop the rest, but return its connection window.
            # Its padding (`pad_left`) was returned when the pad length arrived: not twice.
            fr.stream = None
            self._ack_connection(fr.payload_left)
        if fr.need_pad_len:
            pad = mv[pos]
            pos += 1
            fr.need_pad_len = False
            fr.payload_left -= 1
            if pad > fr.payload_left:
                self._fail(events, f.PROTOCOL_ERROR, "DATA padding longer than the frame")
                return n
            fr.pad_left = pad
            fr.payload_left -= pad
            if fr.stream is not None:
                self.acknowledge(fr.stream.id, 1 + pad)  # padding is never seen by the reader
        take = min(fr.payload_left, n - pos)
        if take:
            if fr.stream is not None:
                events.append(Data(fr.stream.id, mv[pos:pos + take]))
            fr.payload_left -= take
            pos += take
        if fr.payload_left == 0 and fr.pad_left:
            skip = min(fr.pad_left, n - pos)
            fr.pad_left -= skip
            pos += skip
        if fr.payload_left == 0 and fr.pad_left == 0 and not fr.need_pad_len:
            self._end_data(fr, events)
        return pos

    def _end_data(self, fr: _DataFrame, events: list[Event]) -> None:
        self._frame = None
        st = fr.stream
        if st is not None and fr.flags & f.END_STREAM and self._streams.get(st.id) is st:
            # Tell the codec about the end of stream with an empty DATA frame: its state stays exact.
            self._feed_codec(f.data_header(0, st.id, f.END_STREAM), events)

    # other frames -------------------------------------------------------------------------------------------

    def _finish_other(self, fr: _OtherFrame, events: list[Event]) -> None:
        length, ftype, flags, sid = f.unpack_header(fr.header)
        if ftype == f.WINDOW_UPDATE:
            self._window_update(length, sid, bytes(fr.body), events)
            return
        if ftype == f.GOAWAY:
            self._goaway_received(length, sid, bytes(fr.body), events)
            return
        if ftype == f.PING:
            self._ping_received(length, flags, sid, bytes(fr.body), events)
            return
        if ftype == f.PUSH_PROMISE:
            # A client never sends it; we, as a client, disabled push (SETTINGS_ENABLE_PUSH 0).
            self._fail(events, f.PROTOCOL_ERROR, "PUSH_PROMISE is not accepted")
            return
        if ftype in (f.HEADERS, f.CONTINUATION):
            self._in_header_block = not flags & f.END_HEADERS
            if ftype == f.HEADERS and not self.client_side and sid % 2 and sid > self._highest_inbound:
                self._highest_inbound = sid
        elif ftype == f.SETTINGS and not flags & f.ACK:
            self._answered(events)      # the codec ACKs it
            if self._fatal:
                return
        self._feed_codec(fr.header + bytes(fr.body), events)

    def _ping_received(self, length: int, flags: int, sid: int, body: bytes, events: list[Event]) -> None:
        if sid != 0:
            self._fail(events, f.PROTOCOL_ERROR, "PING on a stream")
        elif length != 8:
            self._fail(events, f.FRAME_SIZE_ERROR, "PING must be 8 bytes")
        elif flags & f.ACK:
            events.append(PingAck(body))
        else:
            self._emit(f.pack_header(8, f.PING, 0x1, 0) + body)
            self._answered(events)

    def _is_idle(self, sid: int) -> bool:
        """Never opened by either side (RFC 9113 §5.1): beyond what the opener has used so far."""
        if (sid % 2 == 1) == self.client_side:      # our own side's ids
            return sid >= self._ng.get_next_available_stream_id()
        return sid > self._highest_inbound

    def _window_update(self, length: int, sid: int, body: bytes, events: list[Event]) -> None:
        if length != 4:
            self._fail(events, f.FRAME_SIZE_ERROR, "WINDOW_UPDATE must be 4 bytes")
            return
        inc = int.from_bytes(body, "big") & 0x7FFFFFFF
        if sid == 0:
            if inc == 0:
                self._fail(events, f.PROTOCOL_ERROR, "WINDOW_UPDATE of 0 on the connection")
                return
            self._conn_send_window += inc
            self._conn_unreturned = max(0, self._conn_unreturned - inc)
            if self._conn_send_window > f.MAX_WINDOW:
                self._fail(events, f.FLOW_CONTROL_ERROR, "connection send window overflow")
                return
            events.append(WindowAvailable(0))
            return
        st = self._streams.get(sid)
        if st is None:
            return  # may legitimately arrive after a stream closed (RFC 9113 §6.9)
        if inc == 0:
            self._peer_error(st, f.PROTOCOL_ERROR, events, "WINDOW_UPDATE of 0")
            return
        st.send_window += inc
        if st.send_window > f.MAX_WINDOW:
            self._peer_error(st, f.FLOW_CONTROL_ERROR, events, "WINDOW_UPDATE overflowing the send window")
            return
        events.append(WindowAvailable(sid))

    def _goaway_received(self, length: int, sid: int, body: bytes, events: list[Event]) -> None:
        if sid != 0:
            self._fail(events, f.PROTOCOL_ERROR, "GOAWAY on a stream")
            return
        if length < 8:
            self._fail(events, f.FRAME_SIZE_ERROR, "GOAWAY shorter than 8 bytes")
            return
        last = int.from_bytes(body[:4], "big") & 0x7FFFFFFF
        code = int.from_bytes(body[4:8], "big")
        reason = body[8:].decode(errors="replace")
        ev = ConnectionClosed(code, last, reason, remote=True)
        self.goaway_received = ev
        if self.client_side:
            # Streams the peer never processed are refused: the edge may retry them elsewhere.
            for st in [s for s in self._streams.values() if s.id > last]:
                self._reset(st, f.REFUSED_STREAM)
                events.append(StreamReset(st.id, f.REFUSED_STREAM, remote=True))
        events.append(ev)

    def _feed_codec(self, frame: bytes, events: list[Event]) -> None:
        self._codec_fed = True      # it may answer (SETTINGS ACK, PING ACK, RST_STREAM): drain it
        invalid = self._ng.invalid_frames
        try:
            codec_events = self._ng.receive_data(frame)
        except h2.exceptions.ProtocolError as e:
            # The codec queued its GOAWAY (with the RFC's code); ours carries that code instead.
            code = _goaway_code(self._ng.data_to_send()) or f.PROTOCOL_ERROR
            self._fail(events, code, f"protocol error: {e}", drain=False)
            return
        if self._ng.invalid_frames != invalid:
            # A stream error the codec answered itself (a malformed request: RST_STREAM), which the
            # peer caused as it would with a reset of its own (module docstring).
            self._charge_peer_error(events, "a malformed message")
            if self._fatal:
                return
        for ev in codec_events:
            if self._fatal:
                break
            self._translate(ev, events)

    def _translate(self, ev: h2.events.Event, events: list[Event]) -> None:
        if isinstance(ev, h2.events.RequestReceived):
            self._on_request(ev, events)
        elif isinstance(ev, h2.events.ResponseReceived):
            st = self._streams.get(ev.stream_id)
            if st is not None:
                headers = _OK_HEADERS if ev.headers == _OK_LIST else _header_dict(ev.headers)
                if headers is None:
                    self._peer_error(st, f.PROTOCOL_ERROR, events, "response headers that are not UTF-8")
                    return
                st.response = int(headers.get(":status", "0"))
                st.receiving = st.response == 200
                events.append(ConnectResponse(ev.stream_id, st.response, headers))
        elif isinstance(ev, h2.events.StreamEnded):
            st = self._streams.get(ev.stream_id)
            if st is not None:
                st.receiving = False
                st.recv_ended = True
                events.append(StreamEnded(ev.stream_id))
                self._maybe_forget(st)
        elif isinstance(ev, h2.events.StreamReset):
            st = self._streams.pop(ev.stream_id, None)
            if st is not None:
                # The codec resets a stream of its own accord only for the peer's error (a malformed
                # message): ours (`_reset`) are forgotten before it is told.
                events.append(StreamReset(ev.stream_id, int(ev.error_code), remote=ev.remote_reset,
                                          reason="" if ev.remote_reset else _PEER_ERROR + "a malformed message"))
                if not ev.remote_reset:
                    self._recent_resets.append(ev.stream_id)
            if ev.remote_reset:
                self.peer_resets += 1
                # Rapid reset is a server-side attack: a request cancelled before we answered it
                # cost us its setup and the peer nothing. Resets of answered tunnels (an app that
                # aborts) and anything a server does to our streams are not counted.
                if st is not None and not self.client_side and not st.response:
                    self._spend_reset_budget(events)
        elif isinstance(ev, h2.events.RemoteSettingsChanged):
            self._on_settings(ev, events)
        # InformationalResponseReceived, TrailersReceived, SettingsAcknowledged: nothing to do.

    def _on_request(self, ev: h2.events.RequestReceived, events: list[Event]) -> None:
        headers = _header_dict(ev.headers)
        st = _Stream(ev.stream_id, send_window=self._peer_initial_window, recv_window=self.stream_window)
        self._streams[ev.stream_id] = st
        if headers is None:
            # A malformed request is a stream error (RFC 9113 §8.1.1), as the codec treats its own
            # findings (a bad :authority, an uppercase name, ...).
            self._peer_error(st, f.PROTOCOL_ERROR, events, "request headers that are not UTF-8", emit=False)
            return
        if self.closed is not None:
            self._reset(st, f.REFUSED_STREAM)  # opened after our GOAWAY: not processed
            return
        if len(self._streams) > self.max_concurrent_streams:
            # Over the limit we advertised: refuse this stream only (RFC 9113 §5.1.2), before any
            # work is done for it. A peer that keeps doing so spends its reset budget.
            self.refused_streams += 1
            self._reset(st, f.REFUSED_STREAM)
            self._spend_reset_budget(events)
            return
        if headers.get(":method") != "CONNECT" or not headers.get(":authority"):
            self.respond(ev.stream_id, 405, reason="HBONE accepts only CONNECT with :authority")
            return
        st.receiving = True  # an END_STREAM on the request arrives as a separate StreamEnded
        events.append(ConnectRequest(ev.stream_id, headers[":authority"], headers))

    def _on_settings(self, ev: h2.events.RemoteSettingsChanged, events: list[Event]) -> None:
        changed = ev.changed_settings       # {id: value}, as the peer's frame lists them
        if MAX_CONCURRENT_STREAMS in changed:
            self._peer_max_streams = self._ng.remote_settings.max_concurrent_streams
        if MAX_FRAME_SIZE in changed:
            self._max_out_frame = min(self.max_frame, changed[MAX_FRAME_SIZE])
        if INITIAL_WINDOW_SIZE in changed:
            new = changed[INITIAL_WINDOW_SIZE]
            delta = new - self._peer_initial_window
            self._peer_initial_window = new
            for st in self._streams.values():
                st.send_window += delta
                if st.send_window > f.MAX_WINDOW:
                    self._fail(events, f.FLOW_CONTROL_ERROR, "SETTINGS_INITIAL_WINDOW_SIZE overflows a window")
                    return
            if delta > 0:
                events.append(WindowAvailable(0))

    # helpers ----------------------------------------------------------------------------------------------------

    def _spend_reset_budget(self, events: list[Event]) -> None:
        if not self.reset_budget.spend() and not self._fatal:
            DEFENSES["reset_budget"] += 1
            self._fail(events, f.ENHANCE_YOUR_CALM, "too many stream resets")

    def _answered(self, events: list[Event]) -> None:
        """The peer's frame made us queue an answer. Counted only while the edge holds our output
        (`output_paused`): then it is one more the peer has not read (module docstring). Otherwise
        the edge writes it out after this read, however many one read held."""
        if not self.output_paused:
            return
        self._unsent_answers += 1
        if self._unsent_answers > self.max_unsent_answers and not self._fatal:
            DEFENSES["unread_flood"] += 1
            self._fail(events, f.ENHANCE_YOUR_CALM,
                       f"peer does not read: over {self.max_unsent_answers} answers to its frames unsent", abort=True)

    def _peer_error(self, st: _Stream, code: int, events: list[Event], why: str, *, emit: bool = True) -> None:
        """Reset `st` for the peer's protocol error `why` (see `_charge_peer_error`)."""
        self._reset(st, code)
        if emit:
            events.append(StreamReset(st.id, code, remote=False, reason=_PEER_ERROR + why))
        self._charge_peer_error(events, f"{why} on stream {st.id}")

    def _charge_peer_error(self, events: list[Event], why: str) -> None:
        """A stream reset for the peer's error (ours or the codec's): an answer it has not read yet.

        Server side, also a reset the peer caused, spent from its budget ("MadeYouReset", module
        docstring): the flood defences protect a server from its clients. Client side, a server
        that breaks the protocol is not flooding us (it serves only what we open) but is not to be
        trusted with more: the connection is retired (`_retire`), and the streams in flight on it,
        healthy so far, finish there."""
        self._answered(events)
        if self.client_side:
            self._retire(events, f"retired: the peer's protocol error ({why})")
        else:
            self._spend_reset_budget(events)

    def _retire(self, events: list[Event], reason: str) -> None:
        """Client side: no new streams here; the edge takes the connection out of its pool and
        closes it once its last stream ends. No GOAWAY is sent: a client's says nothing a server
        needs (it opens no streams), and some servers end every stream on receiving one."""
        if self.closed is None and not self._fatal:
            self.closed = ConnectionClosed(f.NO_ERROR, self._highest_inbound, reason, remote=False)
            events.append(self.closed)

    def _stream_or_raise(self, stream_id: int) -> _Stream:
        st = self._streams.get(stream_id)
        if st is None:
            raise HBONEError(f"stream {stream_id} is not open")
        return st

    def _reset(self, st: _Stream, code: int) -> None:
        """RST_STREAM `st` (the caller says who needs to know)."""
        self._streams.pop(st.id, None)
        self._recent_resets.append(st.id)
        with contextlib.suppress(h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            self._ng.reset_stream(st.id, code)
        self._drain_codec()

    def _maybe_forget(self, st: _Stream) -> None:
        if st.send_ended and st.recv_ended:
            self._streams.pop(st.id, None)


def _goaway(last_stream_id: int, code: int, reason: str) -> bytes:
    debug = reason.encode()[:256]
    return (f.pack_header(8 + len(debug), f.GOAWAY, 0, 0) + (last_stream_id & 0x7FFFFFFF).to_bytes(4, "big")
            + code.to_bytes(4, "big") + debug)


def _rst_stream(stream_id: int, code: int) -> bytes:
    return f.pack_header(4, f.RST_STREAM, 0, stream_id) + code.to_bytes(4, "big")


def _goaway_code(wire: bytes) -> int | None:
    """The error code of the first GOAWAY frame in `wire` (frames only), if there is one."""
    pos = 0
    while pos + f.HEADER_LEN <= len(wire):
        length, ftype, _flags, _sid = f.unpack_header(wire[pos:pos + f.HEADER_LEN])
        if ftype == f.GOAWAY and length >= 8:
            start = pos + f.HEADER_LEN + 4
            return int.from_bytes(wire[start:start + 4], "big")
        pos += f.HEADER_LEN + length
    return None


def _encoded(headers: list[tuple[str, str]] | None) -> list[tuple[bytes, bytes]]:
    return [(k.encode(), v.encode()) for k, v in headers or ()]


def _field_value(text: str) -> bytes:
    """A header value from free text (a reason): CR, LF and NUL are not allowed in one (RFC 9113
    §8.2.1) and would make the peer refuse the whole response, so they become spaces."""
    return text.translate(_NOT_IN_VALUES).strip().encode()


_NOT_IN_VALUES = {0: " ", 10: " ", 13: " "}


# Header names (and the CONNECT method) as shared strings: every tunnel carries the same few, and a
# held tunnel keeps its header dict, so each stream would otherwise hold its own copies (~0.3 KB
# per tunnel, docs/performance.md, round 10). Bounded: a peer choosing names cannot grow it.
_TEXT: dict[bytes, str] = {b":method": ":method", b":authority": ":authority", b"CONNECT": "CONNECT"}
_TEXT_MAX = 64


def _text(b: bytes) -> str:
    s = _TEXT.get(b)
    if s is None:
        s = b.decode()
        if len(_TEXT) < _TEXT_MAX:
            _TEXT[b] = s
    return s


def _header_dict(headers: list[tuple[bytes, bytes]]) -> dict[str, str] | None:
    """The header list as text (names shared, see `_TEXT`); None if a name or value is not UTF-8
    (a malformed message)."""
    try:
        get = _TEXT.get
        return {(get(k) or _text(k)): (get(v) or v.decode()) for k, v in headers}
    except UnicodeDecodeError:
        return None
