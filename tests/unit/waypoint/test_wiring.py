"""The waypoint binary's sans-IO wiring: endpoint picking, the Downstream a tunnel gets, and the
decision (authz, then routing), with config built by hand and no sockets."""

from __future__ import annotations

from ambit.configclient import ConfigUpdate
from ambit.model import Authorization, Endpoint, Service, ServicePort, WaypointRoutes, Workload
from waypoint import endpoints
from waypoint.app import WaypointProxy
from waypoint.authz import Waypoint
from waypoint.config import WaypointConfig
from waypoint.request import Downstream, Forward, LocalReply, RequestHead
from waypoint.settings import load


def wl(name: str, ip: str, version: str, protocol: str = "HBONE") -> Workload:
    return Workload(uid=f"uid-{name}", name=name, namespace="default", ips=[ip], node="node1",
                    service_account="myapp", identity="spiffe://cluster.local/ns/default/sa/myapp",
                    labels={"app": "myapp", "version": version}, protocol=protocol,
                    services={"default/myapp": [80, 9000]})


V1, V2, V2B = wl("v1", "10.0.1.1", "v1"), wl("v2", "10.0.1.2", "v2"), wl("v2b", "10.0.1.3", "v2")
SVC = Service(name="myapp", namespace="default", hostname="myapp.default.svc.cluster.local", vips=["10.96.0.10"],
              ports=[ServicePort(80, 8080, "http", "HTTP"), ServicePort(9000, 9000, "grpc", "GRPC")],
              endpoints=[Endpoint(w.uid, w.ips[0]) for w in (V1, V2, V2B)] + [Endpoint("uid-gone", "10.0.1.9",
                                                                                          ready=False)],
              waypoint="default/waypoint")
BY_UID = {w.uid: w for w in (V1, V2, V2B)}
BY_IP = {w.ips[0]: w for w in (V1, V2, V2B)}


def test_candidates_are_the_ready_endpoints_of_a_subset_with_the_target_port_and_protocol() -> None:
    picks = endpoints.candidates(SVC, 80, {"version": "v2"}, BY_UID, BY_IP)
    assert [p.address for p in picks] == ["10.0.1.2:8080", "10.0.1.3:8080"]
    assert {p.protocol for p in picks} == {"http1"}
    all_ = {p.ip for p in endpoints.candidates(SVC, 80, None, BY_UID, BY_IP)}
    assert all_ == {"10.0.1.1", "10.0.1.2", "10.0.1.3"}                # never the unready one
    assert {p.protocol for p in endpoints.candidates(SVC, 9000, None, BY_UID, BY_IP)} == {"h2"}
    assert endpoints.candidates(SVC, 80, {"version": "v9"}, BY_UID, BY_IP) == []
    assert endpoints.candidates(SVC, 81, None, BY_UID, BY_IP) == []


def proxy(*auths: Authorization, routes: tuple[WaypointRoutes, ...] = ()) -> WaypointProxy:
    s = load(["--waypoint", "default/waypoint", "--pod-name", "waypoint-0", "--node", "node2"])
    cfg = WaypointConfig(Waypoint("default", "waypoint"), "cluster.local")
    for t, items in ((Workload.TYPE, [V1, V2, V2B]), (Service.TYPE, [SVC]), (Authorization.TYPE, list(auths)),
                     (WaypointRoutes.TYPE, list(routes))):
        cfg.apply(ConfigUpdate(t, "1", {}, frozenset(), {r.resource_name if hasattr(r, "resource_name") else r.uid: r
                                                         for r in items}))
    return WaypointProxy(s, cfg, None)


FRONTEND = "spiffe://cluster.local/ns/default/sa/frontend"


def test_a_tunnel_to_a_service_vip_gets_the_service_and_the_peer_as_source() -> None:
    p = proxy()
    down, why = p.downstream(FRONTEND, "10.0.2.5", "10.96.0.10:80")
    assert why == "" and down is not None
    assert (down.source_identity, down.source_ip, down.source_namespace) == (FRONTEND, "10.0.2.5", "default")
    assert (down.service, down.hostname, down.destination_port) == ("default/myapp", SVC.hostname, 80)


def test_a_tunnel_to_an_address_this_waypoint_does_not_front_is_refused() -> None:
    p = proxy()
    assert p.downstream(FRONTEND, "10.0.2.5", "10.9.9.9:80")[0] is None      # unknown
    assert p.downstream(FRONTEND, "10.0.2.5", "myapp:80")[1].startswith("bad :authority")
    # a backing pod addressed directly: it is behind this waypoint through its Service
    down, _ = p.downstream(FRONTEND, "10.0.2.5", "10.0.1.1:8080")
    assert down is not None and down.service == ""


def test_decide_routes_and_the_upstream_is_pooled_per_endpoint_and_source() -> None:
    p = proxy()
    down, _ = p.downstream(FRONTEND, "10.0.2.5", "10.96.0.10:80")
    d = p.decide(RequestHead("GET", "/", "myapp"), down)
    assert isinstance(d, Forward) and (d.service, d.port) == ("default/myapp", 80)
    target = p.upstream(d, RequestHead("GET", "/", "myapp"), down)
    assert target is not None and target.address.endswith(":8080") and "for 10.0.2.5" in target.key


def test_an_endpoints_target_is_made_once_per_config_view_and_source() -> None:
    p = proxy()
    down, _ = p.downstream(FRONTEND, "10.0.2.5", "10.96.0.10:80")
    other, _ = p.downstream(FRONTEND, "10.0.2.6", "10.96.0.10:80")
    head = RequestHead("GET", "/", "myapp")
    d = p.decide(head, down)
    assert isinstance(d, Forward) and down is not None and other is not None
    made: dict[str, object] = {}
    for _ in range(30):
        t = p.upstream(d, head, down)
        assert t is not None
        assert made.setdefault(t.address, t) is t       # one target per endpoint and source
    t = p.upstream(d, head, other)
    assert t is not None and "for 10.0.2.6" in t.key and made[t.address] is not t
    # a config update replaces the View, and its targets with it
    p.config.apply(ConfigUpdate(Service.TYPE, "2", {}, frozenset(), {SVC.resource_name: SVC}))
    t = p.upstream(d, head, down)
    assert t is not None and made[t.address] is not t and made[t.address].key == t.key  # type: ignore[attr-defined]


def test_a_denying_policy_answers_403_before_routing() -> None:
    from ambit.model import Match, Rule
    allow_get = Authorization(name="get-only", namespace="default", action="ALLOW", scope="waypoint",
                              target_refs=[{"kind": "Service", "group": "", "name": "myapp"}],
                              http_rules=[Rule(clauses=[[Match(methods=["GET"])]])])
    p = proxy(allow_get)
    down, _ = p.downstream(FRONTEND, "10.0.2.5", "10.96.0.10:80")
    assert isinstance(p.decide(RequestHead("GET", "/", "myapp"), down), Forward)
    d = p.decide(RequestHead("POST", "/", "myapp"), down)
    assert isinstance(d, LocalReply) and d.status == 403 and d.body == b"RBAC: access denied"


def admit_opaque(p: WaypointProxy, down: Downstream) -> str:
    """The L4 policy verdict `WaypointProxy.opaque` applies to a non-HTTP tunnel, without opening
    one: "" when allowed, else why not."""
    verdict = p._l4_verdict(down)
    return "" if verdict.allowed else verdict.reason


def test_non_http_tunnels_get_l4_policy_rules_that_need_http_attributes_never_admit_them() -> None:
    from ambit.model import Match, Rule
    ref = [{"kind": "Service", "group": "", "name": "myapp"}]
    by_principal = Authorization(name="frontend", namespace="default", action="ALLOW", scope="waypoint",
                                 target_refs=ref, http_rules=[Rule(clauses=[[Match(principals=[
                                     "cluster.local/ns/default/sa/frontend"])]])])
    by_path = Authorization(name="api", namespace="default", action="ALLOW", scope="waypoint", target_refs=ref,
                            http_rules=[Rule(clauses=[[Match(paths=["/api/*"])]])])
    down, _ = proxy(by_principal).downstream(FRONTEND, "10.0.2.5", "10.96.0.10:80")
    assert admit_opaque(proxy(by_principal), down) == ""
    other, _ = proxy(by_principal).downstream("spiffe://cluster.local/ns/default/sa/other", "10.0.2.6", "10.96.0.10:80")
    assert admit_opaque(proxy(by_principal), other) != ""
    assert admit_opaque(proxy(by_path), down) != ""          # a path rule cannot match a TCP tunnel
    assert admit_opaque(proxy(), down) == ""                 # no policy: allowed


def test_a_deny_with_http_attributes_denies_the_principals_tcp_tunnels_outright() -> None:
    from ambit.model import Match, Rule
    ref = [{"kind": "Service", "group": "", "name": "myapp"}]
    deny_post = Authorization(name="no-post", namespace="default", action="DENY", scope="waypoint", target_refs=ref,
                              http_rules=[Rule(clauses=[[Match(methods=["POST"], principals=[
                                  "cluster.local/ns/default/sa/frontend"])]])])
    p = proxy(deny_post)
    down, _ = p.downstream(FRONTEND, "10.0.2.5", "10.96.0.10:80")
    assert admit_opaque(p, down) != ""
    other, _ = p.downstream("spiffe://cluster.local/ns/default/sa/other", "10.0.2.6", "10.96.0.10:80")
    assert admit_opaque(p, other) == ""
    # HTTP requests still see the full rule: GET from frontend passes
    assert isinstance(p.decide(RequestHead("GET", "/", "myapp"), down), Forward)


def test_admin_endpoint_answers_from_the_config_and_is_not_ready_without_a_certificate() -> None:
    import json as _json

    from waypoint import admin
    p = proxy()
    srv = admin.AdminServer(admin.routes(p, None))
    r = srv.handle("GET", "/healthz/ready")
    assert r.status == 503 and _json.loads(r.body)["certificate"] is False
    dump = _json.loads(srv.handle("GET", "/config_dump").body)
    assert dump["services"] == ["default/myapp"] and dump["identity"] == "spiffe://cluster.local/ns/default/sa/waypoint"
    assert srv.handle("GET", "/routes").status == 200 and srv.handle("GET", "/certs").status == 200
    assert srv.handle("POST", "/config_dump").status == 405 and srv.handle("GET", "/nope").status == 404


LISTENING = ["--waypoint", "default/waypoint", "--pod-name", "waypoint-0", "--node", "node2", "--listen"]


def free_port() -> int:
    """A loopback port nothing listens on (for a waypoint's HBONE listener)."""
    import socket
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        return free.getsockname()[1]


def test_the_ingress_listeners_take_their_connection_bounds_from_the_flags() -> None:
    """`--max-connections` and `--max-connections-per-source` reach an ingress gateway's listeners
    (a flag left unread would be a silent no-op)."""
    import asyncio

    async def main() -> None:
        s = load(["--waypoint", "ns/gw", "--pod-name", "gw-0", "--node", "node1", "--gateway-class", "ambit",
                  "--ingress-address", "127.0.0.1", "--admin-address", "", "--max-connections", "7",
                  "--max-connections-per-source", "3"])
        p = WaypointProxy(s, WaypointConfig(Waypoint("ns", "gw", "ambit"), "cluster.local"), None)
        await p.start()
        try:
            assert p.ingress is not None
            assert (p.ingress.max_connections, p.ingress.max_per_source) == (7, 3)
        finally:
            await p.ingress.close()

    asyncio.run(main())


def test_the_hbone_listener_takes_its_connection_bound_from_max_connections() -> None:
    """`--max-connections` and `--max-connections-per-identity` reach the listener (a flag left unread would be a silent no-op), and
    /stats reports the connections refused over it."""
    import asyncio
    import json as _json

    from waypoint import admin

    async def main() -> None:
        port = free_port()
        s = load([*LISTENING, f"127.0.0.1:{port}", "--max-connections", "7",
                  "--max-connections-per-identity", "3"])
        p = WaypointProxy(s, WaypointConfig(Waypoint("default", "waypoint"), "cluster.local"), None)
        await p.start()
        try:
            assert p.server is not None and p.server.max_connections == 7
            assert p.server.per_identity is not None and p.server.per_identity.limit == 3
            stats = _json.loads(admin.AdminServer(admin.routes(p, None)).handle("GET", "/stats").body)
            assert stats["overloaded"] == 0
        finally:
            assert p.server is not None
            await p.server.close(grace=0.1)
            assert p.server.sock is not None
            p.server.sock.close()

    asyncio.run(main())


def test_readiness_is_withdrawn_when_the_drain_begins_before_the_listener_closes(ca) -> None:  # noqa: ANN001
    """SIGTERM: the waypoint keeps accepting for `--http-drain-accept` seconds while whoever reads its
    readiness moves away; /healthz/ready must say 503 from the start of that drain (it said 200)."""
    import asyncio
    import json as _json

    from ambit.dataplane.identity import IdentityManager
    from tests.unit.conftest import LocalCAFetcher
    from waypoint import admin

    async def main() -> None:
        port = free_port()
        s = load([*LISTENING, f"127.0.0.1:{port}"])
        ids = IdentityManager(LocalCAFetcher(ca))
        await ids.get(s.identity, 5)
        p = WaypointProxy(s, WaypointConfig(Waypoint("default", "waypoint"), "cluster.local"), ids)
        await p.start()
        srv = admin.AdminServer(admin.routes(p, None))
        assert srv.handle("GET", "/healthz/ready").status == 200
        closing = asyncio.ensure_future(p.close())
        await asyncio.sleep(0)
        # the drain's first step already decides HTTP/1 keep-alive: a request read in the very
        # next I/O poll (uvloop reads sockets before the drain's tasks start) is answered
        # `Connection: close`
        assert p.engine is not None and p.engine.draining
        await asyncio.sleep(0.05)
        assert not closing.done() and p.server is not None and p.server.sock is not None, "still accepting"
        r = srv.handle("GET", "/healthz/ready")
        assert r.status == 503 and _json.loads(r.body)["stopping"] is True
        await closing
        await ids.close()

    asyncio.run(main())


def test_a_tunnel_handshake_that_comes_before_the_waypoints_certificate_waits_for_it(ca) -> None:  # noqa: ANN001
    """The waypoint's HBONE listener, like ztunnel's, picks its certificate in a callback that cannot
    wait: a handshake arriving while its certificate is still being fetched (the CA slow, a new
    replica) was refused. It now waits for the certificate (ambit/dataplane/identity/wait.py)."""
    import asyncio

    from ambit.dataplane import tls
    from ambit.dataplane.identity import IdentityManager
    from tests.unit.conftest import issue, sid
    from tests.unit.dataplane.test_certificate_wait import HeldCA
    from tests.unit.dataplane.test_hbone_pending import wait_for

    async def main() -> None:
        port = free_port()
        s = load([*LISTENING, f"127.0.0.1:{port}"])
        fetcher = HeldCA(ca)
        ids = IdentityManager(fetcher)
        ids.prefetch([s.identity])
        p = WaypointProxy(s, WaypointConfig(Waypoint("default", "waypoint"), "cluster.local"), ids)
        await p.start()
        try:
            ctx = tls.client_context(issue(ca, sid("demo", "client")))
            connecting = asyncio.ensure_future(asyncio.open_connection(
                "127.0.0.1", port, ssl=ctx, server_hostname="waypoint", ssl_handshake_timeout=20))
            assert p.server is not None
            await wait_for(lambda: len(p.server.pending) == 1, "the handshake waiting for the certificate")
            assert not connecting.done()
            fetcher.answer.set()                    # the CA answers
            _r, w = await connecting
            assert tls.peer_identity(w.get_extra_info("ssl_object")).uri == s.identity
            w.transport.abort()
        finally:
            await p.close()
            await ids.close()

    asyncio.run(main())


def test_a_deleted_services_cluster_leaves_the_scrape_and_admin_without_waiting_for_a_request() -> None:
    """Envoy drops the cluster of a deleted Service with its stats: its envoy_cluster_* series and
    its /clusters entry go at the config update, not only once some later request comes along."""
    from prometheus_client import CollectorRegistry, generate_latest

    from waypoint import admin
    reg = CollectorRegistry()
    p = proxy()
    p2 = WaypointProxy(p.settings, p.config, None, registry=reg)
    down, _ = p2.downstream(FRONTEND, "10.0.2.5", "10.96.0.10:80")
    head = RequestHead("GET", "/", "myapp")
    d = p2.decide(head, down)
    assert isinstance(d, Forward) and p2.upstream(d, head, down) is not None
    name = 'cluster_name="outbound|80||myapp.default.svc.cluster.local"'
    assert name in generate_latest(reg).decode()
    p2.config.apply(ConfigUpdate(Service.TYPE, "2", {}, frozenset(), {}))
    assert name not in generate_latest(reg).decode()
    srv = admin.AdminServer(admin.routes(p2, None))
    assert srv.handle("GET", "/clusters").body.strip() in (b"[]", b"[\n]")


def test_an_ejected_endpoint_whose_pod_goes_leaves_no_ejection_behind_without_waiting_for_a_request() -> None:
    """Envoy drops a removed host's outlier state at the membership update. Here it stayed until the
    cluster's next request: the ejection gauge and /clusters kept the gone pod, and a new pod given
    its address in a later update started ejected."""
    import dataclasses

    from ambit.model import TrafficPolicy
    from waypoint.http.attempt import RESPONSE, Outcome
    wr = WaypointRoutes(hostname=SVC.hostname, namespace="default", service="default/myapp", policy=TrafficPolicy(
        outlier_detection=True, consecutive_5xx_errors=1, max_ejection_percent=100))
    p = proxy(routes=(wr,))
    down, _ = p.downstream(FRONTEND, "10.0.2.5", "10.96.0.10:80")
    t = p.upstream(Forward("default/myapp", 80), RequestHead("GET", "/", "myapp"), down)
    assert t is not None and t.cluster is not None
    c, ip = t.cluster, t.address.split(":")[0]
    c.attempt_started(t.address)
    c.attempt_result(t.address, Outcome(RESPONSE, 503))
    c.attempt_ended(t.address)
    assert c.stats()["outlier_detection_ejections_active"] == 1
    gone = dataclasses.replace(SVC, endpoints=[e for e in SVC.endpoints if e.ip != ip])
    p.config.apply(ConfigUpdate(Service.TYPE, "2", {}, frozenset(), {SVC.resource_name: gone}))
    assert list(p.current_clusters()) == [c]
    assert c.stats()["outlier_detection_ejections_active"] == 0 and c.stats()["membership_total"] == 2
    assert t.address not in {e["address"] for e in c.dump()["endpoints"]}  # type: ignore[union-attr]
    p.config.apply(ConfigUpdate(Service.TYPE, "3", {}, frozenset(), {SVC.resource_name: SVC}))   # address reused
    p.current_clusters()
    assert not c.outlier.is_ejected(t.address)  # type: ignore[union-attr]


# -- an ingress gateway in front of a Service bound to a waypoint ------------------------------------

def _waypoint_pod(name: str, ip: str) -> Workload:
    return Workload(uid=f"uid-{name}", name=name, namespace="default", ips=[ip], node="node2",
                    service_account="waypoint", identity="spiffe://cluster.local/ns/default/sa/waypoint",
                    labels={"gateway.networking.k8s.io/gateway-name": "waypoint"}, protocol="HBONE")


WP_READY, WP_STARTING = _waypoint_pod("waypoint-a", "10.0.3.1"), _waypoint_pod("waypoint-b", "10.0.3.2")
# the waypoint's own Service: its EndpointSlice says which of its pods are ready
WP_SVC = Service(name="waypoint", namespace="default", hostname="waypoint.default.svc.cluster.local",
                 vips=["10.96.0.200"], ports=[ServicePort(15008, 15008, "mesh", "TCP")],
                 endpoints=[Endpoint(WP_READY.uid, WP_READY.ips[0]), Endpoint(WP_STARTING.uid, WP_STARTING.ips[0],
                                                                               ready=False)])
OTHER = Service(name="other", namespace="default", hostname="other.default.svc.cluster.local", vips=["10.96.0.11"],
                ports=[ServicePort(80, 8080, "http", "HTTP")], endpoints=[Endpoint(V1.uid, V1.ips[0])],
                waypoint="default/waypoint")
# a pod of no Service bound to a waypoint, and its Service
LONE = Workload(uid="uid-lone", name="lone", namespace="default", ips=["10.0.1.7"], node="node1",
                service_account="lone", identity="spiffe://cluster.local/ns/default/sa/lone", protocol="HBONE",
                services={"default/plain": [80]})
PLAIN = Service(name="plain", namespace="default", hostname="plain.default.svc.cluster.local", vips=["10.96.0.12"],
                ports=[ServicePort(80, 8080, "http", "HTTP")], endpoints=[Endpoint(LONE.uid, LONE.ips[0])])
# a Service without a waypoint over myapp's pods, which myapp's waypoint fronts on port 8080
ALIAS = Service(name="alias", namespace="default", hostname="alias.default.svc.cluster.local", vips=["10.96.0.13"],
                ports=[ServicePort(80, 8080, "http", "HTTP")], endpoints=[Endpoint(V2.uid, V2.ips[0])])


def edge(*services: Service, pods: tuple[Workload, ...] = (WP_READY, WP_STARTING)) -> WaypointProxy:
    """An ingress gateway's proxy (its IngressGateway makes it one: the CLIENT side)."""
    from ambit.model import IngressGateway
    cfg = WaypointConfig(Waypoint("default", "edge"), "cluster.local")
    gw = IngressGateway("edge", "default")
    for t, items in ((Workload.TYPE, [V1, V2, V2B, LONE, *pods]), (Service.TYPE, list(services)),
                     (IngressGateway.TYPE, [gw])):
        cfg.apply(ConfigUpdate(t, "1", {}, frozenset(), {r.resource_name if hasattr(r, "resource_name") else r.uid: r
                                                         for r in items}))
    return WaypointProxy(load(["--waypoint", "default/edge", "--pod-name", "edge-0", "--node", "node1",
                               "--gateway-class", "ambit"]), cfg, None)


CLIENT_DOWN = Downstream(source_ip="198.51.100.7", destination_port=80)


def test_an_ingress_gateway_sends_a_waypointed_service_to_its_waypoints_ready_pod_asking_for_the_vip() -> None:
    """The Service's pods accept tunnels only from its waypoint (ztunnel's enforcement rule), so
    the gateway asks a ready pod of the waypoint for the Service, as a client's ztunnel does; the
    waypoint applies the Service's routes and policy and picks the endpoint."""
    p = edge(SVC, OTHER, PLAIN, ALIAS, WP_SVC)
    head = RequestHead("GET", "/", "myapp")
    targets = {p.upstream(Forward("default/myapp", 80), head, CLIENT_DOWN) for _ in range(20)}
    assert {t.address for t in targets if t is not None} == {"10.0.3.1:80"}     # never the pod not ready yet
    [t] = targets
    assert t is not None and t.key.startswith("10.96.0.10:80 via 10.0.3.1:80/")
    # another Service through the same waypoint pod: another tunnel (its :authority names that Service)
    o = p.upstream(Forward("default/other", 80), head, CLIENT_DOWN)
    assert o is not None and o.address == "10.0.3.1:80" and o.key != t.key and o.key.startswith("10.96.0.11:80 via")
    # a Service without a waypoint: straight to its endpoint
    d = p.upstream(Forward("default/plain", 80), head, CLIENT_DOWN)
    assert d is not None and d.address == "10.0.1.7:8080" and " via " not in d.key
    # ... unless its pod is bound to a waypoint on that port through another Service (its ztunnel
    # admits only that waypoint there): the endpoint, asked of that waypoint's pod
    a = p.upstream(Forward("default/alias", 80), head, CLIENT_DOWN)
    assert a is not None and a.address == "10.0.1.2:8080" and a.key.startswith("10.0.1.2:8080 via 10.0.3.1/")


def test_an_ingress_gateway_never_goes_around_a_waypoint_that_has_no_pod() -> None:
    p = edge(SVC, WP_SVC, pods=())
    assert p.upstream(Forward("default/myapp", 80), RequestHead("GET", "/", "myapp"), CLIENT_DOWN) is None


def test_a_waypoint_sends_to_the_endpoints_itself() -> None:
    p = proxy()
    down, _ = p.downstream(FRONTEND, "10.0.2.5", "10.96.0.10:80")
    t = p.upstream(Forward("default/myapp", 80), RequestHead("GET", "/", "myapp"), down)
    assert t is not None and t.address.endswith(":8080") and " via " not in t.key


def test_through_waypoint_asks_each_pod_for_the_services_first_vip_and_port() -> None:
    [pick] = endpoints.through_waypoint(SVC, 9000, [WP_READY])
    assert (pick.ip, pick.port, pick.authority, pick.protocol, pick.identity) == (
        "10.0.3.1", 9000, "10.96.0.10:9000", "h2", WP_READY.identity)
    assert endpoints.through_waypoint(SVC, 81, [WP_READY]) == []        # not a port of the Service
    headless = Service(name="h", namespace="default", hostname="h.default.svc.cluster.local", ports=[ServicePort(80, 8080, "http", "HTTP")])
    assert endpoints.through_waypoint(headless, 80, [WP_READY]) == []


# -- a waypoint whose routes send to a Service bound to another waypoint -----------------------------

def _other_waypoint_pod() -> Workload:
    return Workload(uid="uid-other-0", name="other-0", namespace="default", ips=["10.0.4.1"], node="node2",
                    service_account="other", identity="spiffe://cluster.local/ns/default/sa/other",
                    labels={"gateway.networking.k8s.io/gateway-name": "other"}, protocol="HBONE")


def test_a_waypoint_sends_a_service_bound_to_another_waypoint_through_it_a_bounded_number_of_times() -> None:
    """The other Service's pods admit only their own waypoint, so this waypoint asks that one for
    the Service (its VIP), counting the hop in the tunnel: a request that has already come through
    MAX_HOPS waypoints (two waypoints whose routes send to each other's Services) goes no further."""
    from waypoint.app import MAX_HOPS, _hops
    far = Service(name="far", namespace="default", hostname="far.default.svc.cluster.local", vips=["10.96.0.30"],
                  ports=[ServicePort(80, 8080, "http", "HTTP")], endpoints=[Endpoint(LONE.uid, LONE.ips[0])],
                  waypoint="default/other")
    p = proxy()
    for t, items in ((Workload.TYPE, [V1, V2, V2B, LONE, _other_waypoint_pod()]), (Service.TYPE, [SVC, far])):
        p.config.apply(ConfigUpdate(t, "2", {}, frozenset(), {r.resource_name if hasattr(r, "resource_name") else r.uid: r
                                                              for r in items}))
    down, _ = p.downstream(FRONTEND, "10.0.2.5", "10.96.0.10:80")
    assert down is not None and down.hops == 0
    head = RequestHead("GET", "/", "myapp")
    t = p.upstream(Forward("default/far", 80), head, down)
    assert t is not None and t.address == "10.0.4.1:80" and t.key == "10.96.0.30:80 via 10.0.4.1:80/http1 for 10.0.2.5 hop 1"
    # its own Service's endpoints: straight to them
    own = p.upstream(Forward("default/myapp", 80), head, down)
    assert own is not None and " via " not in own.key
    # a tunnel that says it came through other waypoints: counted on, and refused at the bound
    chained, _ = p.downstream(FRONTEND, "10.0.2.5", "10.96.0.10:80", hops=1)
    t2 = p.upstream(Forward("default/far", 80), head, chained)
    assert t2 is not None and t2.key.endswith("hop 2")
    looped, _ = p.downstream(FRONTEND, "10.0.2.5", "10.96.0.10:80", hops=MAX_HOPS)
    assert p.upstream(Forward("default/far", 80), head, looped) is None
    assert p.upstream(Forward("default/myapp", 80), head, looped) is not None     # its own: still served
    assert [_hops(v) for v in (None, "", "2", "x", "-1", "999")] == [0, 0, 2, MAX_HOPS, MAX_HOPS, MAX_HOPS]
