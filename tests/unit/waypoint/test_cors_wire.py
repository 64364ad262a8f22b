"""CORS through the real engine on loopback, driven by curl over HTTP/1.1 and HTTP/2 (h2c), with a
real origin: where in the request's life the CORS filter runs (Envoy's: after the fault filter,
before the router) is what these check.

- An allowed origin's preflight is answered by the waypoint; the backend never sees it.
- An allowed origin's other requests reach the backend, and its response carries the CORS headers.
- A preflight from an origin not allowed goes on to the backend (unmatchedPreflights FORWARD).
- A local reply after routing (503: no upstream) carries them; a fault abort (before CORS) does not.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from tests.unit.waypoint.harness import Origin, Proxy
from waypoint.request import Downstream, Forward, RequestHead
from waypoint.resilience.fault import MILLION, FaultPolicy
from waypoint.resilience.policy import RoutePolicy
from waypoint.routing.cors import compile_cors

pytestmark = pytest.mark.timeout(60)

CORS = compile_cors({"allowOrigins": [{"origin": "https://*.example.com"}], "allowMethods": ["PUT", "DELETE"],
                     "allowHeaders": ["x-token"], "exposeHeaders": ["x-origin"], "maxAge": 600,
                     "allowCredentials": True})
VERSIONS = ["--http1.1", "--http2-prior-knowledge"]


@pytest.fixture(scope="module")
def origin() -> Iterator[Origin]:
    o = Origin()
    yield o
    o.close()


@pytest.fixture(scope="module")
def proxy(origin: Origin) -> Iterator[Proxy]:
    def decide(head: RequestHead, ds: Downstream) -> Forward:
        if head.path.startswith("/nowhere"):     # a port the harness has no upstream for: 503 UH
            return Forward(service="test/app", port=0, route="test#0", policy=RoutePolicy(cors=CORS))
        if head.path.startswith("/abort"):
            fault = FaultPolicy(abort_status=503, abort_per_million=MILLION)
            return Forward(service="test/app", port=origin.port, route="test#0", policy=RoutePolicy(fault=fault, cors=CORS))
        return Forward(service="test/app", port=origin.port, route="test#0", policy=RoutePolicy(cors=CORS))
    p = Proxy(decide, protocols={0: "http1"})
    yield p
    p.close()


def curl(port: int, version: str, method: str, path: str, *headers: str) -> tuple[int, dict[str, str]]:
    args = ["curl", "-sS", version, "-m", "10", "-o", "/dev/null", "-D", "-", "-X", method]
    for h in headers:
        args += ["-H", h]
    r = subprocess.run([*args, f"http://127.0.0.1:{port}{path}"], capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
    status = int(lines[0].split()[1])
    return status, {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:] if ":" in ln)}


@pytest.mark.parametrize("version", VERSIONS)
def test_an_allowed_preflight_is_answered_by_the_waypoint(proxy: Proxy, origin: Origin, version: str) -> None:
    before = origin.requests
    status, h = curl(proxy.port, version, "OPTIONS", "/api", "Origin: https://app.example.com",
                     "Access-Control-Request-Method: PUT", "Access-Control-Request-Headers: x-token")
    assert status == 200
    assert h["access-control-allow-origin"] == "https://app.example.com"
    assert (h["access-control-allow-methods"], h["access-control-allow-headers"]) == ("PUT,DELETE", "x-token")
    assert (h["access-control-max-age"], h["access-control-allow-credentials"]) == ("600", "true")
    assert origin.requests == before, "the preflight reached the backend"
    rec = proxy.find(lambda r: r.method == "OPTIONS" and r.status == 200)[-1]
    assert rec.upstream == "" and rec.route == "test#0"


@pytest.mark.parametrize("version", VERSIONS)
def test_an_allowed_origin_gets_the_headers_on_the_backends_response(proxy: Proxy, origin: Origin,
                                                                     version: str) -> None:
    before = origin.requests
    status, h = curl(proxy.port, version, "PUT", "/api", "Origin: https://a.b.example.com")
    assert status == 200 and h["x-origin"] == "h1" and origin.requests == before + 1
    assert h["access-control-allow-origin"] == "https://a.b.example.com"
    assert (h["access-control-allow-credentials"], h["access-control-expose-headers"]) == ("true", "x-origin")
    # another origin: the response is the backend's, untouched
    status, h = curl(proxy.port, version, "PUT", "/api", "Origin: https://example.com")
    assert status == 200 and not any(k.startswith("access-control") for k in h)


@pytest.mark.parametrize("version", VERSIONS)
def test_a_preflight_from_an_origin_not_allowed_goes_to_the_backend(proxy: Proxy, origin: Origin,
                                                                    version: str) -> None:
    before = origin.requests
    status, h = curl(proxy.port, version, "OPTIONS", "/api", "Origin: https://evil.test",
                     "Access-Control-Request-Method: PUT")
    assert status == 200 and h["x-origin"] == "h1" and origin.requests == before + 1
    assert "access-control-allow-origin" not in h


def test_local_replies_after_routing_carry_cors_and_a_fault_abort_does_not(proxy: Proxy) -> None:
    status, h = curl(proxy.port, "--http1.1", "GET", "/nowhere", "Origin: https://app.example.com")
    assert status == 503 and h["access-control-allow-origin"] == "https://app.example.com"
    # the fault filter runs before CORS (Istio's filter order): its abort has no CORS headers,
    # and neither has a preflight it aborts
    for method, extra in (("GET", ()), ("OPTIONS", ("Access-Control-Request-Method: PUT",))):
        status, h = curl(proxy.port, "--http1.1", method, "/abort", "Origin: https://app.example.com", *extra)
        assert status == 503 and "access-control-allow-origin" not in h, method
