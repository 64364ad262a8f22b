"""Gateway API session persistence on the wire: a real `WaypointProxy` (its decide and upstream)
behind the engine on loopback, three origins on 127.0.0.1-3 (the endpoints of a ServiceEntry the
waypoint dials itself), driven by curl with a cookie jar, or with the session header.

Before, `sessionPersistence` was accepted and warned about, and every request was balanced anew."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ambit.configclient import ConfigUpdate
from ambit.model import (
    Endpoint,
    HttpRoute,
    RouteDestination,
    Service,
    ServicePort,
    SessionPersistence,
    TrafficPolicy,
    WaypointRoutes,
)
from tests.unit.waypoint.harness import Proxy, address_origins
from waypoint.app import WaypointProxy
from waypoint.authz import Waypoint
from waypoint.config import WaypointConfig
from waypoint.request import Downstream
from waypoint.settings import load

HOST = "api.example.com"
IPS = ("127.0.0.1", "127.0.0.2", "127.0.0.3")


def _entry(port: int, ips: tuple[str, ...]) -> Service:
    return Service(name=HOST, namespace="demo", hostname=HOST, vips=["240.240.0.1"],
                   ports=[ServicePort(80, port, "http", "HTTP")], endpoints=[Endpoint("", ip) for ip in ips],
                   kind="ServiceEntry", location="MESH_EXTERNAL", resolution="STATIC", waypoint="default/waypoint")


def _apply(cfg: WaypointConfig, t: str, items: list) -> None:  # type: ignore[type-arg]
    cfg.apply(ConfigUpdate(t, "1", {}, frozenset(), {r.resource_name: r for r in items}))


class Wire:
    def __init__(self, session: SessionPersistence, port: int) -> None:
        self.target_port = port
        s = load(["--waypoint", "default/waypoint", "--pod-name", "waypoint-0", "--node", "node2"])
        self.cfg = WaypointConfig(Waypoint("default", "waypoint"), "cluster.local")
        _apply(self.cfg, Service.TYPE, [_entry(port, IPS)])
        route = HttpRoute(source="HTTPRoute/demo/web", grpc=False, session=session,
                          destinations=[RouteDestination(HOST, service=f"demo/{HOST}", port=80)])
        # round robin: without a session, consecutive requests go to different endpoints
        _apply(self.cfg, WaypointRoutes.TYPE, [WaypointRoutes(hostname=HOST, namespace="demo", service=f"demo/{HOST}",
                                                              waypoint="default/waypoint", http=[route],
                                                              policy=TrafficPolicy(lb="ROUND_ROBIN"))])
        self.waypoint = WaypointProxy(s, self.cfg, None)
        self.proxy = Proxy(self.waypoint.decide, upstream=self.waypoint.upstream,
                           downstream=Downstream(source_ip="127.0.0.1", destination_ip="240.240.0.1",
                                                 destination_port=80, service=f"demo/{HOST}", hostname=HOST))

    def curl(self, *args: str) -> tuple[str, str]:
        """(the endpoint that answered, the response head) of one curl request."""
        r = subprocess.run(["curl", "-sS", "-m", "10", "-D", "-", *args, f"http://127.0.0.1:{self.proxy.port}/"],
                           capture_output=True, text=True, timeout=20)
        head, _, body = r.stdout.partition("\n\n")       # (text mode: CRLF read as LF)
        assert body in IPS, r.stdout
        assert head.startswith("HTTP/1.1 200"), (r.stdout, r.stderr)
        return body, head

    def drop(self, ip: str) -> None:
        """The endpoint at `ip` leaves the ServiceEntry (its pod went away)."""
        self.proxy.call(lambda: _apply(self.cfg, Service.TYPE, [_entry(self.target_port, tuple(
            i for i in IPS if i != ip))]))


@pytest.fixture()
def origins() -> Iterator[int]:
    """Each endpoint answers with the address it was served on: which endpoint got the request."""
    with address_origins(IPS) as (port, _hits):
        yield port


def test_a_cookie_session_sticks_to_one_endpoint_spreads_without_it_and_repins_when_it_goes(
        origins: int, tmp_path: Path) -> None:
    w = Wire(SessionPersistence(name="web-session"), origins)
    try:
        jar = str(tmp_path / "jar")
        first, head = w.curl("-c", jar, "-b", jar)
        assert 'set-cookie: web-session="' in head and "; Path=/; HttpOnly" in head
        assert "Max-Age" not in head and "Expires" not in head      # a Session cookie (the default)
        for _ in range(6):
            again, head = w.curl("-c", jar, "-b", jar)
            assert again == first and "set-cookie" not in head     # same endpoint, nothing to renew
        spread = {w.curl()[0] for _ in range(6)}                   # no cookie: balanced as usual
        assert spread == set(IPS)

        w.drop(first)                                              # the session's endpoint is gone
        moved, head = w.curl("-c", jar, "-b", jar)
        assert moved != first and 'set-cookie: web-session="' in head
        assert {w.curl("-c", jar, "-b", jar)[0] for _ in range(5)} == {moved}
    finally:
        w.proxy.close()


def test_a_header_session_and_a_permanent_cookie(origins: int) -> None:
    w = Wire(SessionPersistence(name="X-Session", header=True, absolute_timeout=300), origins)
    try:
        first, head = w.curl()
        value = next(line.split(":", 1)[1].strip() for line in head.splitlines() if line.startswith("x-session:"))
        for _ in range(5):
            again, head = w.curl("-H", f"x-session: {value}")
            assert again == first and "x-session" not in head.lower()
        assert w.curl("-H", "x-session: bm90IGFuIGVuZHBvaW50")[0] in IPS   # "not an endpoint": balanced
    finally:
        w.proxy.close()
    w = Wire(SessionPersistence(name="sid", absolute_timeout=300, permanent=True), origins)
    try:
        _, head = w.curl()
        assert "; Max-Age=300; Path=/; HttpOnly" in head
    finally:
        w.proxy.close()
