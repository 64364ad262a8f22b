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


def test_an_external_clients_forged_headers_do_not_pass_the_gateway(tmp_path: Path, origin: Origin) -> None:
    from waypoint.app import WaypointProxy
    from waypoint.authz import Waypoint
    from waypoint.config import WaypointConfig
    from waypoint.settings import load

    ca, certs = _issue(tmp_path, ("a.example.com",))
    http, https = _free_port(), _free_port()
    cfg = WaypointConfig(Waypoint("demo", "gw"), "cluster.local")
    gw = _gateway(http, https, certs)
    cfg.apply(ConfigUpdate(IngressGateway.TYPE, "1", {}, frozenset(), {gw.resource_name: gw}))
    proxy = WaypointProxy(load(["--waypoint", "demo/gw", "--pod-name", "gw-0", "--node", "node1",
                                "--gateway-class", "ambit"]), cfg, None)
    traced: list[dict[str, str]] = []

    class Tracer:       # what the gateway's tracer would decide from: x-envoy-force-trace, x-request-id
        def server(self, head, down, rec) -> None:
            traced.append(dict(head.headers))

    def upstream(fwd, head, down, exclude=frozenset()) -> UpstreamTarget:     # demo/echo is the origin
        return UpstreamTarget(key="origin", address=f"127.0.0.1:{origin.port}",
                              connect=lambda: connect_tcp("127.0.0.1", origin.port, 5))

    async def run() -> None:
        engine = Engine(HttpSettings(), proxy.decide, upstream)
        engine.tracing = Tracer()
        proxy.ingress = listeners = IngressListeners("127.0.0.1", engine.serve, _no_relay)
        await listeners.update(cfg.view.ingress)
        forged = [a for k, v in FORGED.items() for a in ("-H", f"{k}: {v}")]
        resolve = ["--resolve", f"a.example.com:{http}:127.0.0.1", "--resolve", f"a.example.com:{https}:127.0.0.1",
                   "--cacert", str(ca)]
        try:
            for url, version, scheme in [(f"http://a.example.com:{http}/", "--http1.1", "http"),
                                         (f"http://a.example.com:{http}/", "--http2-prior-knowledge", "http"),
                                         (f"https://a.example.com:{https}/", "--http1.1", "https"),
                                         (f"https://a.example.com:{https}/", "--http2", "https")]:
                got = dict(json.loads(await _curl(url, version, *forged, *resolve))["headers"])
                assert got["x-forwarded-proto"] == scheme, (url, version, got)
                assert got["x-forwarded-for"] == "203.0.113.9,127.0.0.1"
                assert got["x-envoy-external-address"] == "127.0.0.1"
                assert got["x-request-id"] != FORGED["x-request-id"]
                leaked = {k for k in got if k in FORGED} - {"x-forwarded-proto", "x-forwarded-for", "x-request-id",
                                                            "x-envoy-external-address"}
                assert not leaked, (url, version, leaked)
                seen = traced.pop()
                assert "x-envoy-force-trace" not in seen and "x-request-id" not in seen, seen
                # a redirect keeps the client's scheme, HTTP/1.1 over TLS included
                where = await _curl(url + "old", version, "-o", "/dev/null", "-w", "%{redirect_url}", *resolve)
                assert where == f"{url}new", (version, where)
        finally:
            await listeners.close()
            await engine.shutdown()

    asyncio.run(run())
