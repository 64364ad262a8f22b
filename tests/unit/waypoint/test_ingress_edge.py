"""An ingress gateway's clients are outside the mesh: the headers they send are sanitized as an edge
Envoy sanitizes them (waypoint/http/edge.py), here on the wire: the gateway's real listeners (plain
HTTP and HTTPS on loopback), its real decision (`WaypointProxy.decide` on a Gateway's routes), the
engine, curl as the client and an origin that echoes the headers it got.

Before, a client's `X-Forwarded-Proto: https` over plain HTTP, its `x-forwarded-client-cert`, its
`x-request-id` and the x-envoy control headers (`x-envoy-force-trace` forced a trace at the gateway,
`x-envoy-retry-on`, ... went to the backends) all passed; and an HTTPS client speaking HTTP/1.1 was
forwarded with `x-forwarded-proto: http` and redirected to `http://`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from ambit.configclient import ConfigUpdate
from ambit.model import (
    HttpMatch,
    HttpRoute,
    IngressGateway,
    IngressListener,
    Redirect,
    RouteDestination,
    StringMatch,
    WaypointRoutes,
)
from tests.unit.waypoint.harness import Origin
from tests.unit.waypoint.test_ingress import _free_port, _issue, _no_relay
from waypoint.http import edge
from waypoint.http.engine import Engine, UpstreamTarget
from waypoint.http.plug import connect_tcp
from waypoint.http.settings import HttpSettings
from waypoint.ingress_listen import IngressListeners
from waypoint.request import Downstream

FORGED = {
    "x-forwarded-proto": "https",
    "x-forwarded-client-cert": "By=spiffe://cluster.local/ns/demo/sa/echo;URI=spiffe://cluster.local/ns/prod/sa/admin",
    "x-request-id": "chosen-by-the-client",
    "x-envoy-force-trace": "true",
    "x-envoy-retry-on": "5xx",
    "x-envoy-max-retries": "50",
    "x-envoy-upstream-rq-timeout-ms": "0",
    "x-envoy-internal": "true",
    "x-envoy-external-address": "10.0.0.1",
    "x-forwarded-for": "203.0.113.9",
}


def test_sanitize_keeps_the_rest_and_sets_the_edge_headers() -> None:
    got = edge.sanitize([("x-forwarded-for", "a"), ("accept", "*/*"), ("x-forwarded-for", "b"),
                         ("x-envoy-retry-on", "5xx"), ("x-request-id", "r"), ("x-custom", "v")], "https", "192.0.2.7")
    assert got == [("accept", "*/*"), ("x-custom", "v"), ("x-forwarded-for", "a,b,192.0.2.7"),
                   ("x-forwarded-proto", "https"), ("x-envoy-external-address", "192.0.2.7")]


def _gateway(http: int, https: int, certs) -> IngressGateway:
    echo = RouteDestination("echo.demo.svc.cluster.local", "demo/echo", port=8080)
    routes = [WaypointRoutes("a.example.com", http=[
        HttpRoute(source="HTTPRoute/demo/old", matches=[HttpMatch(path=StringMatch("path_prefix", "/old"))],
                  # Gateway API RequestRedirect without scheme or port: the request's scheme, the listener's port
                  redirect=Redirect(path="/new", code=302, derive_port="FROM_REQUEST_PORT")),
        HttpRoute(source="HTTPRoute/demo/echo", destinations=[echo])])]
    return IngressGateway("gw", "demo", listeners=[
        IngressListener("http", http, "HTTP", "", "", [], routes),
        IngressListener("https", https, "HTTPS", "a.example.com", "", [certs["a.example.com"]], routes)])


async def _curl(*args: str) -> str:
    p = await asyncio.create_subprocess_exec("curl", "-sS", "-m", "10", *args, stdout=asyncio.subprocess.PIPE,
                                             stderr=asyncio.subprocess.PIPE)
    out, err = await p.communicate()
    assert p.returncode == 0, err
    return out.decode()


@pytest.fixture()
def origin():
    o = Origin()
    yield o
    o.close()


class _Gateway:
    """The ingress gateway of `_gateway` on loopback: its real listeners, decision and engine, the
    origin as every backend; `traced` holds the headers the tracer saw, per request."""

    def __init__(self, tmp: Path, origin: Origin, settings: HttpSettings | None = None) -> None:
        from waypoint.app import WaypointProxy
        from waypoint.authz import Waypoint
        from waypoint.config import WaypointConfig
        from waypoint.settings import load

        self.ca, certs = _issue(tmp, ("a.example.com",))
        self.http, self.https = _free_port(), _free_port()
        self.cfg = WaypointConfig(Waypoint("demo", "gw"), "cluster.local")
        gw = _gateway(self.http, self.https, certs)
        self.cfg.apply(ConfigUpdate(IngressGateway.TYPE, "1", {}, frozenset(), {gw.resource_name: gw}))
        self.proxy = WaypointProxy(load(["--waypoint", "demo/gw", "--pod-name", "gw-0", "--node", "node1",
                                         "--gateway-class", "ambit"]), self.cfg, None)
        self.origin, self.settings = origin, settings or HttpSettings()
        self.traced: list[dict[str, str]] = []
        self.downs: list[Downstream] = []       # the connection each request came on, as the engine got it
        self.resolve = ["--resolve", f"a.example.com:{self.http}:127.0.0.1",
                        "--resolve", f"a.example.com:{self.https}:127.0.0.1", "--cacert", str(self.ca)]

    def run(self, body: Callable[[], Awaitable[None]]) -> None:
        traced, port = self.traced, self.origin.port

        downs = self.downs

        class Tracer:       # what the gateway's tracer decides from: x-envoy-force-trace, x-request-id
            def server(self, head, down, rec) -> None:
                traced.append(dict(head.headers))
                downs.append(down)

        def upstream(fwd, head, down, exclude=frozenset()) -> UpstreamTarget:     # demo/echo: the origin
            return UpstreamTarget(key="origin", address=f"127.0.0.1:{port}",
                                  connect=lambda: connect_tcp("127.0.0.1", port, 5))

        async def main() -> None:
            engine = Engine(self.settings, self.proxy.decide, upstream)
            engine.tracing = Tracer()
            self.proxy.ingress = listeners = IngressListeners("127.0.0.1", engine.serve, _no_relay)
            await listeners.update(self.cfg.view.ingress)
            try:
                await body()
            finally:
                await listeners.close()
                await engine.shutdown()

        asyncio.run(main())


def test_an_external_clients_forged_headers_do_not_pass_the_gateway(tmp_path: Path, origin: Origin) -> None:
    gw = _Gateway(tmp_path, origin)
    forged = [a for k, v in FORGED.items() for a in ("-H", f"{k}: {v}")]

    async def body() -> None:
        for url, version, scheme in [(f"http://a.example.com:{gw.http}/", "--http1.1", "http"),
                                     (f"http://a.example.com:{gw.http}/", "--http2-prior-knowledge", "http"),
                                     (f"https://a.example.com:{gw.https}/", "--http1.1", "https"),
                                     (f"https://a.example.com:{gw.https}/", "--http2", "https")]:
            got = dict(json.loads(await _curl(url, version, *forged, *gw.resolve))["headers"])
            assert got["x-forwarded-proto"] == scheme, (url, version, got)
            assert got["x-forwarded-for"] == "203.0.113.9,127.0.0.1"
            assert got["x-envoy-external-address"] == "127.0.0.1"
            assert got["x-request-id"] != FORGED["x-request-id"]
            leaked = {k for k in got if k in FORGED} - {"x-forwarded-proto", "x-forwarded-for", "x-request-id",
                                                        "x-envoy-external-address"}
            assert not leaked, (url, version, leaked)
            seen = gw.traced.pop()
            # the gateway's own address is the request's destination.ip / downstream local address
            # (Envoy's), while the route lookup still goes by Host (no destination_ip)
            down = gw.downs.pop()
            assert (down.local_ip, down.destination_ip, down.destination_port) == ("127.0.0.1", "", gw.http if
                                                                                   scheme == "http" else gw.https)
            assert "x-envoy-force-trace" not in seen and "x-request-id" not in seen, seen
            # a redirect keeps the client's scheme, HTTP/1.1 over TLS included
            where = await _curl(url + "old", version, "-o", "/dev/null", "-w", "%{redirect_url}", *gw.resolve)
            assert where == f"{url}new", (version, where)

    gw.run(body)


async def _exchange(port: int, data: bytes, *, ca: Path | None = None, pause: float = 0.0) -> bytes:
    """Connect (TLS with ALPN http/1.1 when `ca`), wait `pause`, send `data`; the reply's first line."""
    ctx = None
    if ca is not None:
        ctx = ssl.create_default_context(cafile=str(ca))
        ctx.set_alpn_protocols(["http/1.1"])
    r, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="a.example.com" if ca else None)
    try:
        await asyncio.sleep(pause)
        w.write(data)
        return await asyncio.wait_for(r.readline(), 10)
    finally:
        w.close()


def test_a_client_may_send_its_first_request_later_and_non_http_gets_400(
        tmp_path: Path, origin: Origin, caplog: pytest.LogCaptureFixture) -> None:
    """An HTTP listener has no opaque side: a connection opened ahead of its request (a browser's
    preconnect) was closed once the mesh's protocol sniffing gave up (`detect_timeout`), so the
    request later sent on it failed; bytes that are not HTTP were closed without an answer
    (Envoy's codec answers 400). Such noise from the internet is no warning in the log."""
    gw = _Gateway(tmp_path, origin, HttpSettings(detect_timeout=0.1))
    request = b"GET / HTTP/1.1\r\nhost: a.example.com\r\n\r\n"

    async def body() -> None:
        assert await _exchange(gw.http, request, pause=0.5) == b"HTTP/1.1 200 OK\r\n"
        assert await _exchange(gw.https, request, ca=gw.ca, pause=0.5) == b"HTTP/1.1 200 OK\r\n"
        tls_hello = b"\x16\x03\x01\x00\xa0\x01\x00\x00\x9c\x03\x03" + bytes(32)
        assert await _exchange(gw.http, tls_hello) == b"HTTP/1.1 400 Bad Request\r\n"
        assert await _exchange(gw.http, b"GET / HTTP/1.1\r\nbad header\r\n\r\n") == b"HTTP/1.1 400 Bad Request\r\n"

    caplog.set_level(logging.INFO)
    gw.run(body)
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
