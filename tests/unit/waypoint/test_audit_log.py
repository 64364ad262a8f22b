"""AuthorizationPolicy `action: AUDIT` bound to a waypoint: the policies a request matched are named
in its access-log line (`audit`, as ztunnel's access record names them), whether the request is
allowed or denied; AUDIT never decides."""

from __future__ import annotations

import dataclasses
import json
import urllib.error
import urllib.request

import pytest

from ambit.configclient import ConfigUpdate
from ambit.model import Authorization, Endpoint, Match, Rule, Service, ServicePort
from tests.unit.waypoint.harness import Origin, Proxy, by_header, roundtrip
from waypoint.app import WaypointProxy
from waypoint.authz import Waypoint
from waypoint.config import WaypointConfig
from waypoint.http.settings import HttpSettings
from waypoint.request import Decision, Downstream, Forward, RequestHead
from waypoint.settings import load
from waypoint.telemetry import RequestLog

from .test_opaque import TcpEcho
from .test_wiring import FRONTEND, proxy

pytestmark = pytest.mark.timeout(60)

MYAPP = [{"kind": "Service", "group": "", "name": "myapp"}]


def policy(name: str, action: str, paths: list[str]) -> Authorization:
    return Authorization(name=name, namespace="default", action=action, scope="waypoint", target_refs=MYAPP,
                         http_rules=[Rule(clauses=[[Match(paths=paths)]])])


def get(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_matched_audit_policies_are_named_in_the_waypoints_access_line() -> None:
    waypoint = proxy(policy("audit-admin", "AUDIT", ["/admin/*"]), policy("audit-all", "AUDIT", ["/admin/*", "/public"]),
                     policy("no-blocked", "DENY", ["/admin/blocked"]))
    down, _ = waypoint.downstream(FRONTEND, "10.0.2.5", "10.96.0.10:80")     # a tunnel to myapp's VIP
    assert down is not None
    origin = Origin()

    def decide(head: RequestHead, _: Downstream) -> Decision:
        """The waypoint's own decision (authn, authz, routing) for the tunnel to myapp; the
        harness reaches the origin by the Forward's port."""
        d = waypoint.decide(head, down)
        return dataclasses.replace(d, port=origin.port) if isinstance(d, Forward) else d

    p = Proxy(decide)
    try:
        paths = ("/admin/x", "/public", "/admin/blocked", "/other")
        assert [get(p.port, path) for path in paths] == [200, 200, 403, 200]
        lines: list[str] = []
        log = RequestLog(lines.append)
        for path in paths:
            [rec] = p.find(lambda r, path=path: r.path == path)
            log.emit(rec, None, None)
    finally:
        p.close()
        origin.close()
    admin, public, blocked, other = (json.loads(line) for line in lines)
    assert admin["audit"] == ["default/audit-admin", "default/audit-all"] and admin["response_code"] == 200
    assert public["audit"] == ["default/audit-all"] and public["response_code"] == 200
    assert blocked["audit"] == ["default/audit-admin", "default/audit-all"] and blocked["response_code"] == 403
    assert "audit" not in other and other["response_code"] == 200



def test_an_opaque_tunnel_that_matched_an_audit_policy_is_named_in_its_access_line() -> None:
    """A non-HTTP tunnel through the waypoint to a ServiceEntry host: its L4 AUDIT match is named too."""
    echo = TcpEcho()
    entry = Service(name="db.example", namespace="default", hostname="db.example", vips=["240.240.0.9"],
                    ports=[ServicePort(5432, echo.port, "tcp", "TCP")], endpoints=[Endpoint("", "127.0.0.1")],
                    kind="ServiceEntry", location="MESH_EXTERNAL", resolution="STATIC", waypoint="default/waypoint")
    audit = Authorization(name="audit-db", namespace="default", action="AUDIT", scope="waypoint",
                          target_refs=[{"kind": "Service", "group": "", "name": "db.example"}],
                          http_rules=[Rule(clauses=[[Match(principals=["cluster.local/ns/default/sa/frontend"])]])])
    cfg = WaypointConfig(Waypoint("default", "waypoint"), "cluster.local")
    for t, items in ((Service.TYPE, {entry.resource_name: entry}), (Authorization.TYPE, {audit.resource_name: audit})):
        cfg.apply(ConfigUpdate(t, "1", {}, frozenset(), items))  # type: ignore[arg-type]
    waypoint = WaypointProxy(load(["--waypoint", "default/waypoint", "--pod-name", "waypoint-0", "--node", "n"]), cfg,
                             None)
    down, why = waypoint.downstream(FRONTEND, "10.0.2.5", "240.240.0.9:5432")
    assert down is not None, why
    p = Proxy(by_header({"default": 1}), opaque_port=1, settings=HttpSettings(detect_timeout=0.3))
    try:
        assert p.engine is not None
        p.engine.opaque = lambda _: waypoint.opaque(down)      # the waypoint's L4 path for this tunnel
        payload = b"\x16\x03\x01" + b"x" * 100
        assert roundtrip(p.port, payload) == b"220 banner\r\n" + payload
        [rec] = p.find(lambda r: r.protocol == "TCP")
    finally:
        p.close()
        echo.sock.close()
    lines: list[str] = []
    RequestLog(lines.append).emit(rec, None, None)
    assert json.loads(lines[0])["audit"] == ["default/audit-db"]
