"""HTTP/1.1 through the engine with real clients (curl, raw sockets) to a real origin on loopback.

What a user of an Envoy/Istio waypoint relies on: keep-alive both sides, streamed bodies in both
directions (chunked and Content-Length), 100-continue answered by the proxy (Envoy's default),
HTTP/1.0, pipelining in order, hop-by-hop headers removed, x-request-id / traceparent / B3, local
replies, Envoy's 503 bodies and response flags, WebSocket upgrade, and bad input answered with an
HTTP error (400/431/408) without hurting the proxy.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.unit.waypoint.harness import Origin, Proxy, by_header, free_port
from waypoint.http.exchange import RESET_BEFORE_HEADERS
from waypoint.http.http1.wire import encode_head
from waypoint.http.settings import HttpSettings
from waypoint.request import Decision, Downstream, Forward, LocalReply, RequestHead

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def origin() -> Iterator[Origin]:
    o = Origin()
    yield o
    o.close()


def _decide(origin_port: int, dead_port: int):  # noqa: ANN202
    base = by_header({"default": origin_port, "dead": dead_port, "none": 0})

    def decide(head: RequestHead, ds: Downstream) -> Decision:
        if head.path_only == "/deny":
            return LocalReply(403, b"RBAC: access denied", route="authz")
        if head.path_only.startswith("/rewrite/"):
            fwd = base(head, ds)
            assert isinstance(fwd, Forward)
            from dataclasses import replace

            from waypoint.request import HeaderOps
            return replace(fwd, path="/" + head.path.split("/", 2)[2], authority="rewritten.example",
                           request_headers=HeaderOps(set=(("x-added", "1"),), remove=("x-drop",)),
                           response_headers=HeaderOps(add=(("x-resp", "r"),), remove=("x-origin",)))
        return base(head, ds)

    return decide


@pytest.fixture(scope="module")
def proxy(origin: Origin) -> Iterator[Proxy]:
    p = Proxy(_decide(origin.port, free_port()))
    yield p
    assert p.live_exchanges() == 0
    p.close()


def curl(*args: str, input: bytes | None = None, timeout: float = 20) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["curl", "-sS", *args], capture_output=True, input=input, timeout=timeout)


def url(p: Proxy, path: str) -> str:
    return f"http://127.0.0.1:{p.port}{path}"


def raw(p: Proxy, data: bytes, *, read_until_close: bool = True, timeout: float = 5) -> bytes:
    with socket.create_connection(("127.0.0.1", p.port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            out += chunk
            if not read_until_close:
                break
        return out


def test_keepalive_downstream_and_pooled_upstream(proxy: Proxy, origin: Origin) -> None:
    before_conns, before_reqs = origin.connections, origin.requests
    r = curl("-v", url(proxy, "/a"), url(proxy, "/b"), url(proxy, "/c"))
    assert r.returncode == 0, r.stderr
    assert r.stderr.count(b"Re-using existing connection") == 2      # one client connection
    assert origin.requests - before_reqs == 3
    assert origin.connections - before_conns <= 1                     # one pooled upstream connection


def test_headers_forwarded_hop_by_hop_removed(proxy: Proxy) -> None:
    tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    r = curl(url(proxy, "/h"), "-H", "Connection: keep-alive, x-secret", "-H", "x-secret: s", "-H", "Keep-Alive: 5",
             "-H", "Proxy-Authorization: Basic eA==", "-H", f"traceparent: {tp}", "-H", "x-b3-traceid: 463ac35c9f6413ad",
             "-H", "x-request-id: rid-1")
    got = dict(map(tuple, json.loads(r.stdout)["headers"]))
    for h in ("connection", "x-secret", "keep-alive", "proxy-authorization"):
        assert h not in got, h
    assert got["traceparent"] == tp and got["x-b3-traceid"] == "463ac35c9f6413ad"
    assert got["x-request-id"] == "rid-1" and got["x-forwarded-proto"] == "http"
    rec = proxy.find(lambda x: x.path == "/h")[-1]
    assert rec.request_id == "rid-1" and rec.status == 200 and rec.route == "test#default"


def test_request_id_generated_and_no_trace_context_without_a_tracer(proxy: Proxy) -> None:
    """Envoy without a tracer injects no trace context. The waypoint added an unsampled
    `traceparent` to every request, which an app's parent-based sampler (OpenTelemetry's
    default) obeys: no app behind a waypoint without tracing could trace on its own."""
    got = dict(map(tuple, json.loads(curl(url(proxy, "/gen")).stdout)["headers"]))
    assert len(got["x-request-id"]) == 36
    assert "traceparent" not in got
    b3 = dict(map(tuple, json.loads(curl(url(proxy, "/gen"), "-H", "x-b3-sampled: 1").stdout)["headers"]))
    assert b3["x-b3-sampled"] == "1" and "traceparent" not in b3     # a B3 decision is not overruled


def test_rewrite_and_header_ops(proxy: Proxy) -> None:
    r = curl("-i", url(proxy, "/rewrite/x/y?q=1"), "-H", "x-drop: 1")
    head, body = r.stdout.split(b"\r\n\r\n", 1)
    got = json.loads(body)
    assert got["path"] == "/x/y?q=1"
    h = dict(map(tuple, got["headers"]))
    assert h["host"] == "rewritten.example" and h["x-added"] == "1" and "x-drop" not in h
    assert b"x-resp: r" in head and b"x-origin" not in head


def test_chunked_upload_streams(proxy: Proxy) -> None:
    body = os.urandom(3 * 1024 * 1024)
    r = curl(url(proxy, "/up"), "-T", "-", "-H", "Transfer-Encoding: chunked", input=body)
    got = json.loads(r.stdout)
    assert got["body_len"] == len(body) and got["body_sha"] == hashlib.sha256(body).hexdigest()
    assert got["method"] == "PUT"


def test_expect_100_continue_answered_by_proxy(proxy: Proxy, tmp_path) -> None:  # noqa: ANN001
    f = tmp_path / "body"
    f.write_bytes(b"z" * 200_000)
    t0 = time.monotonic()
    # a 30 s expect timeout: without the proxy's 100 Continue, curl would sit out those 30 s
    r = curl("-v", "--expect100-timeout", "30", "--data-binary", f"@{f}", "-H", "Expect: 100-continue", url(proxy, "/c"))
    assert time.monotonic() - t0 < 10
    assert b"HTTP/1.1 100 Continue" in r.stderr
    got = json.loads(r.stdout)
    assert got["body_len"] == 200_000
    assert "expect" not in dict(map(tuple, got["headers"]))


def test_http10_request(proxy: Proxy) -> None:
    r = curl("-0", "-v", url(proxy, "/ten"))
    assert r.returncode == 0 and json.loads(r.stdout)["path"] == "/ten"
    assert b"HTTP/1.1 200" in r.stderr
    # a chunked upstream body cannot be chunked to an HTTP/1.0 client: it ends with the connection
    out = raw(proxy, b"GET /stream?n=3 HTTP/1.0\r\n\r\n")
    head, body = out.split(b"\r\n\r\n", 1)
    assert b"transfer-encoding" not in head.lower() and b"connection: close" in head
    assert body == b"chunk-0\nchunk-1\nchunk-2\n"


def test_streamed_response_and_large_body(proxy: Proxy) -> None:
    r = curl(url(proxy, "/stream?n=50"))
    assert r.stdout == b"".join(f"chunk-{i}\n".encode() for i in range(50))
    r = curl(url(proxy, "/big=5000000"))
    assert r.stdout == b"b" * 5_000_000


def test_head_then_keepalive(proxy: Proxy) -> None:
    r = curl("-v", "-I", url(proxy, "/head"), "--next", url(proxy, "/after-head"))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.split(b"\r\n\r\n", 1)[1])["path"] == "/after-head"


def test_local_reply_and_no_healthy_upstream(proxy: Proxy) -> None:
    r = curl("-i", url(proxy, "/deny"))
    assert r.stdout.startswith(b"HTTP/1.1 403") and r.stdout.endswith(b"RBAC: access denied")
    r = curl("-i", url(proxy, "/x"), "-H", "x-to: none")
    assert r.stdout.startswith(b"HTTP/1.1 503") and r.stdout.endswith(b"no healthy upstream")
    rec = proxy.find(lambda x: x.status == 503 and x.response_flags == "UH")
    assert rec


def test_connect_failure_is_503_uf(proxy: Proxy) -> None:
    r = curl("-i", url(proxy, "/x"), "-H", "x-to: dead")
    assert r.stdout.startswith(b"HTTP/1.1 503")
    assert r.stdout.endswith((RESET_BEFORE_HEADERS + "connection failure").encode())
    assert proxy.find(lambda x: x.response_flags == "UF,URX")   # Istio's default policy retried it twice


def test_pipelined_requests_answered_in_order(proxy: Proxy, origin: Origin) -> None:
    before = origin.connections
    reqs = b"".join(b"GET /p%d HTTP/1.1\r\nHost: a\r\n\r\n" % i for i in range(3))
    out = raw(proxy, reqs + b"GET /p3 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    paths = [json.loads(part.split(b"\r\n\r\n", 1)[1][: part.split(b"\r\n\r\n", 1)[1].index(b"}") + 1])["path"]
             for part in out.split(b"HTTP/1.1 200 OK")[1:]]
    assert paths == ["/p0", "/p1", "/p2", "/p3"]
    assert origin.connections - before <= 1         # served one after another on one pooled connection



def test_keep_alive_requests_one_at_a_time_and_no_parser_held_between_them(proxy: Proxy) -> None:
    """A held keep-alive connection keeps no parser between requests (docs/performance.md §56);
    each request that follows gets a fresh one and is answered, and one after a `Connection:
    close` request is not served."""
    from waypoint.http.http1.server import H1Server

    def idle_parsers() -> list[object]:
        return proxy.call(lambda: [c.parser for c in proxy.engine.conns if isinstance(c, H1Server)])  # type: ignore

    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
        f = s.makefile("rb")
        for i in range(3):
            s.sendall(b"GET /k%d HTTP/1.1\r\nHost: a\r\n\r\n" % i)
            assert f.readline().startswith(b"HTTP/1.1 200")
            length = 0
            while (line := f.readline()) != b"\r\n":
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            assert json.loads(f.read(length))["path"] == f"/k{i}"
            assert idle_parsers() == [None]
        s.sendall(b"GET /last HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
                  b"GET /after HTTP/1.1\r\nHost: a\r\n\r\n")
        rest = f.read()
    assert b"/after" not in rest

def test_malformed_request_is_400(proxy: Proxy) -> None:
    out = raw(proxy, b"GET / HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400")
    smuggle = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    assert raw(proxy, smuggle).startswith(b"HTTP/1.1 400")
    assert raw(proxy, b"GET / HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 400")        # no Host
    assert proxy.find(lambda x: x.status == 400 and x.response_flags == "DPE")
    assert curl(url(proxy, "/still-up")).returncode == 0


def test_oversized_headers_are_431(proxy: Proxy) -> None:
    out = raw(proxy, b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 431")
    many = b"".join(b"X-%d: v\r\n" % i for i in range(150))
    assert raw(proxy, b"GET / HTTP/1.1\r\nHost: a\r\n" + many + b"\r\n").startswith(b"HTTP/1.1 431")
    assert proxy.find(lambda x: x.status == 431)


def test_backend_dies_mid_response(proxy: Proxy) -> None:
    r = curl(url(proxy, "/die"))
    assert r.returncode in (18, 52, 56)              # partial file / reset: never a complete response
    r = curl("-i", url(proxy, "/nohead"))
    assert r.stdout.startswith(b"HTTP/1.1 503") and b"connection termination" in r.stdout
    assert curl(url(proxy, "/alive")).returncode == 0


@pytest.mark.parametrize("token", [b"websocket", b"WebSocket"])
def test_websocket_upgrade_passthrough(proxy: Proxy, token: bytes) -> None:
    """The one upgrade tunnelled (Istio's upgrade_configs; the token compared without case)."""
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
        s.sendall(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: " + token + b"\r\n"
                  b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(4096)
        assert head.startswith(b"HTTP/1.1 101")
        assert b"sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in head
        frame = b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58"    # RFC 6455 §5.7 masked "Hello"
        s.sendall(frame)
        got = b""
        while len(got) < len(frame):
            got += s.recv(4096)
        assert got == frame


def test_slowloris_head_times_out() -> None:
    o = Origin()
    p = Proxy(by_header({"default": o.port}), settings=HttpSettings(header_timeout=0.5))
    try:
        t0 = time.monotonic()
        with socket.create_connection(("127.0.0.1", p.port), timeout=5) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n")
            out = b""
            for _ in range(20):
                try:
                    s.sendall(b"X-Slow: 1\r\n")
                except OSError:
                    break
                time.sleep(0.1)
                s.setblocking(False)
                try:
                    out += s.recv(4096)
                except BlockingIOError:
                    pass
                s.setblocking(True)
                if out:
                    break
        assert out.startswith(b"HTTP/1.1 408")
        assert time.monotonic() - t0 < 3
    finally:
        p.close()
        o.close()


def test_stream_idle_timeouts() -> None:
    """A silent upstream gets 504, a stalled request body 408 (Envoy's stream_idle_timeout, SI)."""
    o = Origin()
    p = Proxy(by_header({"default": o.port}), settings=HttpSettings(stream_idle_timeout=0.5))
    try:
        r = curl("-i", url(p, "/slow=2"))
        assert r.stdout.startswith(b"HTTP/1.1 504")
        assert p.find(lambda x: x.response_flags == "SI" and x.status == 504)
        t0 = time.monotonic()
        out = raw(p, b"POST /stall HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nonly-some")
        assert out.startswith(b"HTTP/1.1 408") and time.monotonic() - t0 < 3
        assert p.find(lambda x: x.path == "/stall" and x.status == 408)
    finally:
        p.close()
        o.close()


def test_expect_100_with_a_local_reply_does_not_wait(proxy: Proxy, tmp_path) -> None:  # noqa: ANN001
    """A denied upload: the final answer comes at once, no 100 Continue, and the connection closes
    (the body the client may or may not send next would be unframed)."""
    f = tmp_path / "body"
    f.write_bytes(b"z" * 100_000)
    t0 = time.monotonic()
    r = curl("-v", "--expect100-timeout", "30", "--data-binary", f"@{f}", "-H", "Expect: 100-continue", url(proxy, "/deny"))
    assert time.monotonic() - t0 < 10
    assert b"< HTTP/1.1 403" in r.stderr and b"100 Continue" not in r.stderr
    assert r.stdout == b"RBAC: access denied"


def test_absolute_form_request_target(proxy: Proxy) -> None:
    """A client configured with the waypoint as its HTTP proxy sends absolute-form targets."""
    r = curl("-x", f"http://127.0.0.1:{proxy.port}", "http://svc.example:8080/abs?q=1")
    got = json.loads(r.stdout)
    assert got["path"] == "/abs?q=1"
    assert dict(map(tuple, got["headers"]))["host"] == "svc.example:8080"
    assert proxy.find(lambda x: x.path == "/abs?q=1" and x.authority == "svc.example:8080")


@pytest.mark.parametrize("headers", [[], [("host", "a")], [("content-type", "text/plain"), ("x-a", "b: c"), ("x-é", "ü")]])
def test_encode_head_is_the_line_each_header_line_and_a_blank_line(headers: list[tuple[str, str]]) -> None:
    expected = b"GET / HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers).encode("latin-1") + b"\r\n"
    assert encode_head(b"GET / HTTP/1.1\r\n", headers) == expected


def test_outlier_detection_http_error_codes_on_the_wire() -> None:
    """DestinationRule `outlierDetectionHttpErrorCodes: [429]`, `consecutive5xxErrors: 2`: answers
    read off a real connection. An endpoint answering 503 is not ejected (a 5xx that is not listed
    is a success); one answering 429 twice is."""
    import random

    from ambit.model import TrafficPolicy
    from waypoint.traffic.cluster import Cluster, ClusterKey

    o = Origin()
    host = f"127.0.0.1:{o.port}"
    policy = TrafficPolicy(outlier_detection=True, consecutive_5xx_errors=2, max_ejection_percent=100,
                           outlier_http_error_codes=[429])
    box: list[Cluster] = []
    p = Proxy(by_header({"default": o.port}))
    try:
        p.call(lambda: box.append(Cluster(ClusterKey("test/default", o.port), policy, p.loop.time,
                                          random.Random(1), "default.test.svc.cluster.local")))
        cluster = p.cluster = box[0]
        p.call(lambda: cluster.choose([host]))          # the cluster's endpoints
        for _ in range(3):
            assert curl("-o", "/dev/null", "-w", "%{http_code}", url(p, "/status=503")).stdout == b"503"
        assert not p.call(lambda: cluster.outlier.is_ejected(host))     # type: ignore[union-attr]
        for _ in range(2):
            assert curl("-o", "/dev/null", "-w", "%{http_code}", url(p, "/status=429")).stdout == b"429"
        assert p.call(lambda: cluster.outlier.is_ejected(host))         # type: ignore[union-attr]
    finally:
        p.close()
        o.close()


def test_a_stalled_request_body_does_not_count_against_the_endpoint() -> None:
    """A client that stalls its upload gets 408 (SI): that is its own doing, and was recorded as a
    timeout of the endpoint, so with consecutiveGatewayErrors: 1 a healthy endpoint was ejected.
    A silent upstream (504 SI) still counts."""
    import random

    from ambit.model import TrafficPolicy
    from waypoint.traffic.cluster import Cluster, ClusterKey

    o = Origin()
    host = f"127.0.0.1:{o.port}"
    policy = TrafficPolicy(outlier_detection=True, consecutive_gateway_errors=1, consecutive_5xx_errors=0,
                           max_ejection_percent=100)
    box: list[Cluster] = []
    p = Proxy(by_header({"default": o.port}), settings=HttpSettings(stream_idle_timeout=0.5))
    try:
        p.call(lambda: box.append(Cluster(ClusterKey("test/default", o.port), policy, p.loop.time,
                                          random.Random(1), "default.test.svc.cluster.local")))
        cluster = p.cluster = box[0]
        p.call(lambda: cluster.choose([host]))          # the cluster's endpoints
        out = raw(p, b"POST /stall HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nonly-some")
        assert out.startswith(b"HTTP/1.1 408")
        assert not p.call(lambda: cluster.outlier.is_ejected(host))     # type: ignore[union-attr]
        assert curl("-i", url(p, "/slow=2")).stdout.startswith(b"HTTP/1.1 504")
        assert p.call(lambda: cluster.outlier.is_ejected(host))         # type: ignore[union-attr]
    finally:
        p.close()
        o.close()
