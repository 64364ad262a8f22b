"""HTTP/2 and gRPC through the engine: curl --http2-prior-knowledge, h2load and grpcio, to HTTP/1.1,
h2c and gRPC origins on loopback.

What users rely on: h2c prior knowledge downstream; h2c upstream for gRPC/HTTP/2 backends; heads
translated between HTTP/1.1 and HTTP/2 in both directions; gRPC status and trailers crossing the
proxy (unary and streaming, success and error); local replies to gRPC clients as trailers-only
responses with grpc-status (Envoy: 503 -> UNAVAILABLE); many concurrent streams; GOAWAY when the
proxy shuts down.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
from collections.abc import Iterator

import grpc
import h2.config
import h2.connection
import h2.events
import pytest

from tests.unit.waypoint.harness import GrpcOrigin, H2Origin, Origin, Proxy, by_header, free_port
from waypoint.http.headers import HOP_BY_HOP
from waypoint.http.http2.connection import encode_headers
from waypoint.http.settings import HttpSettings
from waypoint.localreply import local_reply
from waypoint.request import Decision, Downstream, LocalReply, RequestHead

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def backends() -> Iterator[dict[str, object]]:
    o, h, g = Origin(), H2Origin(), GrpcOrigin()
    yield {"h1": o, "h2": h, "grpc": g}
    o.close()
    h.close()
    g.close()


@pytest.fixture(scope="module")
def proxy(backends: dict) -> Iterator[Proxy]:
    ports = {"default": backends["h1"].port, "h1": backends["h1"].port, "h2": backends["h2"].port,
             "grpc": backends["grpc"].port, "dead": free_port()}
    base = by_header(ports)

    def decide(head: RequestHead, ds: Downstream) -> Decision:
        if head.path == "/echo.Echo/Denied":
            return LocalReply(403, b"RBAC: access denied")
        if head.path == "/echo.Echo/Policy":        # as authorization answers (a text/plain body)
            return local_reply(head, 403, "RBAC: access denied")
        if head.grpc:
            if head.header("x-to") == "dead":
                return base(head, ds)
            from waypoint.request import Forward
            return Forward(service="test/grpc", port=ports["grpc"], route="grpc")
        return base(head, ds)

    p = Proxy(decide, protocols={ports["h2"]: "h2", ports["grpc"]: "h2", ports["dead"]: "h2"})
    yield p
    assert p.live_exchanges() == 0
    p.close()


def curl(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["curl", "-sS", *args], capture_output=True, timeout=timeout)


def test_h2_downstream_to_h1_origin(proxy: Proxy) -> None:
    r = curl("--http2-prior-knowledge", "-v", f"http://127.0.0.1:{proxy.port}/h2to1?x=1", "-H", "x-request-id: r2")
    assert r.returncode == 0, r.stderr
    assert b"< HTTP/2 200" in r.stderr
    first = json.loads(r.stdout)
    h = dict(map(tuple, first["headers"]))
    assert first["path"] == "/h2to1?x=1" and h["host"] == f"127.0.0.1:{proxy.port}" and h["x-request-id"] == "r2"
    assert first["version"] == "HTTP/1.1"


def test_h2_several_requests_on_one_connection(proxy: Proxy) -> None:
    # nghttp, not curl: curl 7.88.1 fails to reuse a prior-knowledge h2c connection even against a
    # plain h2-library server (curl: (16) Error in the HTTP2 framing layer, before sending anything)
    r = subprocess.run(["nghttp", "-n", "-s", *(f"http://127.0.0.1:{proxy.port}/n{i}" for i in range(5))],
                       capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stderr
    done = re.findall(r"^\s*\d+\s+\S+\s+\S+\s+\S+\s+(\d+)\s+\d+\s+(/n\d)$", r.stdout, re.M)
    assert sorted(done) == [("200", f"/n{i}") for i in range(5)], r.stdout


def test_h2_to_h2_origin_with_body(proxy: Proxy) -> None:
    r = subprocess.run(
        ["curl", "-sS", "--http2-prior-knowledge", f"http://127.0.0.1:{proxy.port}/up", "-H", "x-to: h2",
         "--data-binary", "@-"], input=b"q" * 3_000_000, capture_output=True, timeout=30)
    got = json.loads(r.stdout)
    assert got["body_len"] == 3_000_000
    hdrs = dict(got["headers"])
    assert hdrs[":path"] == "/up" and hdrs[":method"] == "POST" and "x-request-id" in hdrs


def test_h2_library_codec_still_serves_both_legs(backends: dict) -> None:
    """`--http-h2-codec h2` (the fallback to nghttp2): h2c downstream, h2c upstream, a body both ways
    larger than one window, and gRPC's trailers across."""
    ports = {"default": backends["h2"].port, "h2": backends["h2"].port}
    p = Proxy(by_header(ports), protocols={backends["h2"].port: "h2"}, settings=HttpSettings(h2_codec="h2"))
    try:
        r = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", f"http://127.0.0.1:{p.port}/up", "-H",
                            "x-to: h2", "--data-binary", "@-"], input=b"q" * 300_000, capture_output=True,
                           timeout=30)
        assert json.loads(r.stdout)["body_len"] == 300_000, r.stderr
    finally:
        p.close()


def test_h1_downstream_to_h2_origin(proxy: Proxy) -> None:
    r = curl("-i", f"http://127.0.0.1:{proxy.port}/one-to-two", "-H", "x-to: h2", "-H", "Connection: keep-alive")
    head, body = r.stdout.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200") and b"x-origin: h2" in head
    hdrs = dict(json.loads(body)["headers"])
    assert hdrs[":authority"] == f"127.0.0.1:{proxy.port}" and "connection" not in hdrs and "host" not in hdrs


def test_h1_chunked_upload_to_h2_origin(proxy: Proxy) -> None:
    """HTTP/1.1 chunked body -> HTTP/2 DATA frames under the origin's flow control, 5 MB."""
    r = subprocess.run(["curl", "-sS", f"http://127.0.0.1:{proxy.port}/up1", "-H", "x-to: h2", "-T", "-",
                        "-H", "Transfer-Encoding: chunked"], input=b"u" * 5_000_000, capture_output=True, timeout=30)
    got = json.loads(r.stdout)
    assert got["body_len"] == 5_000_000
    assert "content-length" not in dict(got["headers"]) and "transfer-encoding" not in dict(got["headers"])


def test_h2_local_reply_and_connect_failure(proxy: Proxy) -> None:
    r = curl("--http2-prior-knowledge", "-i", f"http://127.0.0.1:{proxy.port}/x", "-H", "x-to: dead")
    assert r.stdout.startswith(b"HTTP/2 503") and r.stdout.endswith(b"reset reason: connection failure")


@pytest.fixture(scope="module")
def channel(proxy: Proxy) -> Iterator[grpc.Channel]:
    ch = grpc.insecure_channel(f"127.0.0.1:{proxy.port}")
    yield ch
    ch.close()


def test_grpc_unary_through_proxy(channel: grpc.Channel, proxy: Proxy) -> None:
    unary = channel.unary_unary("/echo.Echo/Unary")
    assert unary(b"hello", timeout=10) == b"echo:hello"
    rec = proxy.find(lambda x: x.path == "/echo.Echo/Unary")[-1]
    assert rec.grpc and rec.grpc_status == "0" and rec.upstream_protocol == "h2" and rec.protocol == "HTTP/2"


def test_grpc_large_messages_cross_both_windows(channel: grpc.Channel) -> None:
    """3 MB each way: far beyond every default HTTP/2 window, so flow control must move."""
    payload = bytes(range(256)) * (3 * 1024 * 4)
    assert channel.unary_unary("/echo.Echo/Unary")(payload, timeout=20) == b"echo:" + payload


def test_grpc_error_status_and_trailers_propagate(channel: grpc.Channel) -> None:
    unary = channel.unary_unary("/echo.Echo/Unary")
    with pytest.raises(grpc.RpcError) as e:
        unary(b"fail", timeout=10)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    assert e.value.details() == "no such thing"
    assert ("x-trailer", "yes") in tuple(e.value.trailing_metadata())


def test_grpc_streaming_through_proxy(channel: grpc.Channel) -> None:
    stream = channel.stream_stream("/echo.Echo/Stream")
    msgs = [b"m%d" % i * 1000 for i in range(200)]
    assert list(stream(iter(msgs), timeout=20)) == [b"echo:" + m for m in msgs]


def test_grpc_local_reply_is_trailers_only(channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as e:
        channel.unary_unary("/echo.Echo/Denied")(b"x", timeout=10)
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert e.value.details() == "RBAC: access denied"
    with pytest.raises(grpc.RpcError) as e:
        channel.unary_unary("/echo.Echo/Unary")(b"x", timeout=10, metadata=(("x-to", "dead"),))
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE


def _policy_denial(proxy: Proxy, content_type: str) -> tuple[list[str], bytes]:
    r = curl("--http2-prior-knowledge", "-i", "-X", "POST", "-H", f"content-type: {content_type}",
             "--data-binary", "", f"http://127.0.0.1:{proxy.port}/echo.Echo/Policy")
    head, _, body = r.stdout.partition(b"\r\n\r\n")
    return [x.strip() for x in head.decode().split("\r\n")], body


def test_grpc_local_reply_has_one_content_type(proxy: Proxy) -> None:
    """The text/plain of a local reply's body does not follow it into a gRPC trailers-only reply:
    two content-types make grpc-go (which keeps the last) fail the call as UNKNOWN."""
    lines, _ = _policy_denial(proxy, "application/grpc")
    assert lines[0] == "HTTP/2 200"
    assert [x for x in lines if x.startswith("content-type:")] == ["content-type: application/grpc"], lines
    assert "grpc-status: 7" in lines and "grpc-message: RBAC: access denied" in lines


def test_grpc_web_gets_plain_http_local_replies(proxy: Proxy) -> None:
    """gRPC-Web is not gRPC (Envoy's hasGrpcContentType): a denial stays a 403 with its body."""
    lines, body = _policy_denial(proxy, "application/grpc-web+proto")
    assert lines[0] == "HTTP/2 403" and not any(x.startswith("grpc-status") for x in lines), lines
    assert body == b"RBAC: access denied"


def _h2load(port: int, path: str, n: int, c: int, m: int, *extra: str) -> str:
    r = subprocess.run(["h2load", "-n", str(n), "-c", str(c), "-m", str(m), *extra,
                        f"http://127.0.0.1:{port}{path}"], capture_output=True, text=True, timeout=60)
    return r.stdout


def test_many_concurrent_streams_h2load(proxy: Proxy) -> None:
    out = _h2load(proxy.port, "/many", 2000, 4, 50, "-H", "x-to: h2")
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed", out)
    assert m and m.group(4) == "2000", out
    out = _h2load(proxy.port, "/many1", 500, 2, 20)          # h2 down, HTTP/1.1 up (pooled, parallel)
    m = re.search(r"(\d+) succeeded, (\d+) failed", out)
    assert m and m.group(1) == "500", out


def test_client_reset_propagates_upstream(proxy: Proxy) -> None:
    """A client RST_STREAM ends the upstream stream too; the connection keeps serving."""
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
        c.initiate_connection()
        c.send_headers(1, [(":method", "POST"), (":path", "/reset"), (":scheme", "http"),
                           (":authority", "a"), ("x-to", "h2")])
        c.send_data(1, b"partial")
        s.sendall(c.data_to_send())
        import time
        time.sleep(0.2)
        c.reset_stream(1)
        c.send_headers(3, [(":method", "GET"), (":path", "/after"), (":scheme", "http"), (":authority", "a")],
                       end_stream=True)
        s.sendall(c.data_to_send())
        status = None
        ended = False
        while not ended:
            for ev in c.receive_data(s.recv(65536)):
                if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == 3:
                    status = dict(ev.headers)[":status"]
                if isinstance(ev, h2.events.StreamEnded) and ev.stream_id == 3:
                    ended = True
            s.sendall(c.data_to_send())
        assert status == "200"
    recs = proxy.find(lambda x: x.path == "/reset")
    assert recs and recs[-1].response_flags == "DR"


def test_goaway_on_shutdown(backends: dict) -> None:
    p = Proxy(by_header({"default": backends["h1"].port}))
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    with socket.create_connection(("127.0.0.1", p.port), timeout=5) as s:
        c.initiate_connection()
        c.send_headers(1, [(":method", "GET"), (":path", "/g"), (":scheme", "http"), (":authority", "a")],
                       end_stream=True)
        s.sendall(c.data_to_send())
        done = False
        while not done:
            for ev in c.receive_data(s.recv(65536)):
                done = done or isinstance(ev, h2.events.StreamEnded)
        s.sendall(c.data_to_send())
        import threading

        from hyperframe.frame import GoAwayFrame

        from tests.support.h2frames import split_frames
        threading.Thread(target=p.close, daemon=True).start()
        # Every GOAWAY until the waypoint closes the connection: a notice that refuses no stream
        # (RFC 9113 §6.8), then the final one.
        data = b""
        while more := s.recv(65536):
            data += more
        frames, _ = split_frames(data)
        assert [(f.error_code, f.last_stream_id) for f in frames if isinstance(f, GoAwayFrame)] == [(0, 2**31 - 1), (0, 1)]


def _h2_get(port: int, path: str, headers: list[tuple[str, str]]) -> list[h2.events.Event]:
    """One request over a fresh h2c connection; every event of stream 1 until it ends or resets."""
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    events: list[h2.events.Event] = []
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        c.initiate_connection()
        c.send_headers(1, [(":method", "GET"), (":path", path), (":scheme", "http"), (":authority", "a"), *headers],
                       end_stream=True)
        s.sendall(c.data_to_send())
        while not any(isinstance(e, (h2.events.StreamEnded, h2.events.StreamReset)) for e in events):
            events += [e for e in c.receive_data(s.recv(65536)) if getattr(e, "stream_id", 0) == 1]
            s.sendall(c.data_to_send())
    return events


def test_upstream_reset_propagates_downstream(proxy: Proxy) -> None:
    # before the response head: Envoy's 503 "... reset reason: remote reset" (UR)
    events = _h2_get(proxy.port, "/rst-before", [("x-to", "h2")])
    head = next(e for e in events if isinstance(e, h2.events.ResponseReceived))
    assert dict(head.headers)[":status"] == "503"
    body = b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived))
    assert body.endswith(b"reset reason: remote reset")
    assert proxy.find(lambda x: x.path == "/rst-before" and x.response_flags == "UR")
    # after the head: the client's stream is reset too, INTERNAL_ERROR as Envoy's (a local reset),
    # not with the upstream's code (CANCEL: test_upstream_hostile.py, ...after_the_response_began...)
    events = _h2_get(proxy.port, "/rst-after", [("x-to", "h2")])
    assert isinstance(events[-1], h2.events.StreamReset) and events[-1].error_code == 2
    assert proxy.find(lambda x: x.path == "/rst-after" and x.status == 200 and x.response_flags == "UR")


def test_early_response_stops_the_request_body(proxy: Proxy) -> None:
    """Denied before the body is sent: the client gets 403, then RST_STREAM(NO_ERROR) telling it to
    stop sending (RFC 9113 §8.1), not a window that never reopens."""
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
        c.initiate_connection()
        c.send_headers(1, [(":method", "POST"), (":path", "/echo.Echo/Denied"), (":scheme", "http"),
                           (":authority", "a")])
        s.sendall(c.data_to_send())
        events: list[h2.events.Event] = []
        while not any(isinstance(e, h2.events.StreamReset) for e in events):
            events += c.receive_data(s.recv(65536))
            s.sendall(c.data_to_send())
    status = next(dict(e.headers)[":status"] for e in events if isinstance(e, h2.events.ResponseReceived))
    reset = next(e for e in events if isinstance(e, h2.events.StreamReset))
    assert status == "403" and reset.error_code == 0


def _encode_reference(pseudo: list[tuple[str, str]], headers: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    """What goes on the wire: the pseudo-headers, then every header but hop-by-hop ones (TE:
    trailers excepted), Host and pseudo-headers, latin-1, in order."""
    out = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in pseudo]
    return out + [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers
                  if not (k in HOP_BY_HOP and not (k == "te" and v == "trailers") or k == "host" or k.startswith(":"))]


@pytest.mark.parametrize("headers", [
    [], [("content-type", "text/plain"), ("server", "nginx"), ("x-é", "ü")], [(":path", "/"), ("a", "b")],
    [("te", "trailers")], [("te", "gzip")], [("host", "h"), ("a", "b")], [("connection", "close"), ("a", "b")],
    [("!x", "y"), ("1a", "b")], [(":", "y")], [(";", "y")], [("a", "b"), ("a", "c")],
])
def test_encode_headers_drops_what_http2_forbids_and_keeps_the_rest_in_order(headers: list[tuple[str, str]]) -> None:
    for pseudo in ([], [(":status", "200")]):
        assert encode_headers(pseudo, headers) == _encode_reference(pseudo, headers)


@pytest.mark.parametrize("codec", ["nghttp2", "h2"])
@pytest.mark.parametrize("path", ["/a b", "x", "/a HTTP/1.1", "/a\tb", "*"])
def test_a_malformed_path_resets_its_stream_and_the_connection_serves_on(backends: dict, codec: str,
                                                                         path: str) -> None:
    """RFC 9113 §8.1.1: a `:path` that is no origin-form target (or "*" on a GET) is a stream error,
    whichever codec parses it: RST_STREAM PROTOCOL_ERROR, nothing forwarded (it would land in the
    origin's HTTP/1.1 request line as is), and the next stream on the connection is served."""
    ports = {"default": backends["h1"].port}
    p = Proxy(by_header(ports), settings=HttpSettings(h2_codec=codec))
    try:
        c = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, validate_outbound_headers=False, normalize_outbound_headers=False))
        c.initiate_connection()
        with socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:
            c.send_headers(1, [(":method", "GET"), (":scheme", "http"), (":authority", "web"), (":path", path)],
                           end_stream=True)
            c.send_headers(3, [(":method", "GET"), (":scheme", "http"), (":authority", "web"), (":path", "/ok")],
                           end_stream=True)
            s.sendall(c.data_to_send())
            resets, statuses = {}, {}
            while 3 not in statuses or 1 not in resets:
                data = s.recv(65536)
                assert data, f"connection closed; resets {resets}, statuses {statuses}"
                for ev in c.receive_data(data):
                    if isinstance(ev, h2.events.StreamReset):
                        resets[ev.stream_id] = ev.error_code
                    elif isinstance(ev, h2.events.ResponseReceived):
                        statuses[ev.stream_id] = dict(ev.headers)[b":status"]
                s.sendall(c.data_to_send())
        assert resets == {1: h2.errors.ErrorCodes.PROTOCOL_ERROR}
        assert statuses == {3: b"200"}
    finally:
        p.close()
