"""HBONE sans-IO: two endpoints driven against each other in memory (no sockets).

The plain `h2` library is used as an independent reference peer in the interop tests, so our
hand-built DATA/WINDOW_UPDATE/GOAWAY frames are validated by someone else's parser.
"""

from __future__ import annotations

import hashlib
import os
import random

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest

from ambit.dataplane.hbone import frames as f
from ambit.dataplane.hbone.connection import (
    ConnectionClosed,
    ConnectRequest,
    ConnectResponse,
    Data,
    HBONEConnection,
    HBONEError,
    PingAck,
    StreamEnded,
    StreamReset,
    WindowAvailable,
)

MiB = 1024 * 1024


class Pair:
    """A client and a server endpoint with an in-memory wire; `split` cuts deliveries at random."""

    def __init__(self, split: bool = False, **kw) -> None:
        self.c = HBONEConnection(client_side=True, **kw)
        self.s = HBONEConnection(client_side=False, **kw)
        self.rng = random.Random(42)
        self.split = split
        self.c_events: list = []
        self.s_events: list = []
        self.wire_to_server: list[bytes] = []     # raw bytes, for frame inspection
        self.c.initiate()
        self.s.initiate()
        self.pump()

    def _deliver(self, data: bytes, dst: HBONEConnection) -> list:
        if not self.split or len(data) < 2:
            return dst.receive_data(data)
        out, pos = [], 0
        while pos < len(data):
            n = self.rng.randint(1, 20_000)
            out += dst.receive_data(data[pos:pos + n])
            pos += n
        return out

    def pump(self) -> None:
        for _ in range(1000):
            a, b = self.c.bytes_to_send(), self.s.bytes_to_send()
            if not a and not b:
                return
            if a:
                self.wire_to_server.append(a)
                self.s_events += self._deliver(a, self.s)
            if b:
                self.c_events += self._deliver(b, self.c)
        raise AssertionError("endpoints never went quiet")

    def take(self, side: str, kind: type) -> list:
        evs = self.c_events if side == "c" else self.s_events
        got = [e for e in evs if isinstance(e, kind)]
        evs[:] = [e for e in evs if not isinstance(e, kind)]
        return got

    def open(self, authority: str = "10.0.0.2:8080") -> int:
        sid = self.c.open_stream(authority, [("forwarded", "for=10.0.0.1")])
        self.pump()
        [req] = self.take("s", ConnectRequest)
        self.s.respond(req.stream_id, 200)
        self.pump()
        [resp] = self.take("c", ConnectResponse)
        assert resp.status == 200
        return sid

    def received(self, side: str, sid: int, ack: bool = True) -> bytes:
        conn = self.c if side == "c" else self.s
        data = [e.data for e in self.take(side, Data) if e.stream_id == sid]
        total = sum(len(d) for d in data)
        if ack:
            conn.acknowledge(sid, total)
        return b"".join(data)


def frames_in(wire: bytes) -> list[tuple[int, int, int, int]]:
    """(length, type, flags, stream) of each frame in a byte string (after any preface)."""
    if wire.startswith(f.PREFACE):
        wire = wire[len(f.PREFACE):]
    out, pos = [], 0
    while pos + 9 <= len(wire):
        length, t, fl, sid = f.unpack_header(wire[pos:pos + 9])
        out.append((length, t, fl, sid))
        pos += 9 + length
    return out


def send_all(p: Pair, side: str, sid: int, data: bytes, end: bool = False) -> None:
    """Send everything, pumping and acknowledging on the far side as a real reader would."""
    conn = p.c if side == "c" else p.s
    other = "s" if side == "c" else "c"
    pos = 0
    got = bytearray()
    stalled = 0
    while pos < len(data):
        n = conn.send_data(sid, data[pos:], end_stream=end)
        pos += n
        stalled = 0 if n else stalled + 1
        assert stalled < 3, f"sender stalled after {pos} bytes: flow-control window leaked"
        p.pump()
        got += p.received(other, sid)
        p.pump()
    if end and not data:
        conn.end_stream(sid)
    p.pump()
    got += p.received(other, sid)
    assert bytes(got) == data


# --- setup and headers --------------------------------------------------------------------------------

def test_connect_request_carries_authority_and_headers() -> None:
    p = Pair()
    tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    sid = p.c.open_stream("10.0.0.2:8080", [("forwarded", "for=10.0.0.1"), ("traceparent", tp)])
    p.pump()
    [req] = p.take("s", ConnectRequest)
    assert req.stream_id == sid and req.authority == "10.0.0.2:8080"
    assert req.headers["forwarded"] == "for=10.0.0.1" and req.headers["traceparent"] == tp
    assert req.headers[":method"] == "CONNECT"
    p.s.respond(sid, 503, reason="upstream refused")
    p.pump()
    [resp] = p.take("c", ConnectResponse)
    assert resp.status == 503 and resp.reason == "upstream refused"
    assert not p.s.is_open(sid)


def test_non_connect_requests_get_405() -> None:
    s = HBONEConnection(client_side=False)
    s.initiate()
    ref = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    ref.initiate_connection()
    sid = ref.get_next_available_stream_id()
    ref.send_headers(sid, [(":method", "GET"), (":scheme", "https"), (":path", "/"), (":authority", "x")],
                     end_stream=True)
    assert not [e for e in s.receive_data(ref.data_to_send()) if isinstance(e, ConnectRequest)]
    evs = ref.receive_data(s.bytes_to_send())
    [resp] = [e for e in evs if isinstance(e, h2.events.ResponseReceived)]
    assert dict(resp.headers)[":status"] == "405"


# --- data path ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("split", [False, True])
def test_bidirectional_data_integrity_with_arbitrary_read_boundaries(split: bool) -> None:
    p = Pair(split=split)
    sid = p.open()
    up, down = os.urandom(5 * MiB + 123), os.urandom(3 * MiB + 7)
    send_all(p, "c", sid, up)
    send_all(p, "s", sid, down)


def test_data_events_are_views_not_copies() -> None:
    p = Pair()
    sid = p.open()
    p.c.send_data(sid, b"hello")
    wire = p.c.bytes_to_send()
    [ev] = [e for e in p.s.receive_data(wire) if isinstance(e, Data)]
    assert isinstance(ev.data, memoryview) and ev.data.obj is wire and bytes(ev.data) == b"hello"


def test_frames_are_up_to_one_mib_after_settings() -> None:
    p = Pair()
    sid = p.open()
    p.wire_to_server.clear()
    p.c.send_data(sid, os.urandom(3 * MiB))
    p.pump()
    data_frames = [fr for w in p.wire_to_server for fr in frames_in(w) if fr[1] == f.DATA]
    assert [fr[0] for fr in data_frames] == [MiB, MiB, MiB]


def test_half_close_each_direction_independently() -> None:
    p = Pair()
    sid = p.open()
    p.c.send_data(sid, b"request", end_stream=True)
    p.pump()
    assert p.received("s", sid) == b"request"
    assert [e.stream_id for e in p.take("s", StreamEnded)] == [sid]
    with pytest.raises(HBONEError, match="closed for sending"):
        p.c.send_data(sid, b"more")
    # The other direction is still open.
    p.s.send_data(sid, b"response")
    p.pump()
    assert p.received("c", sid) == b"response"
    assert p.c.is_open(sid) and p.s.is_open(sid)
    p.s.end_stream(sid)
    p.pump()
    assert [e.stream_id for e in p.take("c", StreamEnded)] == [sid]
    assert not p.c.is_open(sid) and not p.s.is_open(sid)
    assert not p.take("c", StreamReset) and not p.take("s", StreamReset)


# --- flow control ---------------------------------------------------------------------------------------

def test_stream_window_exhaustion_and_resumption() -> None:
    p = Pair()
    sid = p.open()
    p.take("c", WindowAvailable)                                     # from the setup exchange
    assert p.c.send_window(sid) == 4 * MiB
    assert p.c.send_data(sid, os.urandom(6 * MiB)) == 4 * MiB     # the rest must wait
    assert p.c.send_window(sid) == 0
    p.pump()
    got = p.received("s", sid, ack=False)
    assert len(got) == 4 * MiB
    p.pump()
    assert WindowAvailable(sid) not in p.take("c", WindowAvailable)  # nothing consumed, no update
    assert p.s.acknowledge(sid, MiB - 1) is False                    # below a quarter window: nothing
    assert p.s.bytes_to_send() == b""                                # queued, nothing for the edge to flush
    assert p.s.acknowledge(sid, 1) is True                           # a quarter window: update now
    p.pump()
    assert WindowAvailable(sid) in p.take("c", WindowAvailable)
    assert p.c.send_window(sid) == MiB


def test_connection_window_is_shared_and_returned_on_consumption() -> None:
    p = Pair(connection_window=16 * MiB)
    sids = [p.open() for _ in range(5)]
    for sid in sids[:4]:
        assert p.c.send_data(sid, bytes(4 * MiB)) == 4 * MiB
    assert p.c.send_data(sids[4], b"x") == 0                          # 16 MiB connection window used up
    p.pump()
    p.received("s", sids[0])                                          # one reader consumes its 4 MiB
    p.pump()
    assert p.c.send_window(sids[4]) == 4 * MiB
    assert p.c.send_data(sids[4], b"x") == 1


def test_flow_control_violation_resets_only_that_stream() -> None:
    p = Pair()
    a, b = p.open(), p.open()
    # A peer ignoring our 4 MiB stream window: hand-craft a DATA frame beyond it (in pieces).
    too_much = bytearray()
    for _ in range(5):
        too_much += f.data_header(MiB, a) + bytes(MiB)
    evs = p.s.receive_data(bytes(too_much))
    resets = [e for e in evs if isinstance(e, StreamReset)]
    assert [(r.stream_id, r.error_code) for r in resets] == [(a, f.FLOW_CONTROL_ERROR)]
    p.pump()
    assert [(r.stream_id, r.error_code, r.remote) for r in p.take("c", StreamReset)] == [
        (a, f.FLOW_CONTROL_ERROR, True)]
    # b is unaffected, and the discarded bytes did not leak connection window.
    p.take("s", Data)
    send_all(p, "c", b, os.urandom(20 * MiB))


def test_reset_of_one_stream_leaves_others_working() -> None:
    p = Pair()
    a, b = p.open(), p.open()
    p.c.send_data(a, os.urandom(2 * MiB))
    p.c.send_data(b, b"before")
    p.c.reset_stream(a)
    p.pump()
    resets = p.take("s", StreamReset)
    assert [(r.stream_id, r.error_code, r.remote) for r in resets] == [(a, f.CANCEL, True)]
    with pytest.raises(HBONEError):
        p.c.send_data(a, b"late")
    # Data of `a` that arrived before its reset must be acknowledged by the edge as discarded.
    p.s.acknowledge(a, sum(len(e.data) for e in p.take("s", Data) if e.stream_id == a))
    p.s.send_data(b, b"reply")
    p.pump()
    assert p.received("c", b) == b"reply"
    send_all(p, "c", b, os.urandom(20 * MiB))


def test_data_after_reset_is_discarded_without_killing_the_connection() -> None:
    p = Pair()
    doomed = [p.open() for _ in range(4)]
    b = p.open()
    for sid in doomed:
        p.s.reset_stream(sid)           # server resets; the client has not seen it yet...
        assert p.c.send_data(sid, bytes(4 * MiB)) == 4 * MiB   # ...and fills the window
    p.pump()
    assert not [e for e in p.take("s", Data) if e.stream_id in doomed]
    assert not p.s.dead and not p.c.dead
    # 16 MiB went into reset streams; unless the server returned it, b would stall here.
    send_all(p, "c", b, os.urandom(8 * MiB))


# --- malformed input ------------------------------------------------------------------------------------

def test_overlong_frame_is_a_connection_error() -> None:
    p = Pair(max_frame=MiB)
    sid = p.open()
    evs = p.s.receive_data(f.data_header(MiB + 1, sid) + bytes(100))
    closed = [e for e in evs if isinstance(e, ConnectionClosed)]
    assert closed and closed[0].fatal and closed[0].error_code == f.FRAME_SIZE_ERROR
    assert StreamReset(sid, f.FRAME_SIZE_ERROR, remote=False) in evs
    wire = p.s.bytes_to_send()
    assert (f.GOAWAY in [fr[1] for fr in frames_in(wire)])
    p.c_events += p.c.receive_data(wire)
    [goaway] = p.take("c", ConnectionClosed)
    assert goaway.remote and goaway.error_code == f.FRAME_SIZE_ERROR
    assert p.s.receive_data(b"anything") == []                       # dead connections stay dead


def test_data_inside_a_header_block_is_a_protocol_error() -> None:
    p = Pair()
    headers_no_end = f.pack_header(0, f.HEADERS, 0, 3)
    evs = p.s.receive_data(headers_no_end + f.data_header(1, 3) + b"x")
    [closed] = [e for e in evs if isinstance(e, ConnectionClosed)]
    assert closed.error_code == f.PROTOCOL_ERROR and closed.fatal


def test_data_on_an_idle_stream_is_a_connection_error() -> None:
    p = Pair()
    evs = p.s.receive_data(f.data_header(3, 7) + b"abc")
    [closed] = [e for e in evs if isinstance(e, ConnectionClosed)]
    assert closed.fatal and closed.error_code == f.PROTOCOL_ERROR


def test_zero_window_update_resets_the_stream() -> None:
    p = Pair()
    a, b = p.open(), p.open()
    evs = p.c.receive_data(f.pack_header(4, f.WINDOW_UPDATE, 0, a) + bytes(4))
    assert [(e.stream_id, e.error_code) for e in evs if isinstance(e, StreamReset)] == [(a, f.PROTOCOL_ERROR)]
    assert p.c.is_open(b) and not p.c.dead


def test_padded_data_is_delivered_without_padding_and_window_returned() -> None:
    """Padding counts against flow control but never reaches the reader; it must be returned."""
    s = HBONEConnection(client_side=False, stream_window=65_535, connection_window=65_535)
    payload = os.urandom(MiB)     # 256 frames x 256 padding bytes > the window: stalls on a leak
    got, ended = run_plain_h2_client(s, payload, pad=255, chunk=4096)
    assert ended and bytes(got) == payload


# --- graceful GOAWAY ----------------------------------------------------------------------------------

def test_goaway_drains_existing_streams_and_refuses_new_ones() -> None:
    p = Pair()
    sid = p.open()
    p.s.close(reason="shutting down")
    p.pump()
    [ev] = p.take("c", ConnectionClosed)
    assert ev.remote and not ev.fatal and ev.reason == "shutting down" and ev.last_stream_id == sid
    assert not p.c.can_open_stream
    with pytest.raises(HBONEError):
        p.c.open_stream("10.0.0.2:80")
    # The in-flight tunnel still works both ways and closes cleanly.
    send_all(p, "c", sid, os.urandom(MiB), end=True)
    assert [e.stream_id for e in p.take("s", StreamEnded)] == [sid]
    send_all(p, "s", sid, b"bye", end=True)
    assert [e.stream_id for e in p.take("c", StreamEnded)] == [sid]
    assert not p.take("c", StreamReset) and not p.take("s", StreamReset)


# --- interop with the reference h2 implementation ----------------------------------------------------------

def test_our_client_against_a_plain_h2_server() -> None:
    """Default 16 KiB frames and 64 KiB windows on the far side; h2 validates what we send."""
    c = HBONEConnection(client_side=True)
    c.initiate()
    srv = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
    srv.initiate_connection()
    c.receive_data(srv.data_to_send())
    sid = c.open_stream("10.0.0.9:443")
    got, ended = bytearray(), False
    payload = os.urandom(300_000)
    sent = 0
    for _ in range(200):
        for ev in srv.receive_data(c.bytes_to_send()):
            if isinstance(ev, h2.events.RequestReceived):
                srv.send_headers(ev.stream_id, [(":status", "200")])
            elif isinstance(ev, h2.events.DataReceived):
                assert ev.flow_controlled_length <= 16_384
                got += ev.data
                srv.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                ended = True
        for ev in c.receive_data(srv.data_to_send()):
            if isinstance(ev, ConnectResponse):
                assert ev.status == 200
        if c.is_open(sid) and sent < len(payload) and c.send_window(sid):
            sent += c.send_data(sid, payload[sent:], end_stream=True)
        if ended:
            break
    assert ended and hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()


def run_plain_h2_client(s: HBONEConnection, payload: bytes, pad: int = 0, chunk: int = 1 << 30
                        ) -> tuple[bytearray, bool]:
    s.initiate()
    cl = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    cl.initiate_connection()
    sid = cl.get_next_available_stream_id()
    cl.send_headers(sid, [(":method", "CONNECT"), (":authority", "10.0.0.2:80")])
    got, ended, sent = bytearray(), False, 0
    for _ in range(5000):
        for ev in s.receive_data(cl.data_to_send()):
            if isinstance(ev, ConnectRequest):
                s.respond(ev.stream_id, 200)
            elif isinstance(ev, Data):
                got += ev.data
                s.acknowledge(ev.stream_id, len(ev.data))
            elif isinstance(ev, StreamEnded):
                ended = True
        for ev in cl.receive_data(s.bytes_to_send()):
            if isinstance(ev, h2.events.ResponseReceived):
                assert dict(ev.headers)[":status"] == "200"
        while sent < len(payload) and cl.local_flow_control_window(sid) > pad + 1:
            room = min(cl.local_flow_control_window(sid), cl.max_outbound_frame_size) - (pad + 1 if pad else 0)
            n = min(room, chunk, len(payload) - sent)
            cl.send_data(sid, payload[sent:sent + n], end_stream=sent + n == len(payload),
                         pad_length=pad or None)
            sent += n
        if ended:
            break
    return got, ended


def test_plain_h2_client_against_our_server() -> None:
    payload = os.urandom(200_000)
    got, ended = run_plain_h2_client(HBONEConnection(client_side=False), payload)
    assert ended and bytes(got) == payload


def tunnel_to_h2_server(initial_window: int | None = None) -> tuple[HBONEConnection, h2.connection.H2Connection, int]:
    """Our client with one tunnel (200) to a plain `h2` server whose connection window is 10 MiB
    and, if given, whose SETTINGS_INITIAL_WINDOW_SIZE is `initial_window`."""
    c = HBONEConnection(client_side=True)
    c.initiate()
    srv = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
    srv.initiate_connection()
    srv.increment_flow_control_window(10 * MiB)             # connection window is not the limit here
    if initial_window is not None:
        srv.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: initial_window})
    c.receive_data(srv.data_to_send())
    sid = c.open_stream("10.0.0.9:443")
    for ev in srv.receive_data(c.bytes_to_send()):
        if isinstance(ev, h2.events.RequestReceived):
            srv.send_headers(ev.stream_id, [(":status", "200")])
    c.receive_data(srv.data_to_send())
    return c, srv, sid


def test_peer_shrinking_its_initial_window_makes_send_windows_negative_not_larger() -> None:
    """RFC 9113 §6.9.2: a smaller SETTINGS_INITIAL_WINDOW_SIZE can drive windows below zero."""
    c, srv, sid = tunnel_to_h2_server()
    assert c.send_data(sid, bytes(100_000)) == 65_535       # the default stream window
    srv.receive_data(c.bytes_to_send())
    srv.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1000})
    c.receive_data(srv.data_to_send())                       # window: 0 - 64535 = -64535
    assert c.send_window(sid) == 0
    assert c.send_data(sid, b"x" * 10) == 0
    srv.increment_flow_control_window(70_000, stream_id=sid)
    c.receive_data(srv.data_to_send())
    assert c.send_window(sid) == 70_000 - 64_535
    assert c.send_data(sid, bytes(10_000)) == 70_000 - 64_535


def test_connect_headers_are_decoded_by_a_reference_peer() -> None:
    """HPACK is libnghttp2's (C; Huffman coding is its choice and no longer costs Python time): an
    independent decoder (the `h2` library) reads the request exactly as it was given."""
    c = HBONEConnection(client_side=True)
    c.initiate()
    ref = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
    ref.initiate_connection()
    ref.receive_data(b"".join(c.data_to_send()))
    c.receive_data(ref.data_to_send())
    tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    sid = c.open_stream("10.0.0.2:8080", [("traceparent", tp)])
    wire = b"".join(c.data_to_send())
    [req] = [e for e in ref.receive_data(wire) if isinstance(e, h2.events.RequestReceived)]
    assert req.stream_id == sid
    assert dict(req.headers) == {":method": "CONNECT", ":authority": "10.0.0.2:8080", "traceparent": tp}


def test_pings_are_answered_and_acks_reported_to_a_reference_peer() -> None:
    """PING is handled here, not by the codec: a reference client's PING is acknowledged with its
    payload, and our PING's ACK comes back as `PingAck`."""
    s = HBONEConnection(client_side=False)
    s.initiate()
    ref = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    ref.initiate_connection()
    ref.ping(b"12345678")
    s.receive_data(ref.data_to_send())
    s.ping(b"abcdefgh")
    evs = ref.receive_data(s.bytes_to_send())
    assert [e.ping_data for e in evs if isinstance(e, h2.events.PingAckReceived)] == [b"12345678"]
    assert [e.ping_data for e in evs if isinstance(e, h2.events.PingReceived)] == [b"abcdefgh"]
    assert [e.data for e in s.receive_data(ref.data_to_send()) if isinstance(e, PingAck)] == [b"abcdefgh"]


def test_data_on_a_closed_stream_gets_stream_closed_unless_we_reset_it() -> None:
    """RFC 9113 §5.1: DATA on a stream that ended both ways is answered with RST_STREAM
    STREAM_CLOSED; DATA the peer sent before it saw our own reset is dropped in silence."""
    p = Pair()
    done, ours = p.open(), p.open()
    send_all(p, "c", done, b"x", end=True)
    send_all(p, "s", done, b"y", end=True)
    assert not p.s.is_open(done)
    p.s.reset_stream(ours)
    p.s.bytes_to_send()                          # the client never sees this reset
    p.s.receive_data(f.data_header(3, done) + b"abc" + f.data_header(3, ours) + b"def")
    frames = frames_in(p.s.bytes_to_send())
    assert [(t, sid) for _, t, _, sid in frames if t == f.RST_STREAM] == [(f.RST_STREAM, done)]
    assert not p.s.dead


def test_end_stream_goes_out_when_the_peer_allows_no_data() -> None:
    """A peer whose SETTINGS_INITIAL_WINDOW_SIZE is 0 still gets our END_STREAM (an empty DATA
    frame uses no window), and the tunnel closes."""
    c, srv, sid = tunnel_to_h2_server(initial_window=0)
    assert c.send_window(sid) == 0
    c.end_stream(sid)
    assert [e.stream_id for e in srv.receive_data(c.bytes_to_send())
            if isinstance(e, h2.events.StreamEnded)] == [sid]


def test_client_opens_no_more_streams_than_the_server_allows() -> None:
    """The server's SETTINGS_MAX_CONCURRENT_STREAMS bounds the client's open tunnels; a closed
    tunnel frees its slot."""
    p = Pair(max_concurrent_streams=2)
    a, b = p.open(), p.open()
    assert not p.c.can_open_stream
    p.c.reset_stream(a)
    p.pump()
    assert p.c.can_open_stream and p.open() > b


def test_connect_header_names_are_shared_and_a_peer_cannot_grow_the_table() -> None:
    """Every tunnel's CONNECT carries the same names, shared as one string each; a peer sending a
    new name per stream gets correct headers but adds nothing past the table's bound."""
    from ambit.dataplane.hbone import connection as hc

    a = hc._header_dict([(b":method", b"CONNECT"), (b":authority", b"10.0.0.2:80"), (b"x-a", b"1")])
    b = hc._header_dict([(b":method", b"CONNECT"), (b":authority", b"10.0.0.3:80"), (b"x-a", b"2")])
    assert a == {":method": "CONNECT", ":authority": "10.0.0.2:80", "x-a": "1"}
    assert [k for k in a if k == "x-a"][0] is [k for k in b if k == "x-a"][0]
    assert a[":method"] is b[":method"]
    for i in range(500):
        h = hc._header_dict([(f"x-name-{i}".encode(), b"v")])
        assert h == {f"x-name-{i}": "v"}
    assert len(hc._TEXT) <= hc._TEXT_MAX
    assert hc._header_dict([(b"x-bad", b"\xff")]) is None


def test_a_stream_reset_inside_a_padded_frame_returns_its_padding_once() -> None:
    """Regression (fuzz round): a padded DATA frame whose stream we reset between two reads had
    its padding returned to the peer twice (once when the pad length arrived, again with the
    frame's unread rest), so every such frame grew the peer's connection window beyond what we
    had agreed to buffer. The window we return must never exceed what the peer used."""
    p = Pair(connection_window=f.DEFAULT_WINDOW, stream_window=f.DEFAULT_WINDOW)
    sent = returned = 0
    for _ in range(200):
        sid = p.open()
        payload = bytes([255]) + b"abc" + bytes(255)
        wire = f.pack_header(len(payload), f.DATA, f.PADDED, sid) + payload
        p.s.receive_data(wire[:13])                 # header, pad length, payload; padding to come
        p.s.reset_stream(sid)
        p.s.receive_data(wire[13:])
        sent += len(payload)
        p.s.acknowledge(sid, 3)                     # the reader consumes what it was given
        out = p.s.bytes_to_send()
        returned += sum(int.from_bytes(out[pos + 9:pos + 13], "big") & 0x7FFFFFFF
                        for pos, (_, t, _, s) in _frame_offsets(out) if t == f.WINDOW_UPDATE and s == 0)
        p.c_events += p.c.receive_data(out)
        p.pump()
        p.take("s", Data)
        p.take("c", StreamReset)
    assert not p.s.dead
    assert returned <= sent


def _frame_offsets(wire: bytes) -> list[tuple[int, tuple[int, int, int, int]]]:
    out, pos = [], 0
    while pos + 9 <= len(wire):
        hdr = f.unpack_header(wire[pos:pos + 9])
        out.append((pos, hdr))
        pos += 9 + hdr[0]
    return out


def test_every_bare_200_shares_one_read_only_header_mapping_and_other_answers_keep_their_own() -> None:
    """A client-side tunnel keeps its response for its whole life: the bare 200 that opens nearly
    every tunnel is one shared mapping, not a dict per tunnel (docs/performance.md §76)."""
    p = Pair()
    resps = []
    for _ in range(2):
        sid = p.c.open_stream("10.0.0.2:8080", [])
        p.pump()
        p.take("s", ConnectRequest)
        p.s.respond(sid, 200)
        p.pump()
        resps += p.take("c", ConnectResponse)
    a, b = resps
    assert a.status == b.status == 200 and a.reason == ""
    assert a.headers == {":status": "200"} and a.headers is b.headers
    with pytest.raises(TypeError):
        a.headers["x"] = "y"        # type: ignore[index]
    sid = p.c.open_stream("10.0.0.2:8080", [])
    p.pump()
    p.take("s", ConnectRequest)
    p.s.respond(sid, 200, headers=[("x-peer", "v1")])
    p.pump()
    [c] = p.take("c", ConnectResponse)
    assert c.headers == {":status": "200", "x-peer": "v1"} and c.headers is not a.headers
