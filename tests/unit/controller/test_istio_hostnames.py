"""The host names of Istio's networking kinds (VirtualService `hosts` and destination `host`,
DestinationRule `host`, an Istio Gateway server's `hosts`): what istiod's webhook refuses is
refused by field, and what it takes applies, in any letter case. Before, any string was taken:
`reviews svc`, `foo.*` or `*` bound to the mesh became routes or rules that named nothing, or
everything; `Reviews` made routes for a `Reviews.shop.svc.cluster.local` no request resolves to."""

from __future__ import annotations

from typing import Any

import pytest

from controller.translate import translate
from controller.validation import validate_object
from tests.unit.controller.test_export_to import HOST, NET, mesh
from tests.unit.controller.test_istio_gateway import HTTP_8080, istio_gateway, listeners
from tests.unit.controller.test_istio_gateway import vs as gateway_vs

Obj = dict[str, Any]


def vs(hosts: list[str], dest: str = HOST, **spec: Any) -> Obj:
    return {"apiVersion": NET, "kind": "VirtualService", "metadata": {"name": "reviews", "namespace": "shop"},
            "spec": {"hosts": hosts, "http": [{"match": [{"uri": {"prefix": "/v1"}}],
                                               "route": [{"destination": {"host": dest}}]}], **spec}}


def dr(host: str) -> Obj:
    return {"apiVersion": NET, "kind": "DestinationRule", "metadata": {"name": "reviews", "namespace": "shop"},
            "spec": {"host": host, "trafficPolicy": {"loadBalancer": {"simple": "RANDOM"}}}}


def errors(obj: Obj) -> list[tuple[str, str]]:
    return [(e.path, e.reason) for e in validate_object(obj)]


BAD = [
    ("reviews svc", 'label "reviews svc" invalid'),
    ("foo.*", 'label "*" invalid'),
    ("reviews..shop", 'label "" invalid'),
    ("-reviews.shop", 'label "-reviews" invalid'),
    ("reviews\n", 'label "reviews\\n" invalid'),
    ("reviews:9080", 'label "reviews:9080" invalid'),
    ("shop/reviews", 'label "shop/reviews" invalid'),
    ("b\u00fccher.example", 'label "b\u00fccher" invalid'),
    ("a." + "b" * 64 + ".example", "invalid"),
    ("x." * 130, "at most 255 characters"),
    ("example.123", 'last label "123" is all digits'),
    ("*foo.example.com", "a wildcard that is part of a label is not supported by Ambit"),
    ("reviews.shop.svc.cluster.local.", "a trailing dot is not supported by Ambit"),
]


@pytest.mark.parametrize("host, why", BAD)
def test_a_host_that_is_no_dns_name_is_refused_in_every_field_that_names_one(host: str, why: str) -> None:
    assert [(p, why in r) for p, r in errors(vs([host]))] == [("spec.hosts[0]", True)]
    assert [(p, why in r) for p, r in errors(vs(["reviews"], dest=host))] == [
        ("spec.http[0].route[0].destination.host", True)]
    assert [(p, why in r) for p, r in errors(dr(host))] == [("spec.host", True)]
    if "/" not in host:     # at an Istio Gateway server "namespace/host" is a host (its namespace form)
        server = {**HTTP_8080, "hosts": [host]}
        assert [p for p, _ in errors(istio_gateway(server))] == ["spec.servers[0].hosts[0]"]


@pytest.mark.parametrize("host", ["reviews", "reviews.shop", "reviews.shop.svc.cluster.local", "*.example.com",
                                  "Reviews.Shop", "api_v2.example.com", "xn--bcher-kva.example", "a" * 63 + ".io"])
def test_istios_host_names_are_accepted(host: str) -> None:
    assert errors(vs([host])) == [] and errors(dr(host)) == []
    assert errors(vs(["reviews"], dest=host)) == []


def test_an_ip_address_is_a_virtual_service_host_but_no_destination() -> None:
    """As Istio: its webhook takes an IP as a VirtualService host and refuses one as a
    destination or a DestinationRule host (the last label is all digits)."""
    assert errors(vs(["10.0.0.1"])) == [] and errors(vs(["fd00::1"])) == []
    [(path, why)] = errors(vs(["reviews"], dest="10.0.0.1"))
    assert path == "spec.http[0].route[0].destination.host" and "all digits" in why
    assert [p for p, _ in errors(dr("10.0.0.1"))] == ["spec.host"]


def test_the_wildcard_host_is_refused_for_the_mesh_and_taken_at_a_gateway() -> None:
    """Istio: `wildcard host * is not allowed for virtual services bound to the mesh gateway`.
    Ambit took it and applied the routes to every Service of the mesh."""
    for spec in ({}, {"gateways": ["mesh"]}, {"gateways": ["edge", "mesh"]}):
        [(path, why)] = errors(vs(["*"], **spec))
        assert path == "spec.hosts[0]" and why.startswith('the wildcard host "*" is not allowed for a VirtualService '
                                                          "bound to the mesh")
    assert errors(vs(["*"], gateways=["edge"])) == []
    tr = translate([*mesh("shop"), vs(["*"])])
    assert [e.path for e in tr.errors] == ["spec.hosts[0]"]
    assert all(not w.http for w in tr.waypoint_routes)


def test_a_destination_of_any_host_is_refused() -> None:
    [(path, why)] = errors(vs(["reviews"], dest="*"))
    assert path == "spec.http[0].route[0].destination.host" and '"*" names none' in why


@pytest.mark.parametrize("hosts, clash", [
    (["reviews", "reviews"], "hosts[1]"),
    (["a.example.com", "*.example.com"], "hosts[1]"),
    (["*.example.com", "a.b.example.com"], "hosts[1]"),
    (["*.com", "*.example.com"], "hosts[1]"),
    (["API.example.com", "api.example.com"], "hosts[1]"),
    (["*", "a.example.com"], "hosts[1]"),
])
def test_hosts_that_match_each_other_are_refused_as_duplicates(hosts: list[str], clash: str) -> None:
    """Istio's validateVirtualService (host.Name.Matches): both would claim the same requests."""
    got = errors(vs(hosts, gateways=["edge"]))
    assert [(p, "duplicate hosts in the VirtualService" in r) for p, r in got] == [(f"spec.{clash}", True)]


def test_hosts_that_do_not_overlap_are_accepted() -> None:
    assert errors(vs(["a.example.com", "b.example.com", "*.example.org", "reviews"], gateways=["edge"])) == []


def test_a_host_in_upper_case_applies_to_the_service() -> None:
    """DNS names are case-insensitive (and Envoy matches domains so): `Reviews` and
    `REVIEWS.shop.svc.cluster.local` name Service reviews; routes and rules go to it."""
    for host in ("Reviews", "REVIEWS.shop.svc.cluster.local", "Reviews.Shop"):
        tr = translate([*mesh("shop"), vs([host], dest=host.upper() if "." in host else host), dr(host)])
        assert tr.errors == []
        [wr] = [w for w in tr.waypoint_routes if w.http]
        assert wr.hostname == HOST and [r.source for r in wr.http] == ["VirtualService/shop/reviews"]
        assert [d.host for d in wr.http[0].destinations] == [HOST]
        assert wr.policy is not None and wr.policy.lb == "RANDOM"


def test_an_upper_case_host_at_an_istio_gateway_serves_its_requests() -> None:
    """The gateway looks a request's authority up lower-cased: a server host or a VirtualService
    host written in upper case is served under its lower-case name."""
    server = {**HTTP_8080, "hosts": ["Shop.Example.com"]}
    got, errs = listeners([istio_gateway(server), gateway_vs("shop", ["SHOP.example.com"], ["bookinfo-gateway"])])
    assert errs == []
    [ln] = got.values()
    assert ln.hostname == "shop.example.com"
    assert [(h.hostname, [r.source for r in h.http]) for h in ln.hosts] == [("shop.example.com",
                                                                             ["VirtualService/web/shop"])]


def entry(host: str) -> Obj:
    return {"apiVersion": NET, "kind": "ServiceEntry", "metadata": {"name": "ext", "namespace": "shop"},
            "spec": {"hosts": [host], "ports": [{"number": 443, "name": "tls", "protocol": "TLS"}],
                     "resolution": "DNS"}}


@pytest.mark.parametrize("host, why", [("api..example.com", 'label "" invalid'),
                                       ("-api.example.com", 'label "-api" invalid'),
                                       ("api.*.example.com", 'label "*" invalid'),
                                       ("*api.example.com", "a wildcard that is part of a label"),
                                       ("api.example.123", 'last label "123" is all digits'),
                                       ("a" * 64 + ".example.com", "invalid")])
def test_a_service_entry_host_that_is_no_dns_name_is_refused(host: str, why: str) -> None:
    assert [(p, why in r) for p, r in errors(entry(host))] == [("spec.hosts[0]", True)]


@pytest.mark.parametrize("host", ["api.example.com", "*.example.com", "API.Example.com", "api_v2.example.com",
                                  "api.example.com.", "10.1.2.3"])
def test_a_service_entrys_dns_names_are_accepted_as_before(host: str) -> None:
    obj = entry(host)
    if host.startswith("*"):    # istiod refuses a DNS entry with a wildcard host and no endpoints
        obj["spec"]["resolution"] = "NONE"
    assert errors(obj) == []


def test_a_route_names_a_service_entry_host_in_any_case() -> None:
    """An entry's host is its registry Service's name as written; a VirtualService naming it in
    another case routes it."""
    wp = [o for o in mesh("shop") if o["kind"] in ("Namespace", "Gateway")]
    se = entry("API.Example.com")
    se["metadata"]["labels"] = {"istio.io/use-waypoint": "wp"}
    route = vs(["api.example.com"], dest="api.example.com")
    tr = translate([*wp, se, route])
    assert tr.errors == []
    [wr] = [w for w in tr.waypoint_routes if w.http]
    assert wr.hostname == "API.Example.com" and [d.host for d in wr.http[0].destinations] == ["API.Example.com"]


@pytest.mark.parametrize("sni, ok", [("api.example.com", True), ("*.example.com", True), ("*", True),
                                     ("API.example.com", True), ("10.0.0.1", True), ("api..example.com", False),
                                     ("api example.com", False), ("api.*.com", False)])
def test_a_tls_routes_sni_hosts_are_dns_names(sni: str, ok: bool) -> None:
    """Istio's validateSniHost: a server name that is no DNS name matches no ClientHello."""
    obj = vs(["api.example.com"])
    # at a gateway whose hosts are "*", so that every SNI is within them (istiod's SubsetOf rule)
    obj["spec"].update(hosts=["*"], gateways=["shop/gw"])
    obj["spec"]["tls"] = [{"match": [{"sniHosts": [sni]}], "route": [{"destination": {"host": HOST}}]}]
    assert [p for p, _ in errors(obj)] == ([] if ok else ["spec.tls[0].match[0].sniHosts[0]"])
