"""Ports that match nothing because a Service port was confused with its targetPort (or names a port
the Service lacks): accepted, and warned about by `ambit apply` and `ambit analyze` (AMB0136,
PortNotFound), naming the port, what the proxy compares and the Service's `port→targetPort`
pairs. A waypoint compares the Service port the client dialled (VirtualService match ports, route
destination ports, DestinationRule portLevelSettings, targetRefs AuthorizationPolicies); ztunnel
compares the pod's port (selector AuthorizationPolicies, PeerAuthentication portLevelMtls). Before,
nothing said so, and e.g. a DENY on the wrong one of the two denied nothing."""

from __future__ import annotations

import random
from typing import Any

import pytest

from ambitctl.analyze import CODES, WARNING, analyze
from controller.waypoints.advisories import advisories
from tests.unit.waypoint.support import backend, namespace, req, service, table_of, translated
from waypoint.authz import Waypoint, authorize, policy_set
from waypoint.endpoints import candidates
from waypoint.request import Downstream
from waypoint.routing import route
from waypoint.traffic.cluster import effective_policy
from ztunnel import authz as zt

Obj = dict[str, Any]
CLIENT = "spiffe://cluster.local/ns/default/sa/client"
PAIRS = "Service default/myapp (80→8080)"


def myapp(target: int | str = 8080, ports: dict[str, int] | None = None) -> Obj:
    svc = service("myapp", "default", ports or {"http": 80}, ip="10.96.0.20")
    for p in svc["spec"]["ports"]:
        p["targetPort"] = target
    return svc


def pod(name: str = "myapp-1", ip: str = "10.244.1.5", labels: dict[str, str] | None = None,
        ports: list[Obj] | None = None) -> Obj:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "uid": f"uid-{name}", "labels": labels or {"app": "myapp"}},
            "spec": {"nodeName": "node-1", "containers": [{"name": "app", "ports": ports or []}]},
            "status": {"phase": "Running", "podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]}}


BASE = [namespace("default", **{"ambit.io/dataplane-mode": "ambient", "ambit.io/use-waypoint": "waypoint"}),
        myapp(), service("other", "default", {"http": 80}, ip="10.96.0.21"), pod()]


def warned(*objs: Obj, base: list[Obj] | None = None) -> dict[str, str]:
    return {a.path: a.reason for a in advisories((BASE if base is None else base) + list(objs))
            if a.cause == "PortNotFound"}


def has(why: str, *words: str) -> bool:
    return all(w in why for w in words)


# -- 1. VirtualService match ports -------------------------------------------------------------------

def vs(spec: Obj, name: str = "v") -> Obj:
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": name, "namespace": "default"}, "spec": {"hosts": ["myapp"], **spec}}


def matched(section: str, port: int) -> Obj:
    rule: Obj = {"match": [{"port": port}], "route": [{"destination": {"host": "other"}}]}
    if section == "tls":
        rule["match"][0]["sniHosts"] = ["myapp"]       # within the hosts, as istiod requires
    return vs({section: [rule]})


@pytest.mark.parametrize("section", ["http", "tcp", "tls"])
def test_a_match_on_the_target_port_is_warned_naming_the_service_port(section: str) -> None:
    got = warned(matched(section, 8080))
    why = got.pop(f"spec.{section}[0].match[0].port")
    assert why == (f"port 8080 is not a port of {PAIRS}: the waypoint matches the port the client dialled, so this "
                   "match never holds; write 80")
    assert got == {}
    assert warned(matched(section, 80)) == {}


def test_the_warning_is_about_what_happens_a_match_on_the_target_port_never_routes() -> None:
    """Through the real translation and the waypoint's router: a client dials the Service port."""
    down = Downstream(service="default/myapp", hostname="myapp.default.svc.cluster.local", destination_port=80)
    head = req("/", authority="myapp")
    wrong, right = table_of(BASE + [matched("http", 8080)]), table_of(BASE + [matched("http", 80)])
    assert backend(route(wrong, head, down, random.Random(1))) == "default/myapp"     # not the rule's
    assert backend(route(right, head, down, random.Random(1))) == "default/other"


def test_a_match_is_warned_only_where_the_service_port_is_what_it_compares() -> None:
    # bound to an ingress gateway, the port is the gateway's listener port
    assert warned(vs({"gateways": ["ingress"], "http": matched("http", 8080)["spec"]["http"]})) == {}
    assert warned(vs({"gateways": ["mesh", "ingress"], "http": matched("http", 8080)["spec"]["http"]})) == {}
    # a host that is no Service the mesh knows: its ports are not known
    assert warned(vs({"hosts": ["myapp", "api.example.com"], "http": matched("http", 8080)["spec"]["http"]})) == {}
    # a port of another host of the VirtualService
    both = vs({"hosts": ["myapp", "other"], "http": matched("http", 8080)["spec"]["http"]})
    assert "Service default/myapp (80→8080) or Service default/other (80→80)" in warned(both)["spec.http[0].match[0].port"]
    assert warned(both, base=BASE[:2] + [service("other", "default", {"alt": 8080}, ip="10.96.0.21")]) == {}


def test_a_named_port_the_service_does_not_have_is_warned_without_a_guess() -> None:
    why = warned(matched("http", 9090))["spec.http[0].match[0].port"]
    assert why.startswith(f"port 9090 is not a port of {PAIRS}") and "write" not in why


# -- 2. route destination ports ------------------------------------------------------------------------

def to_port(port: int, section: str = "http") -> Obj:
    return vs({section: [{"route": [{"destination": {"host": "myapp", "port": {"number": port}}}]}]})


@pytest.mark.parametrize("section, what", [("http", "request"), ("tcp", "connection")])
def test_a_destination_port_the_service_lacks_is_warned(section: str, what: str) -> None:
    why = warned(to_port(8080, section)).pop(f"spec.{section}[0].route[0].destination.port.number")
    assert has(why, f"port 8080 is not a port of {PAIRS}", f"every {what} routed here fails (503", "write 80")
    assert warned(to_port(80, section)) == {}


def test_the_warning_is_about_what_happens_a_destination_port_the_service_lacks_has_no_endpoints() -> None:
    tr = translated(BASE)
    svc = next(s for s in tr.services if s.name == "myapp")
    by_uid = {w.uid: w for w in tr.workloads}
    assert candidates(svc, 8080, None, by_uid, {}) == []            # no healthy upstream: 503
    assert [(p.ip, p.port) for p in candidates(svc, 80, None, by_uid, {})] == [("10.244.1.5", 8080)]


def test_a_mirror_port_the_service_lacks_is_warned_in_mirror_and_mirrors() -> None:
    """A copy sent to the targetPort finds no endpoint (no healthy upstream, as a route's 503
    above), so the mirror never receives anything, and nothing says so."""
    one = vs({"http": [{"route": [{"destination": {"host": "other"}}],
                        "mirror": {"host": "myapp", "port": {"number": 8080}}}]})
    why = warned(one).pop("spec.http[0].mirror.port.number")
    assert has(why, f"port 8080 is not a port of {PAIRS}", "no mirrored copy ever arrives", "write 80")
    many = vs({"http": [{"route": [{"destination": {"host": "other"}}],
                         "mirrors": [{"destination": {"host": "myapp", "port": {"number": 80}}},
                                     {"destination": {"host": "myapp", "port": {"number": 8080}}}]}]})
    assert list(warned(many)) == ["spec.http[0].mirrors[1].destination.port.number"]
    ok = vs({"http": [{"route": [{"destination": {"host": "other"}}], "mirror": {"host": "myapp", "port": {"number": 80}}}]})
    assert warned(ok) == {}


def test_a_destination_port_is_analyzed_as_amb0136() -> None:
    assert CODES["AMB0136"].severity == WARNING and CODES["AMB0136"].name == "PortNotFound"
    found = [(f.code, f.path) for f in analyze(BASE + [to_port(8080)], complete=True) if f.code == "AMB0136"]
    assert found == [("AMB0136", "spec.http[0].route[0].destination.port.number")]
    # files without Services: the host's ports are not known, nothing is said
    assert [f for f in analyze([to_port(8080)], complete=False) if f.code == "AMB0136"] == []


def httproute(port: int, kind: str = "HTTPRoute") -> Obj:
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": kind, "metadata": {"name": "r", "namespace": "default"},
            "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "myapp", "port": 80}],
                     "rules": [{"backendRefs": [{"name": "other", "port": 80}, {"name": "myapp", "port": port}]}]}}


@pytest.mark.parametrize("kind", ["HTTPRoute", "GRPCRoute"])
def test_a_gateway_api_backend_port_the_service_lacks_is_warned(kind: str) -> None:
    """A backendRef's port is the Service port (the same endpoints as above: none on 8080)."""
    why = warned(httproute(8080, kind)).pop("spec.rules[0].backendRefs[1].port")
    assert has(why, f"port 8080 is not a port of {PAIRS}", "every request sent to this backend fails", "write 80")
    assert warned(httproute(80, kind)) == {}


# -- 3. DestinationRule portLevelSettings ---------------------------------------------------------------

def dr(port: int) -> Obj:
    level = [{"port": {"number": port}, "loadBalancer": {"simple": "RANDOM"}}]
    return {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": "d", "namespace": "default"},
            "spec": {"host": "myapp", "trafficPolicy": {"portLevelSettings": level},
                     "subsets": [{"name": "v1", "labels": {"app": "myapp"},
                                  "trafficPolicy": {"portLevelSettings": level}}]}}


def test_port_level_settings_for_the_target_port_are_warned_top_level_and_in_subsets() -> None:
    got = warned(dr(8080))
    assert set(got) == {"spec.trafficPolicy.portLevelSettings[0].port.number",
                        "spec.subsets[0].trafficPolicy.portLevelSettings[0].port.number"}
    assert all(has(w, f"port 8080 is not a port of {PAIRS}", "this entry is never used", "write 80")
               for w in got.values())
    assert warned(dr(80)) == {}


def test_the_warning_is_about_what_happens_the_port_level_entry_is_not_used() -> None:
    [wr] = [w for w in translated(BASE + [dr(8080)]).waypoint_routes if w.hostname.startswith("myapp.")]
    # the waypoint asks for the Service port it sends to (80): the RANDOM entry for 8080 is not it
    assert effective_policy(wr, 80, "").lb != "RANDOM" and effective_policy(wr, 8080, "").lb == "RANDOM"
    assert effective_policy(wr, 80, "v1").lb != "RANDOM"


# -- 4. AuthorizationPolicy ports ------------------------------------------------------------------------

def policy(spec: Obj, name: str = "p") -> Obj:
    return {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": name, "namespace": "default"}, "spec": spec}


def on_service(port: str, action: str = "DENY", field: str = "ports") -> Obj:
    return policy({"targetRefs": [{"kind": "Service", "group": "", "name": "myapp"}], "action": action,
                   "rules": [{"to": [{"operation": {field: [port]}}]}]})


def on_pods(rules: list[Obj], action: str = "ALLOW") -> Obj:
    return policy({"selector": {"matchLabels": {"app": "myapp"}}, "action": action, "rules": rules})


def test_a_targetrefs_policy_on_the_target_port_is_warned_naming_the_service_port() -> None:
    got = warned(on_service("8080"))
    why = got.pop("spec.rules[0].to[0].operation.ports[0]")
    assert why == (f"port 8080 is not a port of {PAIRS}: the waypoint, which enforces a targetRefs policy, compares "
                   "the Service port the client dialled, so it never matches: this DENY rule denies nothing on it; "
                   "write 80")
    assert got == {}
    assert has(warned(on_service("8080", "ALLOW", "notPorts"))["spec.rules[0].to[0].operation.notPorts[0]"],
               "it excludes nothing from this ALLOW rule")
    cond = policy({"targetRefs": [{"kind": "Service", "group": "", "name": "myapp"}], "action": "DENY",
                   "rules": [{"when": [{"key": "destination.port", "values": ["8080"]}]}]})
    assert list(warned(cond)) == ["spec.rules[0].when[0].values[0]"]
    assert warned(on_service("80")) == {}


def test_a_waypoint_targeted_policy_is_checked_against_the_ports_of_its_services() -> None:
    gw = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
          "metadata": {"name": "waypoint", "namespace": "default"},
          "spec": {"gatewayClassName": "ambit-waypoint", "listeners": [{"name": "mesh", "port": 15008,
                                                                        "protocol": "HBONE"}]}}
    spec = {"targetRefs": [{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "waypoint"}],
            "action": "DENY", "rules": [{"to": [{"operation": {"ports": ["8080"]}}]}]}
    why = warned(gw, policy(spec))["spec.rules[0].to[0].operation.ports[0]"]
    assert has(why, f"not a port of {PAIRS} or Service default/other (80→80)", "write 80")
    # a waypoint that also serves workloads addressed directly sees their ports too
    gw_all = {**gw, "metadata": {**gw["metadata"], "labels": {"istio.io/waypoint-for": "all"}}}
    assert warned(gw_all, policy(spec)) == {}


def test_the_warning_is_about_what_happens_the_waypoint_deny_on_the_target_port_denies_nothing() -> None:
    """Through the real translation and the waypoint's check: a request the client sent to the
    Service port (80) is not denied by the DENY on 8080; the one on 80 denies it."""
    down = Downstream(source_identity=CLIENT, source_ip="10.244.2.9", destination_port=80, service="default/myapp",
                      hostname="myapp.default.svc.cluster.local", destination_ip="10.96.0.20")
    for port, allowed in (("8080", True), ("80", False)):
        ps = translated(BASE + [on_service(port)]).authorizations
        _, verdict = authorize(policy_set(ps, Waypoint("default", "waypoint")), req("/", authority="myapp"), down, None, None)
        assert verdict.allowed is allowed


def test_a_selector_policy_on_the_service_port_is_warned_naming_the_pod_port() -> None:
    obj = on_pods([{"to": [{"operation": {"ports": ["80"]}}]},
                   {"when": [{"key": "destination.port", "notValues": ["80"]}]}])
    got = warned(obj)
    assert got.pop("spec.rules[0].to[0].operation.ports[0]") == (
        f"port 80 is a port of {PAIRS}, not a port of the pods it selects: ztunnel, which enforces a selector "
        "policy, compares the pod's port the connection arrives on (the targetPort), so it never matches: this "
        "ALLOW rule admits nothing on it; write 8080")
    assert has(got.pop("spec.rules[1].when[0].notValues[0]"), "it excludes nothing from this ALLOW rule", "write 8080")
    assert got == {}
    assert warned(on_pods([{"to": [{"operation": {"ports": ["8080"]}}]}])) == {}


def test_the_warning_is_about_what_happens_ztunnel_compares_the_pod_port() -> None:
    """Through the real translation and ztunnel's check: the connection arrives on the pod's port
    (8080), so an ALLOW on the Service port (80) admits nothing and one on 8080 admits it."""
    for port, allowed in (("80", False), ("8080", True)):
        tr = translated(BASE + [on_pods([{"to": [{"operation": {"ports": [port]}}]}])])
        [wl] = [w for w in tr.workloads if w.name == "myapp-1"]
        conn = zt.ConnInfo(src_ip="10.244.2.9", src_identity=CLIENT, dst_ip="10.244.1.5", dst_port=8080)
        assert zt.evaluate(tr.authorizations, wl, conn, "ambit-system").allowed is allowed


def test_a_selector_policy_is_warned_only_when_the_pods_ports_are_known() -> None:
    obj = on_pods([{"to": [{"operation": {"ports": ["80"]}}]}])
    # the pod declares port 80 itself: it may be dialled there
    assert warned(obj, base=BASE[:3] + [pod(ports=[{"name": "web", "containerPort": 80}])]) == {}
    # another selected pod that no Service fronts: any of its ports may be dialled
    team = policy({"selector": {"matchLabels": {"team": "a"}}, "action": "ALLOW",
                   "rules": [{"to": [{"operation": {"ports": ["80"]}}]}]})
    fronted = BASE[:3] + [pod(labels={"app": "myapp", "team": "a"})]
    assert list(warned(team, base=fronted)) == ["spec.rules[0].to[0].operation.ports[0]"]
    assert warned(team, pod("loose", "10.244.1.6", {"app": "loose", "team": "a"}), base=fronted) == {}
    # a named targetPort: resolved through the pod's container ports, else nothing is certain
    named = [BASE[0], myapp("web"), pod(ports=[{"name": "web", "containerPort": 8080}])]
    assert has(warned(obj, base=named)["spec.rules[0].to[0].operation.ports[0]"], "(80→web)", "write 8080")
    assert warned(obj, base=[BASE[0], myapp("web"), pod()]) == {}
    # namespace-wide (no selector): too many pods to be sure of, not said
    assert warned(policy({"action": "ALLOW", "rules": [{"to": [{"operation": {"ports": ["80"]}}]}]})) == {}


# -- 5. PeerAuthentication portLevelMtls -----------------------------------------------------------------

def peer(key: int) -> Obj:
    return {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
            "metadata": {"name": "pa", "namespace": "default"},
            "spec": {"selector": {"matchLabels": {"app": "myapp"}}, "mtls": {"mode": "STRICT"},
                     "portLevelMtls": {key: {"mode": "PERMISSIVE"}}}}


def test_port_level_mtls_keyed_by_the_service_port_is_warned() -> None:
    got = warned(peer(80))
    assert got == {"spec.portLevelMtls[80]": (
        f"port 80 is a port of {PAIRS}, not a port of the pods it selects: ztunnel applies portLevelMtls by the "
        "pod's port the connection arrives on (the targetPort), as Istio does, so this mode never applies; key it "
        "by 8080")}
    assert warned(peer(8080)) == {}
    codes = {(f.code, f.path) for f in analyze(BASE + [peer(80)], complete=True) if f.code == "AMB0136"}
    assert codes == {("AMB0136", "spec.portLevelMtls[80]")}


def test_the_warning_is_about_what_happens_port_level_mtls_applies_by_the_pod_port() -> None:
    for key, mode in ((80, zt.STRICT), (8080, zt.PERMISSIVE)):
        tr = translated(BASE + [peer(key)])
        [wl] = [w for w in tr.workloads if w.name == "myapp-1"]
        assert zt.peer_authn(tr.peer_authns, wl, 8080, "ambit-system").mode == mode
