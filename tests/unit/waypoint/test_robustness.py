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
