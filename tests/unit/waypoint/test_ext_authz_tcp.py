"""External authorization of tunnels that carry no HTTP, sans-IO (waypoint/authz/extauthz_tcp.py,
l4.py `l4_custom_set`): which CUSTOM policy's L4 view a tunnel meets, the CheckRequest it gets (its
peers, no request, as Envoy's network ext_authz filter sends), and what the answer does to it."""

from __future__ import annotations

import struct

from ambit.api import ext_authz_pb2 as pb
from ambit.model import Authorization, ExtAuthzProvider, Match, Rule, Service, ServicePort
from waypoint.authz import extauthz_grpc
from waypoint.authz.custom import CHECK, DENY, custom_set
from waypoint.authz.evaluate import RBAC_FLAG
from waypoint.authz.extauthz import ALLOWED, DENIED, ERROR, UAEX, CheckResult
from waypoint.authz.extauthz_tcp import TunnelVerdict, after_check, check_message, interpret, start
from waypoint.authz.l4 import l4_custom_set
from waypoint.binding import Waypoint
from waypoint.request import Downstream, Hold, RequestHead, SubReply

WP = Waypoint("demo", "waypoint")
WEB = "spiffe://cluster.local/ns/demo/sa/web"
OWN = "spiffe://cluster.local/ns/demo/sa/waypoint"
DB = Downstream(WEB, "10.0.0.5", "demo", (), "10.96.0.9", 5432, "demo/db", "db.demo.svc.cluster.local")
GRPC = ExtAuthzProvider(name="g", kind="grpc", service="authz.demo.svc.cluster.local", port=9000, timeout=2.5)
HTTP = ExtAuthzProvider(name="h", kind="http", service="authz.demo.svc.cluster.local", port=8000)
AUTHZ = Service(name="authz", namespace="demo", hostname="authz.demo.svc.cluster.local", vips=["10.96.0.20"],
                ports=[ServicePort(9000, 9000, "grpc", "GRPC")])
SERVICES = {AUTHZ.resource_name: AUTHZ}


def custom(provider: str, *matches: Match, name: str = "ext") -> Authorization:
    return Authorization(name=name, namespace="demo", action="CUSTOM", scope="waypoint", provider=provider,
                         target_refs=[{"kind": "Service", "group": "", "name": "db"}],
                         http_rules=[Rule(clauses=[list(matches)])] if matches else [Rule(clauses=[])])


def tunnel(cs, down: Downstream = DB):
    """What the L4 CUSTOM view says about a tunnel (the head the opaque path judges it on)."""
    l4 = l4_custom_set(cs)
    head = RequestHead("", "", f"{down.destination_ip}:{down.destination_port}")
    return l4.for_request(head, down)


# --- which tunnels are checked ------------------------------------------------------------------

def test_a_custom_rule_with_http_fields_is_stripped_for_tcp_as_a_denys_and_checks_every_tunnel() -> None:
    """Istio's model.Generate(forTCP): a CUSTOM rule's HTTP-only fields are dropped as a DENY's,
    so a rule for `paths: /api/*` checks every tunnel to the Service (never lets one through)."""
    cs = custom_set([custom("g", Match(paths=["/api/*"], methods=["GET"]))], WP, [GRPC], SERVICES)
    c = tunnel(cs)
    assert c is not None and c.action == CHECK and c.provider == GRPC and c.service == "demo/authz"
    assert c.policy == "demo/ext"
    # the HTTP view is untouched: a request for another path is not checked
    assert cs.for_request(RequestHead("GET", "/other", "db:5432"), DB) is None


def test_ports_and_principals_still_select_the_tunnels_a_custom_policy_checks() -> None:
    cs = custom_set([custom("g", Match(ports=[5432], principals=["cluster.local/ns/demo/sa/web"],
                                       paths=["/x"]))], WP, [GRPC], SERVICES)
    assert tunnel(cs) is not None
    assert tunnel(cs, Downstream(WEB, "10.0.0.5", "demo", (), "10.96.0.9", 6379, "demo/db")) is None
    other = Downstream("spiffe://cluster.local/ns/demo/sa/other", "10.0.0.6", "demo", (), "10.96.0.9", 5432,
                       "demo/db")
    assert tunnel(cs, other) is None
    assert tunnel(cs, Downstream(WEB, "10.0.0.5", "demo", (), "10.96.0.30", 5432, "demo/cache")) is None


# --- the check ------------------------------------------------------------------------------------

def test_the_tcp_check_request_carries_only_the_peers() -> None:
    """Envoy's createTcpCheck: source address and principal, destination address, port and this
    proxy's principal; no request (no HTTP attributes at all)."""
    msg = check_message(DB, OWN)
    a = msg.attributes
    assert (a.source.address.socket_address.address, a.source.principal) == ("10.0.0.5", WEB)
    d = a.destination
    assert (d.address.socket_address.address, d.address.socket_address.port_value, d.principal) == \
        ("10.96.0.9", 5432, OWN)
    assert not a.HasField("request") and not a.context_extensions


def test_the_check_goes_to_the_providers_service_port_over_http2_within_its_timeout() -> None:
    cs = custom_set([custom("g")], WP, [GRPC], SERVICES)
    c = tunnel(cs)
    assert c is not None
    h = start(c, DB, OWN)
    assert isinstance(h, Hold)
    assert (h.forward.service, h.forward.port, h.forward.hostname, h.h2, h.timeout, h.body_limit) == \
        ("demo/authz", 9000, "authz.demo.svc.cluster.local", True, 2.5, -1)
    head, body = h.build(None, False)
    assert (head.method, head.path, head.authority) == ("POST", extauthz_grpc.PATH, "authz.demo.svc.cluster.local")
    assert head.header("grpc-timeout") == "2500m" and head.header("content-type") == "application/grpc"
    flag, n = struct.unpack(">BI", body[:5])
    got = pb.CheckRequest()
    got.ParseFromString(body[5:5 + n])
    assert flag == 0 and got == check_message(DB, OWN)


def test_an_http_provider_or_an_unknown_one_refuses_the_tunnel_and_says_why() -> None:
    """Istio ignores a CUSTOM policy with an HTTP provider on a TCP chain (the tunnel goes through
    unchecked); Ambit refuses it (fail closed), naming the policy, the provider and why."""
    c = tunnel(custom_set([custom("h")], WP, [HTTP], SERVICES))
    assert c is not None and c.action == CHECK
    v = start(c, DB, OWN)
    assert isinstance(v, TunnelVerdict) and not v.allowed and v.flags == RBAC_FLAG and v.result == ""
    assert "demo/ext" in v.reason and "envoyExtAuthzHttp" in v.reason and "unchecked" in v.reason
    c = tunnel(custom_set([custom("nope")], WP, [GRPC], SERVICES))
    assert c is not None and c.action == DENY
    v = start(c, DB, OWN)
    assert isinstance(v, TunnelVerdict) and not v.allowed and "provider 'nope'" in v.reason


def test_a_provider_whose_service_is_unknown_is_an_error_and_fail_open_lets_it_on() -> None:
    c = tunnel(custom_set([custom("g")], WP, [GRPC], {}))
    assert c is not None
    v = start(c, DB, OWN)
    assert isinstance(v, TunnelVerdict) and (v.allowed, v.flags, v.result) == (False, UAEX, ERROR)
    assert "no Service has the hostname" in v.reason
    opened = ExtAuthzProvider(name="g", kind="grpc", service="nowhere", port=9000, fail_open=True)
    c = tunnel(custom_set([custom("g")], WP, [opened], {}))
    v = start(c, DB, OWN)
    assert isinstance(v, TunnelVerdict) and (v.allowed, v.result) == (True, ERROR) and "failOpen" in v.reason


# --- the answer -----------------------------------------------------------------------------------

def _reply(code: int) -> SubReply:
    data = pb.CheckResponse(status=pb.RpcStatus(code=code)).SerializeToString()
    return SubReply(200, (("content-type", "application/grpc"),), struct.pack(">BI", 0, len(data)) + data,
                    (("grpc-status", "0"),))


def test_the_answer_is_read_as_the_http_checks_and_decides_the_tunnel() -> None:
    assert interpret(_reply(0), "").result == ALLOWED
    assert interpret(_reply(7), "").result == DENIED
    assert interpret(None, "timed out") == CheckResult(ERROR, reason="timed out")
    ok = after_check(GRPC, "demo/ext", interpret(_reply(0), ""))
    assert (ok.allowed, ok.flags, ok.reason, ok.result, ok.provider) == (True, "", "", ALLOWED, "g")
    no = after_check(GRPC, "demo/ext", interpret(_reply(7), ""))
    assert (no.allowed, no.flags, no.result) == (False, UAEX, DENIED)
    assert "ext_authz g (policy demo/ext) denied" in no.reason
    err = after_check(GRPC, "demo/ext", interpret(None, "timed out"))
    assert (err.allowed, err.flags, err.result) == (False, UAEX, ERROR) and "timed out" in err.reason
    opened = ExtAuthzProvider(name="g", kind="grpc", service="s", port=1, fail_open=True)
    assert after_check(opened, "demo/ext", interpret(None, "reset")).allowed
    assert not after_check(opened, "demo/ext", interpret(_reply(7), "")).allowed    # failOpen is for errors only
