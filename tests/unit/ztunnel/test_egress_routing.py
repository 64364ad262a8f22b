"""ServiceEntry hosts and the mesh's outboundTrafficPolicy in ztunnel's route decision (pure)."""

from __future__ import annotations

import pytest

from ambit.configclient import ConfigUpdate
from ambit.model import Endpoint, MeshSettings, Service, ServicePort
from tests.unit.ztunnel.meshcfg import config, svc, wl
from ztunnel import routing
from ztunnel.meshstate import ConfigRejected, MeshState
from ztunnel.routing import HBONE, PASSTHROUGH, REFUSE, RoundRobin, decide

POD, OTHER_NS_POD = wl("sleep", "10.210.1.10"), wl("curl", "10.210.1.11", ns="other")
DB = wl("db", "10.210.2.30")
REGISTRY_ONLY = MeshSettings("cluster.local", outbound_traffic_policy="REGISTRY_ONLY")


def entry(host: str, resolution: str = "STATIC", vips: list[str] | None = None, endpoints: list[Endpoint] = (),
          port: int = 80, target: int = 0, location: str = "MESH_EXTERNAL", subnets: list[str] | None = None,
          export_to: list[str] | None = None, waypoint: str = "", ns: str = "demo") -> Service:
    return Service(name=host, namespace=ns, hostname=host, vips=vips or [], subnets=subnets or [],
                   ports=[ServicePort(port, target, "http", "HTTP")], endpoints=list(endpoints), waypoint=waypoint,
                   kind="ServiceEntry", location=location, resolution=resolution, export_to=export_to or [])


def test_a_static_entry_vip_goes_to_its_endpoints_by_weight_in_plain_tcp_labelled_with_the_host() -> None:
    ext = entry("api.example.com", vips=["240.240.0.1"], target=8080,
                endpoints=[Endpoint("", "198.51.100.7", weight=3), Endpoint("", "198.51.100.8")])
    cfg, lb = config([POD], [ext]), RoundRobin()
    routes = [decide(cfg, "240.240.0.1", 80, lb, "demo") for _ in range(8)]
    a, b = ("198.51.100.7", 8080), ("198.51.100.8", 8080)
    assert [r.dial for r in routes] == [a, a, b, a] * 2, "3 to 1, interleaved (smooth weighted round robin)"
    assert all(r.kind == PASSTHROUGH and r.service.hostname == "api.example.com" for r in routes)


def test_weights_are_interleaved_not_a_run_per_endpoint() -> None:
    """Weighted round robin gave each endpoint its whole weight in a row: weights 100 and 100 sent a
    hundred connections to one endpoint before the other got any. Now they alternate, as any equal
    weights do, and unequal ones interleave."""
    ext = entry("api.example.com", vips=["240.240.0.1"], target=8080,
                endpoints=[Endpoint("", "198.51.100.7", weight=100), Endpoint("", "198.51.100.8", weight=100),
                           Endpoint("", "198.51.100.9", weight=200)])
    cfg, lb = config([POD], [ext]), RoundRobin()
    got = [decide(cfg, "240.240.0.1", 80, lb, "demo").dial[0] for _ in range(8)]
    assert got == ["198.51.100.9", "198.51.100.7", "198.51.100.8", "198.51.100.9"] * 2, got


def test_an_endpoints_own_port_wins_over_the_target_port() -> None:
    ext = entry("api.example.com", vips=["240.240.0.1"], target=8080,
                endpoints=[Endpoint("", "198.51.100.7", ports=[ServicePort(80, 9090, "http")])])
    assert decide(config([POD], [ext]), "240.240.0.1", 80).dial == ("198.51.100.7", 9090)


def test_resolution_none_keeps_the_original_destination_and_names_the_host() -> None:
    ext = entry("*.wikipedia.org", resolution="NONE", subnets=["198.51.100.0/24"])
    cfg = config([POD], [ext])
    r = decide(cfg, "198.51.100.99", 80)
    assert (r.kind, r.dial, r.service.hostname) == (PASSTHROUGH, ("198.51.100.99", 80), "*.wikipedia.org")
    assert decide(cfg, "198.51.100.99", 443).service is None, "a port the entry does not list is not it"


def test_the_most_specific_cidr_wins_and_a_static_endpoint_reached_directly_counts_as_its_entry() -> None:
    wide = entry("wide.example", resolution="NONE", subnets=["198.51.0.0/16"])
    narrow = entry("narrow.example", resolution="NONE", subnets=["198.51.100.0/24"])
    static = entry("db.example", endpoints=[Endpoint("", "203.0.113.5")], target=5432)
    cfg = config([POD], [wide, narrow, static])
    assert decide(cfg, "198.51.100.1", 80).service.hostname == "narrow.example"
    assert decide(cfg, "198.51.7.1", 80).service.hostname == "wide.example"
    r = decide(cfg, "203.0.113.5", 5432)
    assert (r.dial, r.service.hostname) == (("203.0.113.5", 5432), "db.example")


def test_a_dns_endpoint_is_dialled_by_name_for_the_proxy_to_resolve() -> None:
    ext = entry("httpbin.org", resolution="DNS", vips=["240.240.0.2"], endpoints=[Endpoint("", "", hostname="httpbin.org")])
    r = decide(config([POD], [ext]), "240.240.0.2", 80)
    assert (r.kind, r.dial, r.resolve) == (PASSTHROUGH, ("httpbin.org", 80), "httpbin.org")


def test_mesh_internal_endpoints_that_are_mesh_pods_get_hbone_and_external_ones_never_do() -> None:
    internal = entry("db.internal", vips=["240.240.0.3"], endpoints=[Endpoint("", DB.ips[0])], target=5432,
                     location="MESH_INTERNAL")
    r = decide(config([POD, DB], [internal]), "240.240.0.3", 80)
    assert (r.kind, r.dial, r.identity) == (HBONE, (DB.ips[0], 15008), DB.identity)
    external = entry("db.external", vips=["240.240.0.3"], endpoints=[Endpoint("", DB.ips[0])], target=5432)
    r = decide(config([POD, DB], [external]), "240.240.0.3", 80)
    assert (r.kind, r.dial) == (PASSTHROUGH, (DB.ips[0], 5432))


def test_an_entry_not_exported_to_the_sources_namespace_is_as_if_absent() -> None:
    ext = entry("api.example.com", vips=["240.240.0.1"], endpoints=[Endpoint("", "198.51.100.7")],
                export_to=["demo"])
    cfg = config([POD, OTHER_NS_POD], [ext], mesh=REGISTRY_ONLY)
    assert decide(cfg, "240.240.0.1", 80, src_namespace="demo").service.hostname == "api.example.com"
    r = decide(cfg, "240.240.0.1", 80, src_namespace="other")
    assert r.kind == REFUSE and "REGISTRY_ONLY" in r.reason


def test_an_entry_bound_to_a_waypoint_goes_through_it_with_the_vip_as_authority() -> None:
    wp = wl("egress-wp", "10.210.3.5", ns="istio-egress", labels={"gateway.networking.k8s.io/gateway-name": "waypoint"})
    ext = entry("api.example.com", vips=["240.240.0.1"], endpoints=[Endpoint("", "198.51.100.7")],
                waypoint="istio-egress/waypoint")
    r = decide(config([POD, wp], [ext]), "240.240.0.1", 80)
    assert (r.kind, r.dial, r.authority, r.waypoint) == (HBONE, ("10.210.3.5", 15008), "240.240.0.1:80",
                                                         "istio-egress/waypoint")
    assert r.service.hostname == "api.example.com"


@pytest.mark.parametrize("mesh, refused", [(None, False), (MeshSettings("cluster.local"), False),
                                           (REGISTRY_ONLY, True)])
def test_registry_only_refuses_unregistered_addresses_and_names_the_policy(mesh: MeshSettings | None,
                                                                            refused: bool) -> None:
    legacy = wl("legacy", "10.210.2.20", enrolled=False)
    ext = entry("api.example.com", vips=["240.240.0.1"], endpoints=[Endpoint("", "198.51.100.7")])
    cfg = config([POD, DB, legacy], [ext, svc("db", "10.96.0.30", [DB], port=5432, target=5432)], mesh=mesh)
    r = decide(cfg, "192.0.2.7", 443, src_namespace="demo")
    assert (r.kind == REFUSE) is refused
    if refused:
        assert r.reason == ("outboundTrafficPolicy REGISTRY_ONLY: 192.0.2.7:443 is not a mesh workload, "
                            "Service or ServiceEntry")
    # everything registered still goes: a Service, a mesh pod, a non-mesh pod, a ServiceEntry
    assert decide(cfg, "10.96.0.30", 5432).kind == HBONE
    assert decide(cfg, DB.ips[0], 5432).kind == HBONE
    assert decide(cfg, "10.210.2.20", 80).kind == PASSTHROUGH
    assert decide(cfg, "240.240.0.1", 80).kind == PASSTHROUGH
    assert routing.registry_only(cfg) is refused


def test_an_outbound_mode_ztunnel_does_not_know_is_refused_not_read_as_allow_any() -> None:
    """A newer controller's mode (version skew) used to be routed as ALLOW_ANY, since only
    REGISTRY_ONLY refuses: an update that meant to restrict egress opened it. Now it is NACKed and
    the REGISTRY_ONLY in force stays."""
    state = MeshState()
    state.apply(ConfigUpdate(MeshSettings.TYPE, "v1", {}, frozenset(), {"mesh": REGISTRY_ONLY}))
    newer = MeshSettings("cluster.local", outbound_traffic_policy="REGISTRY_ONLY_AND_DNS")
    with pytest.raises(ConfigRejected, match=r"outbound_traffic_policy: 'REGISTRY_ONLY_AND_DNS' is not one of "
                                             r"ALLOW_ANY, REGISTRY_ONLY"):
        state.apply(ConfigUpdate(MeshSettings.TYPE, "v2", {}, frozenset(), {"mesh": newer}))
    assert routing.registry_only(state) and state.version == "v1"


def test_an_entry_with_no_endpoint_left_is_refused_naming_the_host() -> None:
    ext = entry("api.example.com", vips=["240.240.0.1"], endpoints=[Endpoint("", "198.51.100.7", ready=False)])
    r = decide(config([POD], [ext]), "240.240.0.1", 80)
    assert r.kind == REFUSE and "api.example.com" in r.reason


def test_ztunnel_refuses_a_subnet_that_does_not_parse() -> None:
    with pytest.raises(ConfigRejected, match=r"subnets\[0\]: 'nope' is not a CIDR"):
        config([POD], [entry("x.example", resolution="NONE", subnets=["nope"])])


def test_the_proxy_resolves_a_dns_endpoint_with_the_nodes_resolver_and_fails_the_connection_otherwise() -> None:
    import asyncio

    from ztunnel.proxy import resolve
    ip, port = asyncio.run(resolve("localhost", 8080, 5))
    assert ip in ("127.0.0.1", "::1") and port == 8080
    with pytest.raises(OSError):     # what the outbound handler turns into a refused connection
        asyncio.run(resolve("no-such-host.invalid", 80, 5))


def test_a_service_entry_never_claims_another_namespaces_pod() -> None:
    """A ServiceEntry is a namespace's object. One in namespace "attacker" naming a pod of namespace
    "bank" (a STATIC endpoint bound to its own waypoint, an `addresses` IP, a CIDR over the pod
    range) must not take other namespaces' connections to that pod: they stay HBONE to the pod, as
    in Istio's ztunnel (workload addresses first). Before, they went through the attacker's
    waypoint, or as plain TCP."""
    bank = wl("bank", "10.210.2.40", ns="bank")
    wp = wl("waypoint-0", "10.210.2.50", ns="attacker")
    wp.labels["gateway.networking.k8s.io/gateway-name"] = "waypoint"
    claims = [entry("bank.evil", endpoints=[Endpoint("", bank.ips[0])], ns="attacker", waypoint="attacker/waypoint"),
              entry("vip.evil", vips=[bank.ips[0]], endpoints=[Endpoint("", "198.51.100.7")], ns="attacker"),
              entry("pods.evil", resolution="NONE", subnets=["10.210.0.0/16"], ns="attacker"),
              entry("pods.evil", resolution="NONE", subnets=["10.210.0.0/16"], ns="attacker",
                    waypoint="attacker/waypoint")]
    for claim in claims:
        for mesh in (None, REGISTRY_ONLY):
            r = decide(config([POD, bank, wp], [claim], mesh=mesh), bank.ips[0], 80, src_namespace="demo")
            assert (r.kind, r.dial, r.identity, r.waypoint) == (HBONE, (bank.ips[0], 15008), bank.identity, ""), \
                (claim.hostname, r)
            assert r.service is None
    # what is no pod is still the entry's
    r = decide(config([POD, bank, wp], [claims[2]]), "10.210.9.9", 80, src_namespace="demo")
    assert (r.kind, r.service.hostname) == (PASSTHROUGH, "pods.evil")
