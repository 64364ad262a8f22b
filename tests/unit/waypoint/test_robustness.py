"""Bad input never crashes or hangs the engine: random bytes after a valid start, random HTTP/2
frames after the preface, and many concurrent HTTP/1.1 clients. Each connection ends (an error
response or a close) within its timeout, and the proxy keeps serving."""

from __future__ import annotations

import random
import re
import socket
import subprocess
from collections.abc import Iterator

import pytest

from tests.unit.waypoint.harness import Origin, Proxy, by_header
from waypoint.http.detect import PREFACE
from waypoint.http.settings import HttpSettings

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def origin() -> Iterator[Origin]:
    o = Origin()
    yield o
    o.close()


@pytest.fixture(scope="module")
def proxy(origin: Origin) -> Iterator[Proxy]:
    p = Proxy(by_header({"default": origin.port}), settings=HttpSettings(header_timeout=1.0, stream_idle_timeout=1.0))
    yield p
    assert p.live_exchanges() == 0
    p.close()


def _ends(p: Proxy, data: bytes) -> bool:
    """Send `data`, half-close, and read: True if the proxy answers or closes within 5 s."""
    with socket.create_connection(("127.0.0.1", p.port), timeout=5) as s:
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            while s.recv(65536):
                pass
        except (ConnectionResetError, BrokenPipeError):
            pass
        except TimeoutError:
            return False
    return True


def _alive(p: Proxy) -> bool:
    r = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", f"http://127.0.0.1:{p.port}/ok"],
                       capture_output=True, text=True, timeout=10)
    return r.stdout == "200"


def test_random_bytes_after_a_request_line(proxy: Proxy) -> None:
    rng = random.Random(11)
    for i in range(60):
        tail = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 400)))
        if i % 3 == 0:      # mostly printable: gets further into the parser
            tail = bytes(rng.choice(b"abcXYZ:;, \r\n\t0123456789-") for _ in range(rng.randint(1, 400)))
        assert _ends(proxy, b"POST /fuzz HTTP/1.1\r\n" + tail), tail
    assert _alive(proxy)


def test_random_frames_after_the_h2_preface(proxy: Proxy) -> None:
    rng = random.Random(12)
    for _ in range(60):
        frames = b""
        for _ in range(rng.randint(1, 6)):
            body = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 40)))
            ftype, flags, sid = rng.randint(0, 10), rng.getrandbits(8), rng.choice([0, 1, 3, 2**31 - 1])
            frames += len(body).to_bytes(3, "big") + bytes([ftype, flags]) + sid.to_bytes(4, "big") + body
        assert _ends(proxy, PREFACE + frames)
    assert _alive(proxy)


def _goaway_code(p: Proxy, data: bytes) -> int | None:
    """Send `data` (after the preface and an empty SETTINGS), read until the proxy closes: the
    error code of its GOAWAY, or None if it closed without one."""
    code = None
    with socket.create_connection(("127.0.0.1", p.port), timeout=5) as s:
        s.sendall(PREFACE + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0]) + data)
        buf = b""
        try:
            while chunk := s.recv(65536):
                buf += chunk
        except ConnectionResetError:
            pass
    while len(buf) >= 9:
        n, ftype = int.from_bytes(buf[:3], "big"), buf[3]
        if ftype == 7:
            code = int.from_bytes(buf[13:17], "big")
        buf = buf[9 + n:]
    return code


@pytest.mark.parametrize("codec", ["nghttp2", "h2"])
def test_hostile_h2_connections_get_goaway_and_the_proxy_serves_on(origin: Origin, codec: str) -> None:
    """Window overflow, a HEADERS frame whose HPACK block cannot decode, and a rapid-reset flood
    (CVE-2023-44487, nghttp2 only): each connection ends in GOAWAY with the RFC's code."""
    import h2.config
    import h2.connection

    p = Proxy(by_header({"default": origin.port}), settings=HttpSettings(h2_codec=codec))
    try:
        overflow = bytes([0, 0, 4, 8, 0, 0, 0, 0, 0]) + (2**31 - 1).to_bytes(4, "big")
        assert _goaway_code(p, overflow) == 3                                   # FLOW_CONTROL_ERROR
        bad_hpack = bytes([0, 0, 6, 1, 5, 0, 0, 0, 1]) + b"\xff" * 6
        # COMPRESSION_ERROR from nghttp2 (RFC 9113 §4.3); the h2 library says PROTOCOL_ERROR
        assert _goaway_code(p, bad_hpack) == (9 if codec == "nghttp2" else 1)
        if codec == "h2":       # the h2 library has no reset budget: it serves the flood (see the docs)
            assert _alive(p)
            return
        c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        c.initiate_connection()
        c.data_to_send()
        c.update_settings({4: 65535})
        flood = b""
        for i in range(1500):
            sid = 1 + 2 * i
            c.send_headers(sid, [(":method", "GET"), (":scheme", "http"), (":authority", "x"), (":path", "/f")],
                           end_stream=True)
            c.reset_stream(sid, 8)
            flood += c.data_to_send()
        assert _goaway_code(p, flood) == 2      # nghttp2's reset budget (1000 burst) answers INTERNAL_ERROR
        assert _alive(p)
    finally:
        p.close()


def test_many_concurrent_http1_clients(origin: Origin) -> None:
    p = Proxy(by_header({"default": origin.port}))
    try:
        r = subprocess.run(["h2load", "--h1", "-n", "2000", "-c", "50", f"http://127.0.0.1:{p.port}/many"],
                           capture_output=True, text=True, timeout=60)
        m = re.search(r"(\d+) succeeded, (\d+) failed", r.stdout)
        assert m and m.groups() == ("2000", "0"), r.stdout
        assert len(p.wait_records(2000)) == 2000
        assert p.engine.pools.connections <= 50 + 5      # pooled: not one upstream connection per request
    finally:
        p.close()


def test_a_failing_decide_is_a_500_not_a_dead_connection(origin: Origin) -> None:
    base = by_header({"default": origin.port})

    def decide(head, ds):  # noqa: ANN001, ANN202
        if head.path == "/boom":
            raise RuntimeError("core bug")
        return base(head, ds)

    p = Proxy(decide)
    try:
        r = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", f"http://127.0.0.1:{p.port}/boom",
                            "--next", "-o", "/dev/null", "-w", " %{http_code}", f"http://127.0.0.1:{p.port}/fine"],
                           capture_output=True, text=True, timeout=10)
        assert r.stdout == "500 200"
    finally:
        p.close()
