"""Mirroring through the real engine (loopback, real clients): the shadow gets the request with
its body and the primary's Host, its response is discarded, and nothing the shadow does (slow,
down, not reading, never answering) delays or fails the primary; the shadows in flight are bounded.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.unit.waypoint.harness import Origin, Proxy, free_port
from waypoint.http.settings import HttpSettings
from waypoint.request import Downstream, Forward, RequestHead
from waypoint.resilience.mirror import MirrorPolicy
from waypoint.resilience.policy import RoutePolicy

pytestmark = pytest.mark.timeout(60)


class _Sink(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a: object) -> None:
        pass

    def _any(self) -> None:
        srv: Sink = self.server  # type: ignore[assignment]
        n = int(self.headers.get("content-length") or 0)
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while True:
                size = int(self.rfile.readline().strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    break
                body += self.rfile.read(size)
                self.rfile.readline()
        else:
            body = self.rfile.read(n) if n else b""
        if len(body) < n:                   # the stream was cut: not a request (the stdlib reads short at EOF)
            return
        if srv.delay:
            time.sleep(srv.delay)
        with srv.lock:
            srv.got.append((self.command, self.path, self.headers.get("host"), len(body)))
        self.send_response(500)              # discarded by the waypoint
        self.send_header("content-length", "5")
        self.end_headers()
        self.wfile.write(b"shadw")

    do_GET = do_POST = _any


class Sink(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256

    def __init__(self, delay: float = 0.0) -> None:
        super().__init__(("127.0.0.1", 0), _Sink)
        self.delay = delay
        self.got: list[tuple[str, str, str | None, int]] = []
        self.lock = threading.Lock()
        self.port = self.server_address[1]
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def wait(self, n: int, timeout: float = 5.0) -> list[tuple[str, str, str | None, int]]:
        deadline = time.time() + timeout
        while len(self.got) < n and time.time() < deadline:
            time.sleep(0.02)
        return list(self.got)

    def close(self) -> None:
        self.shutdown()
        self.server_close()


@pytest.fixture(scope="module")
def origin() -> Iterator[Origin]:
    o = Origin()
    yield o
    o.close()


def mirrored(primary: int, shadow: int, timeout: float = 0.0):
    pol = RoutePolicy(timeout=timeout, mirrors=(MirrorPolicy("test/shadow", "shadow", port=shadow),))

    def decide(head: RequestHead, ds: Downstream) -> Forward:
        return Forward(service="test/app", port=primary, route="test#0", policy=pol)
    return decide


def timed(port: int, path: str = "/", body: bytes | None = None, host: str = "myapp") -> tuple[int, bytes, float]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, headers={"host": host},
                                 method="POST" if body is not None else "GET")
    t0 = time.monotonic()
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.status, r.read(), time.monotonic() - t0


def gate(p: Proxy) -> dict[str, int]:
    return p.call(lambda: p.engine.mirrors.stats())  # type: ignore[union-attr,return-value]


def settle(p: Proxy, timeout: float = 5.0) -> dict[str, int]:
    deadline = time.time() + timeout
    while True:
        s = gate(p)
        if s["active"] == 0 or time.time() > deadline:
            return s
        time.sleep(0.02)


def test_the_shadow_gets_the_request_with_its_body_and_host(origin: Origin) -> None:
    sink = Sink()
    p = Proxy(mirrored(origin.port, sink.port))
    try:
        status, body, _ = timed(p.port, "/get?x=1")
        assert status == 200 and b'"path": "/get?x=1"' in body       # the primary's answer, not the shadow's
        status, body, _ = timed(p.port, "/post", body=b"y" * 200_000)
        assert status == 200 and b'"body_len": 200000' in body
        assert sorted(sink.wait(2)) == [("GET", "/get?x=1", "myapp", 0), ("POST", "/post", "myapp", 200_000)]
        assert len(p.wait_records(2)) == 2                              # no access-log line for shadows
        s = settle(p)
        assert (s["started"], s["completed"], s["active"]) == (2, 2, 0)
    finally:
        p.close()
        sink.close()


def test_a_chunked_body_is_mirrored_as_it_streams(origin: Origin) -> None:
    sink = Sink()
    p = Proxy(mirrored(origin.port, sink.port))
    try:
        with socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:
            s.sendall(b"POST /c HTTP/1.1\r\nHost: myapp\r\nTransfer-Encoding: chunked\r\n\r\n")
            for _ in range(5):
                s.sendall(b"3e8\r\n" + b"z" * 1000 + b"\r\n")
                time.sleep(0.02)
            s.sendall(b"0\r\n\r\n")
            assert b"200" in s.recv(100)
        assert sink.wait(1) == [("POST", "/c", "myapp", 5000)]
    finally:
        p.close()
        sink.close()


def test_a_slow_shadow_costs_the_primary_nothing(origin: Origin) -> None:
    sink = Sink(delay=1.0)
    p = Proxy(mirrored(origin.port, sink.port))
    try:
        took = [timed(p.port, f"/r{i}")[2] for i in range(20)]
        assert max(took) < 0.5, took                    # the shadow answers 1 s late, the primary does not wait
        assert len(sink.wait(20, timeout=8)) == 20      # and every shadow still arrived
    finally:
        p.close()
        sink.close()


def test_a_shadow_that_is_down_costs_the_primary_nothing(origin: Origin) -> None:
    p = Proxy(mirrored(origin.port, free_port()))
    try:
        assert all(timed(p.port)[0] == 200 for _ in range(10))
        s = settle(p)
        assert s["failed"] == 10 and s["active"] == 0
        assert {r.status for r in p.wait_records(10)} == {200} and {r.response_flags for r in p.records} == {""}
    finally:
        p.close()


def test_shadows_in_flight_are_bounded_and_overflow_is_dropped(origin: Origin) -> None:
    sink = Sink(delay=1.0)
    p = Proxy(mirrored(origin.port, sink.port), settings=HttpSettings(mirror_max_active=2))
    try:
        took = [timed(p.port, f"/b{i}")[2] for i in range(10)]
        assert max(took) < 0.5
        s = gate(p)
        assert (s["started"], s["overflow"]) == (2, 8)
        assert len(sink.wait(2, timeout=5)) == 2
        time.sleep(0.3)
        assert len(sink.got) == 2
    finally:
        p.close()
        sink.close()


def test_a_shadow_that_does_not_read_is_cut_not_the_primary_slowed(origin: Origin) -> None:
    # a server that accepts and never reads: the shadow's connection fills, the shadow buffers up
    # to mirror_buffer_bytes, then is cut; the primary's 8 MB body goes through at full speed
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(8)
    p = Proxy(mirrored(origin.port, lsock.getsockname()[1]), settings=HttpSettings(mirror_buffer_bytes=256 * 1024))
    try:
        status, body, took = timed(p.port, "/upload", body=b"q" * 8_000_000)
        assert status == 200 and b'"body_len": 8000000' in body
        s = settle(p)
        assert s["cut"] == 1 and s["active"] == 0
    finally:
        p.close()
        lsock.close()


def test_a_shadow_that_never_answers_times_out(origin: Origin) -> None:
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(8)
    p = Proxy(mirrored(origin.port, lsock.getsockname()[1], timeout=0.3))      # the route timeout bounds it
    try:
        assert timed(p.port)[0] == 200
        assert gate(p)["active"] == 1
        s = settle(p, timeout=3)
        assert s["active"] == 0 and s["failed"] == 1
    finally:
        p.close()
        lsock.close()


def test_a_client_that_leaves_mid_body_cuts_its_shadow(origin: Origin) -> None:
    sink = Sink()
    p = Proxy(mirrored(origin.port, sink.port))
    try:
        with socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:
            s.sendall(b"POST /cut HTTP/1.1\r\nHost: myapp\r\nContent-Length: 100000\r\n\r\n" + b"a" * 1000)
            time.sleep(0.2)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s2 = settle(p)
        assert s2["cut"] == 1 and s2["active"] == 0
        time.sleep(0.2)
        assert sink.got == []                   # a partial body never reaches the mirror as if whole
    finally:
        p.close()
        sink.close()


def test_an_aborted_request_is_not_mirrored_a_delayed_one_is_after_its_delay(origin: Origin) -> None:
    from waypoint.resilience.fault import MILLION, FaultPolicy
    sink = Sink()
    state = {"fault": FaultPolicy(abort_status=503, abort_per_million=MILLION)}
    mirrors = (MirrorPolicy("test/shadow", "shadow", port=sink.port),)

    def decide(head: RequestHead, ds: Downstream) -> Forward:
        return Forward(service="test/app", port=origin.port, route="test#0",
                       policy=RoutePolicy(fault=state["fault"], mirrors=mirrors))
    p = Proxy(decide)
    try:
        with pytest.raises(urllib.error.HTTPError):
            timed(p.port, "/aborted")
        state["fault"] = FaultPolicy(delay=0.4, delay_per_million=MILLION)
        t0 = time.time()
        assert timed(p.port, "/delayed", body=b"d" * 5000)[0] == 200
        got = sink.wait(1)
        assert [g[1:] for g in got] == [("/delayed", "myapp", 5000)]       # the body sent during the delay too
        assert gate(p)["started"] == 1
        assert time.time() - t0 >= 0.4
    finally:
        p.close()
        sink.close()


def test_shadows_to_an_h2_backend_share_its_multiplexed_pool(origin: Origin) -> None:
    from tests.unit.waypoint.harness import H2Origin
    h2o = H2Origin()
    p = Proxy(mirrored(origin.port, h2o.port), protocols={h2o.port: "h2"})
    try:
        assert all(timed(p.port, f"/h{i}", body=b"x" * 1000)[0] == 200 for i in range(20))
        s = settle(p)
        assert (s["started"], s["completed"], s["failed"]) == (20, 20, 0)
        assert p.call(lambda: len(p.engine.pools.h2.get(f"127.0.0.1:{h2o.port}", [])))== 1  # type: ignore[union-attr]
    finally:
        p.close()
        h2o.close()


def test_a_slow_reading_shadow_gets_the_whole_body_without_slowing_the_primary(origin: Origin) -> None:
    # the shadow reads at most 64 KiB every 30 ms: its connection fills, the shadow pauses and buffers
    # (under mirror_buffer_bytes), then drains as the reader catches up; the primary is not held
    got: list[int] = []
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(8)

    def slow_reader() -> None:
        c, _ = lsock.accept()
        with c:
            buf = b""
            while b"\r\n\r\n" not in buf:
                buf += c.recv(65536)
            head, _, rest = buf.partition(b"\r\n\r\n")
            n = int(next(x for x in head.split(b"\r\n") if x.lower().startswith(b"content-length")).split(b":")[1])
            total = len(rest)
            while total < n:
                time.sleep(0.03)
                data = c.recv(65536)
                if not data:
                    break
                total += len(data)
            got.append(total)
            c.sendall(b"HTTP/1.1 204 No Content\r\n\r\n")
    t = threading.Thread(target=slow_reader, daemon=True)
    t.start()
    size = 1_000_000
    p = Proxy(mirrored(origin.port, lsock.getsockname()[1]), settings=HttpSettings(mirror_buffer_bytes=8_000_000))
    try:
        status, body, took = timed(p.port, "/upload", body=b"s" * size)
        assert status == 200 and f'"body_len": {size}'.encode() in body
        assert took < 1.0, took                  # the shadow takes longer than that to read it all
        t.join(10)
        assert got == [size]
        s = settle(p)
        assert (s["completed"], s["cut"], s["active"]) == (1, 0, 0)
    finally:
        p.close()
        lsock.close()


def test_a_finished_shadow_gives_back_its_claim_on_the_mirror_clusters_breaker(origin: Origin) -> None:
    """Each completed shadow kept its pool claim (an active request on the mirror cluster's circuit
    breaker) for good, so a waypoint would stop mirroring after `max_requests` shadows."""
    sink = Sink()
    p = Proxy(mirrored(origin.port, sink.port))
    try:
        for _ in range(5):
            assert timed(p.port, "/claims")[0] == 200
        assert len(sink.wait(5)) == 5
        assert settle(p)["active"] == 0
        deadline = time.time() + 5
        while p.call(lambda: len(p.engine.pools.claims)) and time.time() < deadline:  # type: ignore[union-attr]
            time.sleep(0.02)
        assert p.call(lambda: len(p.engine.pools.claims)) == 0  # type: ignore[union-attr]
    finally:
        p.close()
        sink.close()
