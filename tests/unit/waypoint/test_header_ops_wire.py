"""A route's header operations on the wire: the engine on loopback, driven by curl over HTTP/1.1
and HTTP/2, with an origin that records the bytes it got.

- A value outside latin-1 (`José 王`) went nowhere: the upstream head could not be encoded, a 500
  over HTTP/1.1 and a request never answered over HTTP/2. It now reaches the upstream as UTF-8, as
  Envoy sends it.
- Operations on headers the proxy owns are refused by the controller; the waypoint drops them too,
  so a config that skipped validation cannot re-frame a body: a POST with `content-length: 0` set by
  the route once reached the upstream as two requests.
- A rewritten authority or path, and a redirect's Location, outside latin-1 go as UTF-8 too (they
  hung the request, or closed the client's connection unanswered).
"""

from __future__ import annotations

import dataclasses
import random
import subprocess
from collections.abc import Iterator

import pytest

from ambit.model import HeaderRewrite
from tests.unit.waypoint.harness import Proxy, RawOrigin
from tests.unit.waypoint.support import namespace, service, table_of
from waypoint.request import Decision, Downstream, Forward, RequestHead
from waypoint.routing import route
from waypoint.routing.headers import request_ops

PROTOCOLS = ["--http1.1", "--http2-prior-knowledge"]
OPS = HeaderRewrite(request_set={"x-team": "José 王", "content-length": "0", "transfer-encoding": "chunked"},
                    request_add={"connection": "x-keep"}, request_remove=[":path"])


@pytest.fixture()
def wire() -> Iterator[tuple[Proxy, RawOrigin]]:
    origin = RawOrigin()

    def decide(head: RequestHead, down: Downstream) -> Decision:
        return Forward(service="test/origin", port=origin.port, request_headers=request_ops(OPS))

    proxy = Proxy(decide)
    yield proxy, origin
    proxy.close()
    origin.close()


@pytest.mark.parametrize("version", PROTOCOLS)
def test_route_header_values_go_as_utf8_and_framing_stays_the_proxys(
        wire: tuple[Proxy, RawOrigin], version: str) -> None:
    proxy, origin = wire
    smuggled = b"GET /smuggled HTTP/1.1\r\nhost: x\r\n\r\n"
    r = subprocess.run(["curl", "-sS", version, "-m", "10", "-o", "/dev/null", "-w", "%{http_code}",
                        "--data-binary", "@-", f"http://127.0.0.1:{proxy.port}/upload"],
                       input=smuggled, capture_output=True, timeout=20)
    assert r.stdout == b"200", r.stderr
    [(_, method, target, body)] = origin.wait_requests(1)
    assert (method, target, body) == ("POST", "/upload", smuggled)      # one request, its whole body
    raw = bytes(next(iter(origin.raw.values())))
    head = raw[:raw.index(b"\r\n\r\n")].lower()
    assert "x-team: josé 王".encode() in head
    assert b"content-length: 0" not in head and b"x-keep" not in head


REWRITES = [namespace("demo"), service("reviews", "demo", {"http": 80}), {
    "apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "reviews", "namespace": "demo"},
    "spec": {"hosts": ["reviews"], "http": [
        {"match": [{"uri": {"prefix": "/old"}}], "redirect": {"authority": "josé.example", "uri": "/王"}},
        {"rewrite": {"authority": "josé.example", "uri": "/王/"}, "route": [{"destination": {"host": "reviews"}}]}]}}]


@pytest.mark.parametrize("version", PROTOCOLS)
def test_a_rewritten_or_redirected_authority_and_path_outside_latin1_go_as_utf8(version: str) -> None:
    """A VirtualService `rewrite.authority` outside latin-1 (found by test_request_config_fuzz) made
    the upstream head unencodable: the request was never answered until the stream idle timeout
    (504 after 5 minutes); a `redirect.authority` made the redirect unencodable: the HTTP/1.1 client's
    connection was closed unanswered, the HTTP/2 stream reset. Both now go as their UTF-8 bytes, as
    Envoy sends configured text (and as route header values go)."""
    table = table_of(REWRITES)
    origin = RawOrigin()
    down = Downstream(source_ip="127.0.0.1", destination_port=80, service="demo/reviews",
                      hostname="reviews.demo.svc.cluster.local")

    def decide(head: RequestHead, _: Downstream) -> Decision:
        d = route(table, head, down, random.Random(1))
        return dataclasses.replace(d, port=origin.port) if isinstance(d, Forward) else d

    proxy = Proxy(decide)
    try:
        def curl(path: str) -> bytes:
            r = subprocess.run(["curl", "-sS", version, "-m", "10", "-D", "-", "-o", "/dev/null",
                                f"http://127.0.0.1:{proxy.port}{path}"], capture_output=True, timeout=20)
            assert r.returncode == 0, r.stderr
            return r.stdout.lower()
        curl("/x")      # (answered 400 by the origin's parser, which takes no raw UTF-8 in a target)
        raw = bytes(next(iter(origin.raw.values())))
        assert raw.startswith("GET /王/x HTTP/1.1\r\n".encode()) and "host: josé.example\r\n".encode() in raw, raw
        got = curl("/old")
        assert got.startswith((b"http/1.1 301", b"http/2 301")) and "location: http://josé.example/王\r\n".encode() in got
    finally:
        proxy.close()
        origin.close()
