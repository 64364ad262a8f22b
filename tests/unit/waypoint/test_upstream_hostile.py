"""Hostile and broken upstreams, over loopback sockets: the real engine between raw clients and
origins that misbehave on purpose (the waypoint's upstream and transport audit).

What must hold: the client gets a clean protocol-level answer (503/504, or a reset once the
response started) with the right response flag in its access-log record; nothing hangs past the
configured timeouts; no exchange is left open; and a request the upstream never processed is
retried as the route's retry policy says (Istio's default retries `refused-stream`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Iterator

import h2.config
import h2.connection
import h2.events
import pytest

from tests.unit.waypoint.harness import Proxy, by_header, serve_on_thread
from waypoint.http.settings import HttpSettings

pytestmark = pytest.mark.timeout(60)

CODECS = ["nghttp2", "h2"]


class _ScriptedH2(asyncio.Protocol):
    """One h2c connection of a `ScriptedH2Origin`: records each request, then lets the origin's
    `answer(conn, stream_id, path)` respond (or misbehave) once the request has ended."""

    def __init__(self, origin: ScriptedH2Origin) -> None:
        self.o = origin
        self.bodies: dict[int, int] = {}
        self.paths: dict[int, str] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = transport
        self.c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
        self.c.initiate_connection()
        self.flush()

    def data_received(self, data: bytes) -> None:
        for ev in self.c.receive_data(data):
            if isinstance(ev, h2.events.RequestReceived):
                self.paths[ev.stream_id] = dict(ev.headers)[":path"]
                self.bodies[ev.stream_id] = 0
            elif isinstance(ev, h2.events.DataReceived):
                self.bodies[ev.stream_id] += len(ev.data)
                if self.o.ack:
                    self.c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                path = self.paths[ev.stream_id]
                self.o.requests.append((path, self.bodies[ev.stream_id]))
                self.o.answer(self, ev.stream_id, path)
        self.flush()
        if self.o.on_data is not None:
            self.o.on_data()

    def respond(self, sid: int, body: bytes) -> None:
        self.c.send_headers(sid, [(":status", "200"), ("content-length", str(len(body)))])
        self.c.send_data(sid, body, end_stream=True)

    def flush(self) -> None:
        data = self.c.data_to_send()
        if data and not self.t.is_closing():
            self.t.write(data)  # type: ignore[attr-defined]


class ScriptedH2Origin:
    """An h2c origin on its own loop thread; `answer` decides what each request gets."""

    def __init__(self, answer: Callable[[_ScriptedH2, int, str], None],
                 on_data: Callable[[], None] | None = None, ack: bool = True) -> None:
        self.answer = answer
        self.on_data = on_data          # called after each read (e.g. to send more as windows open)
        self.ack = ack                  # False: request DATA is never acknowledged (no WINDOW_UPDATE)
        self.requests: list[tuple[str, int]] = []      # (path, request body bytes), as they ended
        self.loop, self.srv, self.port = serve_on_thread(lambda: _ScriptedH2(self))

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.srv.close)
        self.loop.call_soon_threadsafe(self.loop.stop)


def h2_proxy(codec: str, default: ScriptedH2Origin, **others: ScriptedH2Origin | float) -> Proxy:
    """The engine in front of h2c origins (`x-to: NAME` picks one of `others`); the rest of
    `others` are `HttpSettings` fields."""
    origins = {"default": default, **{k: v for k, v in others.items() if isinstance(v, ScriptedH2Origin)}}
    settings = {k: v for k, v in others.items() if not isinstance(v, ScriptedH2Origin)}
    return Proxy(by_header({k: o.port for k, o in origins.items()}), protocols={o.port: "h2" for o in origins.values()},
                 settings=HttpSettings(h2_codec=codec, **settings))  # type: ignore[arg-type]


@contextlib.contextmanager
def h2_setup(codec: str, answer: Callable[[_ScriptedH2, int, str], None]) -> Iterator[tuple[ScriptedH2Origin, Proxy]]:
    """A `ScriptedH2Origin` answering with `answer` behind the engine; at the end, no exchange
    may be left open."""
    o = ScriptedH2Origin(answer)
    p = h2_proxy(codec, o)
    try:
        yield o, p
        assert p.live_exchanges() == 0
    finally:
        p.close()
        o.close()


def h1_exchange(p: Proxy, raw: bytes) -> bytes:
    """Send `raw` on a fresh connection; what comes back until the first response is whole."""
    with socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:
        s.sendall(raw)
        out = b""
        while b"\r\n\r\n" not in out or len(out) < out.index(b"\r\n\r\n") + 4 + _length(out):
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
        return out


def _length(out: bytes) -> int:
    for line in out.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            return int(v)
    return 0


def goaway_once() -> Callable[[_ScriptedH2, int, str], None]:
    """The first request gets GOAWAY(last_stream_id=0): "I processed none of your streams" (a
    server shutting down gracefully as the request arrives); later requests are answered."""
    sent = []

    def answer(conn: _ScriptedH2, sid: int, path: str) -> None:
        if not sent:
            sent.append(sid)
            conn.c.close_connection(last_stream_id=0)
            return
        conn.respond(sid, b"ok")

    return answer


@pytest.mark.parametrize("codec", CODECS)
def test_a_post_above_a_goaways_last_stream_id_is_retried_as_a_refused_stream(codec: str) -> None:
    """RFC 9113 §6.8: streams above GOAWAY's last stream id were not processed and may be sent
    again; nghttp2 (and so Envoy) closes them as REFUSED_STREAM, which Istio's default policy
    retries (`refused-stream`). A request with a body is no exception: its body is replayed."""
    with h2_setup(codec, goaway_once()) as (o, p):
        out = h1_exchange(p, b"POST /x HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\n\r\nhello")
        assert out.startswith(b"HTTP/1.1 200 ") and out.endswith(b"ok"), out
        assert o.requests == [("/x", 5), ("/x", 5)]   # the whole body, both times
        rec = p.find(lambda r: r.path == "/x")[0]
        assert rec.status == 200 and rec.response_flags == ""


def breaks_protocol(conn: _ScriptedH2, sid: int, path: str) -> None:
    """Answers with a DATA frame on stream 0, an HTTP/2 connection error (RFC 9113 §6.1): the
    codec refuses the connection."""
    conn.t.write(b"\x00\x00\x02\x00\x00\x00\x00\x00\x00ab")  # type: ignore[attr-defined]


@pytest.mark.parametrize("codec", CODECS)
def test_an_upstream_h2_protocol_error_is_502_upe_not_a_connection_termination(codec: str) -> None:
    """The access log must say whose fault it was: the upstream broke HTTP/2 (UPE, "protocol
    error", as Envoy), it did not just close its connection (UC)."""
    with h2_setup(codec, breaks_protocol) as (_, p):
        out = h1_exchange(p, b"GET /x HTTP/1.1\r\nhost: a\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 502 ") and out.endswith(b"reset reason: protocol error"), out
        rec = p.find(lambda r: r.path == "/x")[0]
        assert (rec.status, rec.response_flags, rec.detail) == (502, "UPE", "protocol error")


class _Bulk:
    """What a `ScriptedH2Origin` answers each request with: `size` bytes, sent as the proxy's
    windows allow (more whenever a WINDOW_UPDATE comes)."""

    def __init__(self, size: int, reset: bool = False) -> None:
        self.size = size
        self.reset = reset      # end responses to /reset... with RST_STREAM instead of END_STREAM
        self.left: dict[tuple[int, int], tuple[_ScriptedH2, int, int]] = {}
        self.resets: set[int] = set()

    def answer(self, conn: _ScriptedH2, sid: int, path: str) -> None:
        conn.c.send_headers(sid, [(":status", "200"), ("content-length", str(self.size))])
        self.left[(id(conn), sid)] = (conn, sid, self.size)
        if self.reset and path.startswith("/reset"):
            self.resets.add(sid)
        self.pump()

    def pump(self) -> None:
        for key, (conn, sid, left) in list(self.left.items()):
            while left:
                n = min(conn.c.local_flow_control_window(sid), conn.c.max_outbound_frame_size, left)
                if n <= 0:
                    break
                left -= n
                conn.c.send_data(sid, b"b" * n, end_stream=not left and sid not in self.resets)
            if not left and sid in self.resets:
                conn.c.reset_stream(sid)
            if left:
                self.left[key] = (conn, sid, left)
            else:
                del self.left[key]
            conn.flush()


class LazyH2Client:
    """A raw h2c client of the proxy that acknowledges DATA only when told to read (one stream
    at a time)."""

    def __init__(self, port: int) -> None:
        self.s = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.c.initiate_connection()
        self.s.sendall(self.c.data_to_send())

    def get(self, path: str, end: bool = True, to: str = "default") -> int:
        sid = self.c.get_next_available_stream_id()
        self.c.send_headers(sid, [(":method", "POST" if not end else "GET"), (":path", path), (":scheme", "http"),
                                  (":authority", "a"), ("x-to", to)], end_stream=end)
        self.s.sendall(self.c.data_to_send())
        return sid

    def upload(self, sid: int, size: int) -> None:
        """Send `size` body bytes on `sid` as the proxy's windows allow (waiting for them to open:
        a socket timeout if they never do)."""
        while size:
            n = min(self.c.local_flow_control_window(sid), self.c.max_outbound_frame_size, size)
            if n <= 0:
                self.c.receive_data(self.s.recv(65536))
                continue
            self.c.send_data(sid, b"u" * n)
            size -= n
            self.s.sendall(self.c.data_to_send())

    def reset(self, sid: int) -> None:
        self.c.reset_stream(sid)
        self.s.sendall(self.c.data_to_send())

    def read(self, sid: int) -> tuple[int, bool]:
        """Read stream `sid` to its end, acknowledging its DATA: (body bytes, ended cleanly)."""
        body = 0
        while True:
            for ev in self.c.receive_data(self.s.recv(65536)):
                if getattr(ev, "stream_id", None) != sid:
                    continue
                if isinstance(ev, h2.events.DataReceived):
                    body += len(ev.data)
                    self.c.acknowledge_received_data(ev.flow_controlled_length, sid)
                elif isinstance(ev, h2.events.StreamEnded):
                    return body, True
                elif isinstance(ev, h2.events.StreamReset):
                    return body, False
            self.s.sendall(self.c.data_to_send())

    def close(self) -> None:
        self.s.close()


@pytest.fixture
def bulk_origin(request: pytest.FixtureRequest) -> Iterator[tuple[ScriptedH2Origin, _Bulk]]:
    bulk = _Bulk(400 * 1024, reset=getattr(request, "param", "") == "reset")
    o = ScriptedH2Origin(bulk.answer, on_data=bulk.pump)
    yield o, bulk
    o.close()


def slow_client_proxy(origin: ScriptedH2Origin, codec: str) -> Proxy:
    """Windows small enough that a 400 KiB response is paused on its way to an h2 client that
    reads nothing (`buffer_bytes` queued), and big enough that it all comes in one window."""
    return h2_proxy(codec, origin, h2_window=512 * 1024, buffer_bytes=16 * 1024, stream_idle_timeout=3.0)


@pytest.mark.parametrize("bulk_origin", ["end", "reset"], indirect=True)
@pytest.mark.parametrize("codec", CODECS)
def test_a_response_that_ends_while_its_client_is_slow_gives_the_upstream_connection_its_window_back(
        bulk_origin: tuple[ScriptedH2Origin, _Bulk], codec: str) -> None:
    """The client reads nothing of each response until the upstream has sent it whole: the proxy
    holds back its acknowledgements (backpressure), and the response ends (or the upstream resets
    it, after its body) while they are held. The
    upstream connection, pooled, must get that window back: it did not, so once the bytes leaked
    so reached its window, every later stream on it stalled (reset, SI, at the stream idle
    timeout)."""
    o, bulk = bulk_origin
    p = slow_client_proxy(o, codec)
    client = LazyH2Client(p.port)
    try:
        for path in ("/reset1", "/reset2", "/reset3"):      # on the same upstream connection
            sid = client.get(path)
            assert p.find(lambda r, path=path: r.path == path)     # (its upstream response ended)
            size, ended = client.read(sid)
            assert ended is not bulk.reset and (bulk.reset or size == bulk.size), path
        assert client.read(client.get("/last")) == (bulk.size, True)
        assert [r.response_flags for r in p.records] == ["UR" if bulk.reset else ""] * 3 + [""]
        assert p.live_exchanges() == 0
    finally:
        client.close()
        p.close()


@pytest.mark.parametrize("codec", CODECS)
def test_a_paused_response_that_ends_is_sent_out_without_an_error(
        bulk_origin: tuple[ScriptedH2Origin, _Bulk], codec: str, caplog: pytest.LogCaptureFixture) -> None:
    """Once its queue drained, a downstream stream whose exchange was over resumed that exchange's
    source, gone: an AttributeError traceback ("HTTP/2 event 'WindowUpdated' failed") per large
    response to a slow HTTP/2 client."""
    o, bulk = bulk_origin
    p = slow_client_proxy(o, codec)
    client = LazyH2Client(p.port)
    try:
        sid = client.get("/big")
        assert p.find(lambda r: r.path == "/big")
        assert client.read(sid) == (bulk.size, True)
        assert p.live_exchanges() == 0
    finally:
        client.close()
        p.close()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


@pytest.mark.parametrize("codec", CODECS)
def test_a_client_reset_of_a_paused_upload_gives_the_client_connection_its_window_back(codec: str) -> None:
    """Uploads to an upstream that never opens its window are paused (the proxy holds back its
    acknowledgements); the client gives up on each with RST_STREAM. What the proxy held took the
    client connection's window too: it was never given back, so after a few such uploads the
    client could send nothing more on its connection, to any upstream."""
    def ok(conn: _ScriptedH2, sid: int, path: str) -> None:
        conn.respond(sid, b"%d" % conn.bodies[sid])

    stingy, echo = ScriptedH2Origin(ok, ack=False), ScriptedH2Origin(ok)
    p = h2_proxy(codec, echo, stingy=stingy, h2_window=512 * 1024, buffer_bytes=16 * 1024)
    client = LazyH2Client(p.port)
    try:
        for i in range(3):
            sid = client.get(f"/stuck{i}", end=False, to="stingy")
            client.upload(sid, 300 * 1024)      # within the stream's window, beyond the upstream's
            client.reset(sid)
            assert p.find(lambda r, i=i: r.path == f"/stuck{i}")
        sid = client.get("/after", end=False)
        client.upload(sid, 300 * 1024)
        client.c.end_stream(sid)
        client.s.sendall(client.c.data_to_send())
        assert client.read(sid) == (len(b"%d" % (300 * 1024)), True)
        assert [r.response_flags for r in p.records] == ["DR", "DR", "DR", ""]
        assert p.live_exchanges() == 0
    finally:
        client.close()
        p.close()
        stingy.close()
        echo.close()


@pytest.mark.parametrize("refusal", ["goaway", "rst_stream"])
@pytest.mark.parametrize("codec", CODECS)
def test_a_refused_stream_sent_again_is_not_later_reset_downstream_as_refused(codec: str, refusal: str) -> None:
    """A stream the upstream refused (above its GOAWAY's last stream id, or RST_STREAM
    REFUSED_STREAM) is sent again and answered; when that answer then stalls (the stream idle
    timeout), the client's stream is reset INTERNAL_ERROR, never REFUSED_STREAM: that code tells
    a client the request was not processed, so it may send it again, and this one was."""
    sent = []

    def answer(conn: _ScriptedH2, sid: int, path: str) -> None:
        if not sent:
            sent.append(sid)
            if refusal == "goaway":
                conn.c.close_connection(last_stream_id=0)
            else:
                conn.c.reset_stream(sid, 7)
            return
        conn.c.send_headers(sid, [(":status", "200")])
        conn.c.send_data(sid, b"partial")                   # and never more

    o = ScriptedH2Origin(answer)
    p = h2_proxy(codec, o, stream_idle_timeout=1.0)
    client = LazyH2Client(p.port)
    try:
        sid = client.get("/x")
        client.s.settimeout(10)
        codes = []
        while not codes:
            for ev in client.c.receive_data(client.s.recv(65536)):
                if isinstance(ev, h2.events.StreamReset) and ev.stream_id == sid:
                    codes.append(ev.error_code)
        assert codes == [2]                                 # INTERNAL_ERROR
        assert p.find(lambda r: r.path == "/x")[0].response_flags == "SI"
    finally:
        client.close()
        p.close()
        o.close()


def _always_goaway(conn: _ScriptedH2, sid: int, path: str) -> None:
    conn.c.close_connection(last_stream_id=0)          # "I processed none of your streams"


def _always_refused(conn: _ScriptedH2, sid: int, path: str) -> None:
    conn.c.reset_stream(sid, 7)                         # RST_STREAM REFUSED_STREAM


def _goaway_then_close(conn: _ScriptedH2, sid: int, path: str) -> None:
    conn.c.close_connection(last_stream_id=sid)        # processed (or may be): then the connection goes
    conn.flush()
    conn.t.close()


@pytest.mark.parametrize(("answer", "flags", "reason"), [
    (_always_goaway, "UR,URX", "remote refused stream reset"),
    (_always_refused, "UR,URX", "remote refused stream reset"),
    (_goaway_then_close, "UC", "connection termination"),
])
@pytest.mark.parametrize("codec", CODECS)
def test_a_refused_stream_is_ur_and_a_terminated_connection_uc(
        codec: str, answer: Callable[[_ScriptedH2, int, str], None], flags: str, reason: str) -> None:
    """Envoy's response flags: a stream the upstream refused, by RST_STREAM REFUSED_STREAM or by
    being above its GOAWAY's last stream id (nghttp2 closes those as REFUSED_STREAM), is reset
    reason `remote refused stream reset`, flag UR (retried under `refused-stream` until the retries
    run out: URX); a stream the connection's close took is UC `connection termination`. A refused
    stream after GOAWAY was logged UC, as if the connection had been cut under it."""
    with h2_setup(codec, answer) as (_, p):
        out = h1_exchange(p, b"GET /x HTTP/1.1\r\nhost: a\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 503 ") and out.endswith(b"reset reason: " + reason.encode()), out
        rec = p.find(lambda r: r.path == "/x")[0]
        assert (rec.status, rec.response_flags, rec.detail) == (503, flags, reason)


@pytest.mark.parametrize("code", [8, 11, 1])      # CANCEL, ENHANCE_YOUR_CALM, PROTOCOL_ERROR
@pytest.mark.parametrize("codec", CODECS)
def test_an_upstream_reset_after_the_response_began_resets_the_client_internal_error(codec: str, code: int) -> None:
    """The upstream resets a stream whose response has begun and reached the client (a gRPC
    server cancelling a call mid-stream): the client's stream is reset INTERNAL_ERROR, whatever
    code the upstream used, as Envoy does: its router resets the downstream stream as a local
    reset, the two legs' codes belonging to different transports (envoyproxy/envoy#42750), and its
    HTTP/2 codec sends that as INTERNAL_ERROR (#42269; NO_ERROR before, which told clients the
    stream had ended well). The waypoint passed the upstream's code on: CANCEL made a gRPC
    client report CANCELLED, for a call it never cancelled."""
    open_calls: list[tuple[_ScriptedH2, int]] = []

    def answer(conn: _ScriptedH2, sid: int, path: str) -> None:
        if path == "/svc/Method":           # the response begins, and stays open
            conn.c.send_headers(sid, [(":status", "200"), ("content-type", "application/grpc")])
            conn.c.send_data(sid, b"\x00\x00\x00\x00\x02hi")
            open_calls.append((conn, sid))
        else:                               # "/reset": the client has the head; reset the call now
            other, osid = open_calls.pop()
            other.c.reset_stream(osid, code)
            other.flush()
            conn.respond(sid, b"ok")

    with h2_setup(codec, answer) as (_o, p):
        client = LazyH2Client(p.port)
        try:
            sid = client.get("/svc/Method")
            status, body, codes = "", b"", []
            while not body:
                for ev in client.c.receive_data(client.s.recv(65536)):
                    if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == sid:
                        status = dict(ev.headers)[":status"]
                    elif isinstance(ev, h2.events.DataReceived) and ev.stream_id == sid:
                        body += ev.data
            client.get("/reset")
            while not codes:
                for ev in client.c.receive_data(client.s.recv(65536)):
                    if isinstance(ev, h2.events.StreamReset) and ev.stream_id == sid:
                        codes.append(ev.error_code)
            assert status == "200" and codes == [2]             # INTERNAL_ERROR
            rec = p.find(lambda r: r.path == "/svc/Method")[0]
            assert rec.response_flags == "UR"
        finally:
            client.close()
