"""The libnghttp2 codec (ambit/dataplane/nghttp2), sans-IO: byte-for-byte exchanges against the `h2`
library as the oracle, and hostile input that must end in GOAWAY or RST_STREAM, never a crash or
a hang."""

from __future__ import annotations

from typing import Any

import h2.config
import h2.connection
import h2.events as E
import h2.exceptions
import h2.settings
import pytest
from hyperframe.frame import DataFrame, Frame, GoAwayFrame, HeadersFrame, RstStreamFrame, WindowUpdateFrame

from ambit.dataplane.nghttp2 import NgHttp2Connection

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
REQ = [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"svc"), (b":path", b"/echo.Echo/Unary"),
       (b"content-type", b"application/grpc"), (b"te", b"trailers")]


def oracle(client: bool) -> h2.connection.H2Connection:
    return h2.connection.H2Connection(h2.config.H2Configuration(client_side=client, header_encoding=None))


def pump(a: Any, b: Any) -> list[Any]:
    data = a.data_to_send()
    return b.receive_data(data) if data else []


def connected(c: Any, s: Any) -> tuple[Any, Any]:
    c.initiate_connection()
    s.initiate_connection()
    for _ in range(3):
        pump(c, s)
        pump(s, c)
    return c, s


def frames(data: bytes) -> list[Frame]:
    """The frames in `data` (a server's output: no preface)."""
    out = []
    while data:
        f, n = Frame.parse_frame_header(memoryview(data[:9]))
        f.parse_body(memoryview(data[9:9 + n]))
        out.append(f)
        data = data[9 + n:]
    return out


def kinds(evs: list[Any]) -> list[str]:
    return [type(e).__name__ for e in evs]


@pytest.mark.parametrize("pair", ["ng-client/h2-server", "h2-client/ng-server", "ng/ng"])
def test_grpc_exchange_with_trailers_matches_the_oracle(pair: str) -> None:
    ng_c, ng_s = pair.startswith("ng"), pair.endswith("ng-server") or pair == "ng/ng"
    c = NgHttp2Connection(True) if ng_c else oracle(True)
    s = NgHttp2Connection(False) if ng_s else oracle(False)
    connected(c, s)
    sid = c.get_next_available_stream_id()
    c.send_headers(sid, REQ)
    c.send_data(sid, b"\x00\x00\x00\x00\x03abc")
    c.send_headers(sid, [(b"x-trailer", b"1")], end_stream=True)
    evs = pump(c, s)
    assert kinds(evs) == ["RequestReceived", "DataReceived", "TrailersReceived", "StreamEnded"]
    assert evs[0].headers == REQ and evs[1].data == b"\x00\x00\x00\x00\x03abc"
    assert evs[2].headers == [(b"x-trailer", b"1")]
    s.send_headers(sid, [(b":status", b"200"), (b"content-type", b"application/grpc")])
    s.send_data(sid, b"\x00\x00\x00\x00\x02ok")
    s.send_headers(sid, [(b"grpc-status", b"0")], end_stream=True)
    evs = pump(s, c)
    assert kinds(evs) == ["ResponseReceived", "DataReceived", "TrailersReceived", "StreamEnded"]
    assert evs[0].headers[0] == (b":status", b"200") and evs[2].headers == [(b"grpc-status", b"0")]


def test_flow_control_is_the_applications() -> None:
    """DATA is acknowledged only when the application says so: an unacknowledged stream stops the
    sender at one window; acknowledging reopens it."""
    c, s = connected(oracle(True), NgHttp2Connection(False, initial_window=65535))
    c.send_headers(1, REQ)
    pump(c, s)
    sent = 0
    while (w := min(c.local_flow_control_window(1), c.max_outbound_frame_size)) > 0:
        c.send_data(1, b"x" * w)
        sent += w
    got = sum(len(e.data) for e in pump(c, s) if isinstance(e, E.DataReceived))
    assert sent == got == 65535
    assert pump(s, c) == []                             # no WINDOW_UPDATE while nothing is taken
    s.acknowledge_received_data(got, 1)
    assert any(isinstance(e, E.WindowUpdated) and e.stream_id == 1 for e in pump(s, c))
    assert c.local_flow_control_window(1) > 0


def test_send_window_counts_queued_data() -> None:
    """`local_flow_control_window` subtracts what is queued but not framed yet, so a caller sizing
    chunks by it never queues beyond the peer's window; the queue drains as the peer acknowledges."""
    c, s = connected(NgHttp2Connection(True), oracle(False))
    c.send_headers(1, REQ)
    assert c.local_flow_control_window(1) == 65535
    c.send_data(1, b"x" * 65000)
    assert c.local_flow_control_window(1) == 535
    got = 0
    c.send_data(1, b"y" * 535, end_stream=True)
    for _ in range(4):
        for e in pump(c, s):
            if isinstance(e, E.DataReceived):
                got += len(e.data)
                s.acknowledge_received_data(e.flow_controlled_length, 1)
        pump(s, c)
    assert got == 65535


def test_reset_no_error_follows_the_response() -> None:
    """A complete response then RST_STREAM NO_ERROR (RFC 9113 §8.1): the client gets the whole
    response before the reset, also when the response is HEADERS only (gRPC trailers-only)."""
    c, s = connected(oracle(True), NgHttp2Connection(False))
    for sid, body in ((1, b"z" * 20000), (3, b"")):
        c.send_headers(sid, REQ)                            # the request body never ends
        pump(c, s)
        s.send_headers(sid, [(b":status", b"200")], end_stream=not body)
        if body:
            s.send_data(sid, body, end_stream=True)
        s.reset_stream(sid, 0)
        evs = pump(s, c)
        assert kinds(evs)[0] == "ResponseReceived" and kinds(evs)[-1] == "StreamReset"
        assert sum(len(e.data) for e in evs if isinstance(e, E.DataReceived)) == len(body)
        assert "StreamEnded" in kinds(evs)


def test_bad_preface_is_a_protocol_error_with_goaway() -> None:
    s = NgHttp2Connection(False)
    s.initiate_connection()
    with pytest.raises(h2.exceptions.ProtocolError):
        s.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")


def test_oversized_header_list_resets_that_stream_only() -> None:
    c, s = connected(oracle(True), NgHttp2Connection(False, max_header_list_size=4096))
    c.send_headers(1, REQ + [(b"x-big", b"a" * 5000)], end_stream=True)
    assert pump(c, s) == []                         # the stream never reaches the application
    out = frames(s.data_to_send())
    assert [type(f) for f in out] == [RstStreamFrame] and out[0].stream_id == 1
    c.send_headers(3, REQ, end_stream=True)         # the connection still serves
    assert kinds(pump(c, s)) == ["RequestReceived", "StreamEnded"]


def test_too_many_header_fields_reset_that_stream_before_they_are_kept() -> None:
    """HPACK makes a repeated field one byte on the wire, so the byte limit alone let 1600 fields
    (~270 KiB of Python) through in 1.6 KB. The count is checked as each field is decoded: the
    stream is refused at the 11th field with 10 kept, and pseudo-headers count, as Envoy counts them."""
    c, s = connected(oracle(True), NgHttp2Connection(False, max_header_count=10))
    kept_at_refusal: list[int] = []
    refuse = s._too_big
    s._too_big = lambda sid: kept_at_refusal.append(len(s._hdrs)) or refuse(sid)
    c.send_headers(1, REQ + [(b"x-same", b"v")] * 1600, end_stream=True)
    data = c.data_to_send()
    assert len(data) < 2500 and s.receive_data(data) == []
    assert kept_at_refusal == [10]
    out = frames(s.data_to_send())
    assert [type(f) for f in out] == [RstStreamFrame] and out[0].stream_id == 1 and out[0].error_code == 2
    c.send_headers(3, REQ + [(b"x-a", b"1")] * 4, end_stream=True)     # 10 fields: served
    assert kinds(pump(c, s)) == ["RequestReceived", "StreamEnded"]
    c.send_headers(5, REQ + [(b"x-a", b"1")] * 5, end_stream=True)     # 11: refused
    assert pump(c, s) == [] and kept_at_refusal == [10, 10]


def test_rst_stream_flood_ends_in_goaway() -> None:
    """CVE-2023-44487 (rapid reset): open-and-cancel beyond nghttp2's budget (1000 burst) is answered
    with GOAWAY, and no event is left half-delivered."""
    c, s = connected(oracle(True), NgHttp2Connection(False))
    c.local_settings.max_concurrent_streams = 10000
    flood = b""
    for i in range(1200):
        sid = 1 + 2 * i
        c.send_headers(sid, REQ)
        c.reset_stream(sid, 8)
        flood += c.data_to_send()
    try:
        s.receive_data(flood)
    except h2.exceptions.ProtocolError:
        pass
    goaway = [f for f in frames(s.data_to_send()) if isinstance(f, GoAwayFrame)]
    assert goaway and goaway[0].error_code == 2     # what nghttp2's reset budget answers


def test_window_overflow_is_a_flow_control_error() -> None:
    c, s = connected(oracle(True), NgHttp2Connection(False))
    wu = WindowUpdateFrame(0)
    wu.window_increment = 2**31 - 1
    with pytest.raises(h2.exceptions.ProtocolError):
        s.receive_data(wu.serialize())
    goaway = [f for f in frames(s.data_to_send()) if isinstance(f, GoAwayFrame)]
    assert goaway and goaway[0].error_code == 3            # FLOW_CONTROL_ERROR


def test_data_beyond_the_window_is_refused() -> None:
    c, s = connected(oracle(True), NgHttp2Connection(False, initial_window=65535))
    c.send_headers(1, REQ)
    pump(c, s)
    d = DataFrame(1)
    d.data = b"x" * 16384
    raw = d.serialize() * 5                                 # 80 KiB into a 64 KiB window
    try:
        s.receive_data(raw)
    except h2.exceptions.ProtocolError:
        pass
    out = frames(s.data_to_send())
    assert any(isinstance(f, (GoAwayFrame, RstStreamFrame)) and f.error_code == 3 for f in out)


def test_headers_on_a_closed_stream_and_garbage_frames() -> None:
    """Frames after END_STREAM, and a HEADERS frame with an undecodable HPACK block: a connection
    error (COMPRESSION_ERROR / STREAM_CLOSED), reported, never an exception of another kind."""
    c, s = connected(oracle(True), NgHttp2Connection(False))
    h = HeadersFrame(1)
    h.data = b"\xff\xff\xff\xff\xff\xff"                 # an index far beyond any table
    h.flags.add("END_HEADERS")
    with pytest.raises(h2.exceptions.ProtocolError):
        s.receive_data(h.serialize())
    assert any(isinstance(f, GoAwayFrame) for f in frames(s.data_to_send()))


def test_max_outbound_frame_size_follows_the_peers_settings() -> None:
    """Read once per SETTINGS, not per frame (the waypoint asks for every DATA frame it sizes):
    what a later SETTINGS says is what it answers next, never the value it read before."""
    c, s = connected(NgHttp2Connection(True), oracle(False))
    assert c.max_outbound_frame_size == 16384
    s.update_settings({h2.settings.SettingCodes.MAX_FRAME_SIZE: 65536})
    pump(s, c)
    assert c.max_outbound_frame_size == 65536
    s.update_settings({h2.settings.SettingCodes.MAX_FRAME_SIZE: 20000})
    pump(s, c)
    assert c.max_outbound_frame_size == 20000


def test_what_the_codec_answers_by_itself_is_framed_after_each_receive() -> None:
    """nghttp2 queues frames only when it is given something (a submit, or received bytes): the
    codec asks it for output only then. What it answers on its own (a PING's ACK, a SETTINGS ACK)
    follows the receive that caused it, and a clean session has nothing to send."""
    c, s = connected(oracle(True), NgHttp2Connection(False))
    assert s.data_to_send() == b""
    c.ping(b"12345678")
    pump(c, s)
    c.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 50})
    pump(c, s)
    evs = pump(s, c)
    assert [type(e).__name__ for e in evs] == ["PingAckReceived", "SettingsAcknowledged"]
    assert evs[0].ping_data == b"12345678"
    assert s.data_to_send() == b""


@pytest.mark.parametrize("server", ["h2", "ng"])
def test_a_ping_goes_out_and_its_ack_comes_back_as_h2_reports_it(server: str) -> None:
    """The client's keepalive PING (waypoint/http/http2/client.py, http2KeepAlive): nghttp2 sends it
    with its 8 bytes and reports the ACK as the `h2` library does (`PingAckReceived`)."""
    c, s = connected(NgHttp2Connection(True), oracle(False) if server == "h2" else NgHttp2Connection(False))
    c.ping(b"12345678")
    got = pump(c, s)
    if server == "h2":
        assert [(type(e).__name__, e.ping_data) for e in got] == [("PingReceived", b"12345678")]
    acks = pump(s, c)
    assert [(type(e).__name__, e.ping_data) for e in acks] == [("PingAckReceived", b"12345678")]
    with pytest.raises(ValueError):
        c.ping(b"short")
