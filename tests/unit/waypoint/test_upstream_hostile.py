"""Hostile and broken upstreams, over loopback sockets: the real engine between raw clients and
origins that misbehave on purpose (the waypoint's upstream and transport audit).

What must hold: the client gets a clean protocol-level answer (503/504, or a reset once the
response started) with the right response flag in its access-log record; nothing hangs past the
configured timeouts; no exchange is left open; and a request the upstream never processed is
retried as the route's retry policy says (Istio's default retries `refused-stream`).
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable, Iterator

import h2.config
import h2.connection
import h2.events
import pytest

from tests.unit.waypoint.harness import Proxy, by_header
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
                self.c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                path = self.paths[ev.stream_id]
                self.o.requests.append((path, self.bodies[ev.stream_id]))
                self.o.answer(self, ev.stream_id, path)
        self.flush()

    def respond(self, sid: int, body: bytes) -> None:
        self.c.send_headers(sid, [(":status", "200"), ("content-length", str(len(body)))])
        self.c.send_data(sid, body, end_stream=True)

    def flush(self) -> None:
        data = self.c.data_to_send()
        if data and not self.t.is_closing():
            self.t.write(data)  # type: ignore[attr-defined]


class ScriptedH2Origin:
    """An h2c origin on its own loop thread; `answer` decides what each request gets."""

    def __init__(self, answer: Callable[[_ScriptedH2, int, str], None]) -> None:
        self.answer = answer
        self.requests: list[tuple[str, int]] = []      # (path, request body bytes), as they ended
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.srv = self.loop.run_until_complete(
                self.loop.create_server(lambda: _ScriptedH2(self), "127.0.0.1", 0))
            self.port = self.srv.sockets[0].getsockname()[1]
            ready.set()
            self.loop.run_forever()

        threading.Thread(target=run, daemon=True).start()
        ready.wait(10)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.srv.close)
        self.loop.call_soon_threadsafe(self.loop.stop)


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


@pytest.fixture
def goaway_once() -> Iterator[ScriptedH2Origin]:
    """The first request gets GOAWAY(last_stream_id=0): "I processed none of your streams" (a
    server shutting down gracefully as the request arrives); later requests are answered."""
    sent = []

    def answer(conn: _ScriptedH2, sid: int, path: str) -> None:
        if not sent:
            sent.append(sid)
            conn.c.close_connection(last_stream_id=0)
            return
        conn.respond(sid, b"ok")

    o = ScriptedH2Origin(answer)
    yield o
    o.close()


@pytest.mark.parametrize("codec", CODECS)
def test_a_post_above_a_goaways_last_stream_id_is_retried_as_a_refused_stream(
        goaway_once: ScriptedH2Origin, codec: str) -> None:
    """RFC 9113 §6.8: streams above GOAWAY's last stream id were not processed and may be sent
    again; nghttp2 (and so Envoy) closes them as REFUSED_STREAM, which Istio's default policy
    retries (`refused-stream`). A request with a body is no exception: its body is replayed."""
    p = Proxy(by_header({"default": goaway_once.port}), protocols={goaway_once.port: "h2"},
              settings=HttpSettings(h2_codec=codec))
    try:
        out = h1_exchange(p, b"POST /x HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\n\r\nhello")
        assert out.startswith(b"HTTP/1.1 200 ") and out.endswith(b"ok"), out
        assert goaway_once.requests == [("/x", 5), ("/x", 5)]   # the whole body, both times
        rec = p.find(lambda r: r.path == "/x")[0]
        assert rec.status == 200 and rec.response_flags == ""
        assert p.live_exchanges() == 0
    finally:
        p.close()


@pytest.fixture
def breaks_protocol() -> Iterator[ScriptedH2Origin]:
    """Answers every request with a DATA frame on stream 0, an HTTP/2 connection error (RFC 9113
    §6.1): the codec refuses the connection."""
    def answer(conn: _ScriptedH2, sid: int, path: str) -> None:
        conn.t.write(b"\x00\x00\x02\x00\x00\x00\x00\x00\x00ab")  # type: ignore[attr-defined]

    o = ScriptedH2Origin(answer)
    yield o
    o.close()


@pytest.mark.parametrize("codec", CODECS)
def test_an_upstream_h2_protocol_error_is_503_upe_not_a_connection_termination(
        breaks_protocol: ScriptedH2Origin, codec: str) -> None:
    """The access log must say whose fault it was: the upstream broke HTTP/2 (UPE, "protocol
    error", as Envoy), it did not just close its connection (UC)."""
    p = Proxy(by_header({"default": breaks_protocol.port}), protocols={breaks_protocol.port: "h2"},
              settings=HttpSettings(h2_codec=codec))
    try:
        out = h1_exchange(p, b"GET /x HTTP/1.1\r\nhost: a\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 503 ") and out.endswith(b"reset reason: protocol error"), out
        rec = p.find(lambda r: r.path == "/x")[0]
        assert (rec.status, rec.response_flags, rec.detail) == (503, "UPE", "protocol error")
        assert p.live_exchanges() == 0
    finally:
        p.close()
