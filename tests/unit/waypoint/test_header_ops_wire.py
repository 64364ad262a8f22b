"""A route's header operations on the wire: the engine on loopback, driven by curl over HTTP/1.1
and HTTP/2, with an origin that records the bytes it got.

- A value outside latin-1 (`José 王`) went nowhere: the upstream head could not be encoded, a 500
  over HTTP/1.1 and a request never answered over HTTP/2. It now reaches the upstream as UTF-8, as
  Envoy sends it.
- Operations on headers the proxy owns are refused by the controller; the waypoint drops them too,
  so a config that skipped validation cannot re-frame a body: a POST with `content-length: 0` set by
  the route once reached the upstream as two requests.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from ambit.model import HeaderRewrite
from tests.unit.waypoint.harness import Proxy, RawOrigin
from waypoint.request import Decision, Downstream, Forward, RequestHead
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
