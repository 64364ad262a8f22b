"""A route timeout that fires once the response is under way, as real clients see it.

Envoy (the router's onResponseTimeout -> onUpstreamAbort -> sendLocalReply, which resets the stream
once headers went downstream) resets an HTTP/2 stream with NO_ERROR: its codec's `reasonToReset`
maps every reason but a refused stream and a CONNECT error to NO_ERROR. Ambit resets with
INTERNAL_ERROR instead (docs/resilience/retries.md "Timeouts"): curl 7.88 (nghttp2) takes a
RST_STREAM(NO_ERROR) after part of a body as the body's clean end (exit 0 with the body cut,
curl/curl#6015), where INTERNAL_ERROR is an error (exit 92). gRPC clients get INTERNAL either way.
These tests pin that, with curl and grpcio through the engine; HTTP/1.1 closes the connection
before the body is complete, which curl reports (exit 18).
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest

from tests.unit.waypoint.harness import Proxy, RawOrigin
from waypoint.request import Decision, Downstream, Forward, RequestHead
from waypoint.resilience.policy import RoutePolicy

TIMEOUT = RoutePolicy(timeout=1.0)
STALLED = {
    "/length": (b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial body", b""),
    "/chunked": (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nc\r\npartial body\r\n", b""),
}


def forward_to(port: int) -> object:
    def decide(head: RequestHead, down: Downstream) -> Decision:
        return Forward(service="test/origin", port=port, route="test#origin", policy=TIMEOUT)
    return decide


@pytest.fixture()
def stalled() -> Iterator[Proxy]:
    origin = RawOrigin(STALLED)
    proxy = Proxy(forward_to(origin.port))  # type: ignore[arg-type]
    yield proxy
    proxy.close()
    origin.release()
    origin.close()


@pytest.mark.parametrize("path", ["/length", "/chunked"])
@pytest.mark.parametrize("version, exit_code, error", [
    ("--http2-prior-knowledge", 92, b"was not closed cleanly: INTERNAL_ERROR"),    # not exit 0, as with NO_ERROR
    ("--http1.1", 18, b"transfer closed with"),                                    # the connection is closed
])
def test_curl_sees_the_cut_response_as_an_error(stalled: Proxy, path: str, version: str, exit_code: int,
                                                error: bytes) -> None:
    r = subprocess.run(["curl", "-sS", version, "-m", "20", f"http://127.0.0.1:{stalled.port}{path}"],
                       capture_output=True, timeout=30)
    assert r.stdout == b"partial body"
    assert r.returncode == exit_code and error in r.stderr, (r.returncode, r.stderr)
    assert [x.response_flags for x in stalled.records] == ["UT"]


def test_a_grpc_stream_cut_by_the_route_timeout_is_internal_after_its_first_message() -> None:
    release = threading.Event()

    def watch(req: bytes, ctx: grpc.ServicerContext) -> Iterator[bytes]:
        yield b"first"
        release.wait(30)                    # then nothing: the route timeout cuts the stream

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "slow.Slow", {"Watch": grpc.unary_stream_rpc_method_handler(watch)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    proxy = Proxy(forward_to(port), protocols={port: "h2"})  # type: ignore[arg-type]
    channel = grpc.insecure_channel(f"127.0.0.1:{proxy.port}")
    got: list[bytes] = []
    try:
        call = channel.unary_stream("/slow.Slow/Watch")(b"", timeout=20)
        with pytest.raises(grpc.RpcError) as e:
            for m in call:
                got.append(m)
        assert got == [b"first"]
        assert e.value.code() == grpc.StatusCode.INTERNAL            # type: ignore[attr-defined]
        assert "RST_STREAM with error code 2" in e.value.details()   # type: ignore[attr-defined]
        assert [x.response_flags for x in proxy.records] == ["UT"]
    finally:
        release.set()
        channel.close()
        proxy.close()
        server.stop(0)



def test_the_header_timeout_holds_for_a_client_whose_first_bytes_come_late_to_an_idle_waypoint() -> None:
    """The engine's tick (header, stream-idle and idle timeouts) runs while it has connections to
    check. It was armed only when a tunnel arrived: a tick during the tunnel's protocol detection
    found no connection and stopped, and the HTTP connection the tunnel then became was never
    checked. A slowloris client that waits a moment before its first bytes kept an idle waypoint's
    connection for ever, its head never complete, where `header_timeout` should cut it."""
    import socket
    import time

    from waypoint.http.settings import HttpSettings

    origin = RawOrigin()
    proxy = Proxy(forward_to(origin.port), settings=HttpSettings(header_timeout=0.4))  # a tick of 0.1 s
    try:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
            time.sleep(0.5)         # ticks pass while the tunnel is still being detected
            start = time.monotonic()
            s.sendall(b"GET /slow HTTP/1.1\r\nhost: origin\r\n")      # and the head never ends
            got = b""
            try:
                while data := s.recv(65536):
                    got += data
            except TimeoutError:
                pytest.fail(f"no header timeout in 5 s; got {got!r}")
        assert got.startswith(b"HTTP/1.1 408"), got
        assert time.monotonic() - start < 3.0
    finally:
        proxy.close()
