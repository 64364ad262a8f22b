"""A VirtualService bound to an Istio Gateway (`gateways`) none of whose `hosts` matches a host of that
Gateway's servers is served nowhere at that Gateway. Before, it was accepted without a word; now
`ambit apply` warns and `ambit analyze` reports AMB0135, comparing hosts as Istio's analyzer does
(IST0132 VirtualServiceHostNotFoundInGateway, istio
pkg/config/analysis/analyzers/virtualservice/gateways.go)."""

from __future__ import annotations

from typing import Any

import pytest

from ambitctl.analyze import analyze
from controller.translate import translate
from controller.waypoints.advisories import advisories
from controller.waypoints.gateway_hosts import host_matches, hosts_not_in_gateway, server_hosts_for
from tests.unit.controller.test_ingress import BASE
from tests.unit.controller.test_istio_gateway import INGRESS, istio_gateway, vs


def server(*hosts: str, port: int = 8080, protocol: str = "HTTP", **more: Any) -> dict[str, Any]:
    return {"port": {"number": port, "name": protocol.lower(), "protocol": protocol}, "hosts": list(hosts), **more}


def warned(*objs: dict[str, Any]) -> dict[tuple[str, str], str]:
    return {(a.ref, a.path): a.reason for a in advisories(BASE + [INGRESS, *objs]) if a.cause == "HostNotInGateway"}


def test_a_host_no_server_names_is_warned_naming_the_gateway_and_its_server_hosts() -> None:
    got = warned(istio_gateway(server("a.example.com"), name="gw"), vs("b", ["b.example.com"], ["mesh", "gw"]))
    why = got.pop(("VirtualService/web/b", "spec.gateways[1]"))
    assert got == {}
    for piece in ("hosts b.example.com (spec.hosts)", "Gateway web/gw's server hosts (a.example.com)",
                  "its routes are served nowhere at that Gateway", "IST0132"):
        assert piece in why, why


def test_analyze_reports_amb0135_offline_when_the_gateway_is_in_the_files_only() -> None:
    gw, bound = istio_gateway(server("a.example.com"), name="gw"), vs("b", ["b.example.com"], ["web/gw"])
    [f] = [f for f in analyze([gw, bound], complete=False) if f.code == "AMB0135"]
    assert (f.ref, f.path, f.severity, f.name) == ("VirtualService/web/b", "spec.gateways[0]", "Warning",
                                                    "HostNotInGateway")
    # a Gateway that is not in the files may exist elsewhere: nothing is said of it
    assert [f for f in analyze([bound], complete=False) if f.code == "AMB0135"] == []
    assert [f for f in analyze([bound], complete=True) if f.code == "AMB0135"] == []


@pytest.mark.parametrize("server_hosts, vs_hosts", [
    (["b.example.com"], ["b.example.com"]),
    (["a.example.com", "b.example.com"], ["b.example.com", "c.example.com"]),  # one host in common is enough
    (["*.example.com"], ["shop.example.com"]),
    (["shop.example.com"], ["*.example.com"]),         # the reverse: Istio's Matches is symmetric
    (["*.example.com"], ["*.shop.example.com"]),
    (["*"], ["anything.org"]),
    (["a.example.com"], ["*"]),
    (["*/b.example.com"], ["b.example.com"]),
    (["*/*"], ["b.example.com"]),
    (["web/*"], ["b.example.com"]),                  # the VirtualService is of namespace web
    (["./b.example.com"], ["b.example.com"]),        # `.`: the Gateway's namespace, web too
    (["shop/*", "*.example.com"], ["b.example.com"]),
])
def test_hosts_istio_matches_are_not_warned(server_hosts: list[str], vs_hosts: list[str]) -> None:
    assert warned(istio_gateway(server(*server_hosts), name="gw"), vs("b", vs_hosts, ["gw"])) == {}


@pytest.mark.parametrize("server_hosts, vs_hosts, ns", [
    (["*.example.com"], ["example.com"], "web"),     # a wildcard needs a label before its suffix
    (["*.shop.example.com"], ["*.other.example.com"], "web"),
    (["shop/*"], ["b.example.com"], "web"),          # shop/ admits VirtualServices of namespace shop only
    (["./b.example.com"], ["b.example.com"], "team"),  # ./ is the Gateway's namespace (web), not team
])
def test_hosts_istio_does_not_match_are_warned(server_hosts: list[str], vs_hosts: list[str], ns: str) -> None:
    got = warned(istio_gateway(server(*server_hosts), name="gw"), vs("b", vs_hosts, ["web/gw"], ns=ns))
    assert list(got) == [(f"VirtualService/{ns}/b", "spec.gateways[0]")]


def test_a_namespace_qualified_server_host_is_read_for_the_virtual_services_namespace() -> None:
    gw = istio_gateway(server("shop/*", "./a.example.com", "*/c.example.com"), name="gw")
    assert server_hosts_for(gw, "shop") == ["*", "c.example.com"]
    assert server_hosts_for(gw, "web") == ["a.example.com", "c.example.com"]
    why = warned(gw, vs("b", ["b.example.com"], ["web/gw"], ns="team"))[("VirtualService/team/b", "spec.gateways[0]")]
    assert "read for namespace team" in why and "(shop/*, ./a.example.com, */c.example.com)" in why


def test_host_matches_is_istios() -> None:
    assert host_matches("*", "a.b") and host_matches("a.b", "*") and host_matches("*.b", "*")
    assert host_matches("*.example.com", "a.b.example.com") and not host_matches("*.example.com", "example.com")
    assert host_matches("*.com", "*.example.com") and host_matches("*.example.com", "*.com")
    assert not host_matches("a.example.com", "b.example.com")


def test_each_gateway_is_judged_alone_and_mesh_and_unknown_gateways_are_not() -> None:
    a, b = istio_gateway(server("a.example.com"), name="ga"), istio_gateway(server("b.example.com"), name="gb")
    got = warned(a, b, vs("v", ["a.example.com"], ["mesh", "ga", "gb", "elsewhere", "web/gb"]))
    assert list(got) == [("VirtualService/web/v", "spec.gateways[2]")]   # gb, said once
    assert "Gateway web/gb's" in got[("VirtualService/web/v", "spec.gateways[2]")]


def test_the_warning_is_about_what_happens_the_listener_has_no_route_for_it() -> None:
    """Through the real translation: the Gateway's listener is there, without the VirtualService's
    routes; with a host in common they are served."""
    gw = istio_gateway(server("a.example.com"), name="gw")
    tr = translate(BASE + [INGRESS, gw, vs("b", ["b.example.com"], ["gw"])])
    [ln] = [ln for ln in tr.ingress.gateways[0].listeners if ln.name.startswith("web/gw/")]
    assert (ln.port, ln.hostname, ln.hosts) == (8080, "a.example.com", [])
    assert hosts_not_in_gateway(BASE + [INGRESS, gw, vs("b", ["b.example.com"], ["gw"])], tr)
    tr = translate(BASE + [INGRESS, gw, vs("b", ["a.example.com", "b.example.com"], ["gw"])])
    [ln] = [ln for ln in tr.ingress.gateways[0].listeners if ln.name.startswith("web/gw/")]
    assert [(h.hostname, [r.source for r in h.http]) for h in ln.hosts] == [("a.example.com", ["VirtualService/web/b"])]


def test_tcp_and_tls_routes_of_a_virtual_service_whose_hosts_miss_the_server_are_not_served() -> None:
    """As Istio's gateway (`pickMatchingGatewayHosts` in its TCP and TLS filter chains): a bound
    VirtualService's tcp and tls routes serve a server only when its hosts meet the server's. They
    were served whatever the hosts; the warning says none is served."""
    dest = [{"destination": {"host": "echo", "port": {"number": 80}}}]
    # an SNI host is within the VirtualService's hosts (istiod's validateSniHost refuses another)
    v = vs("b", ["b.example.com"], ["gw"], tcp=[{"route": dest}],
           tls=[{"match": [{"sniHosts": ["b.example.com"]}], "route": dest}])
    tls_a = [{"match": [{"sniHosts": ["a.example.com"]}], "route": dest}]
    gw = istio_gateway(server("a.example.com"), server("a.example.com", port=9000, protocol="TCP"),
                       server("a.example.com", port=9443, protocol="TLS", tls={"mode": "PASSTHROUGH"}), name="gw")
    why = warned(gw, v)[("VirtualService/web/b", "spec.gateways[0]")]
    assert "its routes are served nowhere at that Gateway" in why, why

    def served(virtual_service: dict) -> set[str]:
        tr = translate(BASE + [INGRESS, gw, virtual_service])
        return {ln.protocol for ln in tr.ingress.gateways[0].listeners if ln.name.startswith("web/gw/")
                for h in ln.hosts for r in [*h.http, *h.tcp] if r.source == "VirtualService/web/b"}
    assert served(v) == set()
    # with a host in common (or a wildcard one) they are served, by port and SNI
    assert served({**v, "spec": {**v["spec"], "hosts": ["a.example.com"], "tls": tls_a}}) == {"HTTP", "TCP", "TLS"}
    assert served({**v, "spec": {**v["spec"], "hosts": ["*.example.com"], "tls": tls_a}}) == {"HTTP", "TCP", "TLS"}
