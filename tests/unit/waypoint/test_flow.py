"""Backpressure and connection reuse: the proxy never buffers a body without bound (a client
that stops reading stops the upstream), and a pooled connection the server closed while idle
costs the client nothing (one transparent retry on a fresh connection, as Envoy does for
requests that never reached the server)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import h2.config
import h2.connection
import h2.events
import pytest

from tests.unit.waypoint.harness import Origin, Proxy, by_header
from waypoint.http.http1 import H1Client, H1Server
from waypoint.http.http2 import H2Server

pytestmark = pytest.mark.timeout(60)
SIZE = 40_000_000


@pytest.fixture(scope="module")
def origin() -> Iterator[Origin]:
    o = Origin()
    yield o
    o.close()


@pytest.fixture()
def proxy(origin: Origin) -> Iterator[Proxy]:
    p = Proxy(by_header({"default": origin.port}))
    yield p
    p.close()


def _upstreams_paused(p: Proxy) -> list[bool]:
    def look() -> list[bool]:
        out = []
        for ex in p.engine.exchanges:       # type: ignore[union-attr]
            if isinstance(ex.up, H1Client):
                out.append(not ex.up.transport.is_reading())
        return out
    return p.call(look)  # type: ignore[return-value]


def test_slow_http1_reader_pauses_upstream(proxy: Proxy) -> None:
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        s.sendall(b"GET /big=%d HTTP/1.1\r\nHost: a\r\n\r\n" % SIZE)
        time.sleep(1.0)                     # read nothing: kernel buffers fill, then the proxy's
        buffered = proxy.call(lambda: [c.transport.get_write_buffer_size() for c in proxy.engine.conns
                                       if isinstance(c, H1Server)])
        assert max(buffered) < 1024 * 1024, buffered
        assert _upstreams_paused(proxy) == [True]
        got = 0
        while got < SIZE:
            chunk = s.recv(1 << 20)
            assert chunk
            got += len(chunk)
        assert got >= SIZE


def test_h2_client_window_bounds_what_the_proxy_holds(proxy: Proxy) -> None:
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
        c.initiate_connection()
        c.send_headers(1, [(":method", "GET"), (":path", f"/big={SIZE}"), (":scheme", "http"), (":authority", "a")],
                       end_stream=True)
        s.sendall(c.data_to_send())
        received = unacked = 0
        deadline = time.time() + 1.0
        s.settimeout(0.2)
        while time.time() < deadline:       # read, but never acknowledge: the window stays shut
            try:
                for ev in c.receive_data(s.recv(65536)):
                    if isinstance(ev, h2.events.DataReceived):
                        received += len(ev.data)
                        unacked += ev.flow_controlled_length
            except TimeoutError:
                pass
        assert received <= 65535
        held = proxy.call(lambda: [st.out_bytes for conn in proxy.engine.conns if isinstance(conn, H2Server)
                                   for st in conn.streams.values()])
        assert held and max(held) < 1024 * 1024, held
        assert _upstreams_paused(proxy) == [True]
        s.settimeout(10)
        c.acknowledge_received_data(unacked, 1)
        s.sendall(c.data_to_send())
        ended = False
        while not ended:                    # now acknowledge: everything arrives
            for ev in c.receive_data(s.recv(1 << 20)):
                if isinstance(ev, h2.events.DataReceived):
                    received += len(ev.data)
                    c.acknowledge_received_data(ev.flow_controlled_length, 1)
                ended = ended or isinstance(ev, h2.events.StreamEnded)
            s.sendall(c.data_to_send())
        assert received == SIZE


class ClosesIdle:
    """Answers the first request of each connection with keep-alive, then closes the connection
    when the next request arrives, unanswered: a server closing an idle connection just as the
    proxy reuses it."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c: socket.socket) -> None:
        with c:
            buf = b""
            while b"\r\n\r\n" not in buf:
                buf += c.recv(4096)
            c.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            c.recv(4096)


def test_stale_pooled_connection_is_retried_once() -> None:
    srv = ClosesIdle()
    p = Proxy(by_header({"default": srv.port}))
    try:
        with socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:
            for _ in range(3):
                s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
                resp = b""
                while not resp.endswith(b"ok"):
                    chunk = s.recv(4096)
                    assert chunk, resp
                    resp += chunk
                assert resp.startswith(b"HTTP/1.1 200")
        assert srv.connections == 3
        recs = p.wait_records(3)
        assert len(recs) == 3 and all(r.status == 200 for r in recs)
    finally:
        p.close()
        srv.sock.close()


def test_a_non_idempotent_request_on_a_stale_pooled_connection_is_not_sent_again() -> None:
    """The server read the POST and closed without answering: it may have applied it, so the
    waypoint must not send it again on its own (RFC 9110 §9.2.2; Envoy never does). The client
    gets Envoy's 503 UC; a GET in the same spot is resent (test above)."""
    srv = ClosesIdle()
    p = Proxy(by_header({"default": srv.port}))
    try:
        with socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:
            answers = []
            for method in ("GET", "POST"):
                s.sendall(f"{method} / HTTP/1.1\r\nHost: a\r\ncontent-length: 0\r\n\r\n".encode())
                resp = b""
                while not (resp.endswith(b"ok") or resp.endswith(b"termination")):
                    chunk = s.recv(4096)
                    assert chunk, resp
                    resp += chunk
                answers.append(resp.split(b"\r\n")[0])
        assert answers == [b"HTTP/1.1 200 OK", b"HTTP/1.1 503 Service Unavailable"]
        assert srv.connections == 1
        assert [r.response_flags for r in p.wait_records(2)] == ["", "UC"]
    finally:
        p.close()
        srv.sock.close()


def test_connection_limit_queues_then_overflows(origin: Origin) -> None:
    """2 connections, 2 waiting: of 6 slow requests 4 succeed over at most 2 upstream connections
    and 2 get Envoy's overflow answer at once (503, x-envoy-overloaded, UO). The first two go
    first: a request also counts as pending while its connection is being opened (Envoy's)."""
    from waypoint.http.settings import HttpSettings
    p = Proxy(by_header({"default": origin.port}), settings=HttpSettings(pool_max_connections=2, pool_max_pending=2))
    results: list[bytes] = []

    def one() -> None:
        with socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:
            s.sendall(b"GET /slow=0.5 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            out = b""
            while chunk := s.recv(65536):
                out += chunk
            results.append(out)

    try:
        before = origin.connections
        threads = [threading.Thread(target=one) for _ in range(6)]
        for t in threads[:2]:
            t.start()
        time.sleep(0.2)         # both connected and busy
        for t in threads[2:]:
            t.start()
        for t in threads:
            t.join(10)
        assert sorted(r[:12] for r in results) == [b"HTTP/1.1 200"] * 4 + [b"HTTP/1.1 503"] * 2
        assert all(b"x-envoy-overloaded: true" in r for r in results if r.startswith(b"HTTP/1.1 503"))
        assert origin.connections - before <= 2
        assert len(p.find(lambda r: r.response_flags == "UO")) == 2
    finally:
        p.close()
