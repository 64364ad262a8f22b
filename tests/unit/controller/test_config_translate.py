"""Translation semantics: enrolment, identities, endpoints, authorization shapes, routes."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ambit.model import RESOURCE_TYPES, Authorization, Match, PeerAuthn, Rule, WaypointRoutes, Workload
from controller.translate import Translation, translate
from controller.waypoints.advisories import advisories
from tests.unit.controller.ctl_examples import example_docs


def ns(name: str, **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def pod(name: str, ip: str | None, namespace: str = "demo", labels: dict[str, str] | None = None,
        sa: str | None = None, phase: str = "Running", ports: dict[str, int] | None = None,
        annotations: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase}
    if ip:
        status["podIP"] = ip
        status["podIPs"] = [{"ip": ip}]
    spec = {"nodeName": "node-1", "containers": [{"name": "app", "ports": [
        {"name": n, "containerPort": p} for n, p in (ports or {}).items()]}], **spec}
    if sa:
        spec["serviceAccountName"] = sa
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "uid": f"uid-{name}", "labels": labels or {},
                         "annotations": annotations or {}},
            "spec": spec, "status": status}


def service(name: str, selector: dict[str, str] | None, ports: list[dict[str, Any]], namespace: str = "demo",
            cluster_ip: str = "10.96.0.10", labels: dict[str, str] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"clusterIP": cluster_ip, "ports": ports}
    if selector is not None:
        spec["selector"] = selector
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": namespace, "labels": labels or {}}, "spec": spec}


def by_name(items: list[Any], name: str) -> Any:
    found = [x for x in items if x.name == name]
    assert found, f"{name} not in {[x.name for x in items]}"
    return found[0]


# -- the examples ---------------------------------------------------------------------------------

def test_all_examples_translate_together() -> None:
    objs = [d for _, d in example_docs()] + [
        ns("demo", **{"ambit.io/dataplane-mode": "ambient", "ambit.io/use-waypoint": "waypoint"}),
        ns("default"),
        service("echo", {"app": "echo"}, [{"name": "http", "port": 8080}]),
        service("echo-v1", {"app": "echo", "version": "v1"}, [{"name": "http", "port": 8080}], cluster_ip="10.96.0.11"),
        service("echo-v2", {"app": "echo", "version": "v2"}, [{"name": "http", "port": 8080}], cluster_ip="10.96.0.12"),
        service("myapp", {"app": "myapp"}, [{"name": "http", "port": 80}], namespace="default", cluster_ip="10.96.0.20"),
        pod("echo-v1-a", "10.244.1.10", labels={"app": "echo", "version": "v1"}),
        pod("myapp-1", "10.244.1.20", namespace="default", labels={"app": "myapp", "version": "v1"}, sa="myapp"),
    ]
    t = translate(objs)
    assert t.errors == []
    routes = {r.hostname: r for r in t.waypoint_routes}
    myapp = routes["myapp.default.svc.cluster.local"]
    assert myapp.service == "default/myapp"
    assert [h.source for h in myapp.http] == ["VirtualService/default/myapp", "VirtualService/default/myapp"]
    assert myapp.http[0].matches[0].headers[0].name == "x-canary"
    assert [s.name for s in myapp.subsets] == ["v1", "v2"]
    assert myapp.policy.lb == "LEAST_REQUEST"        # LEAST_CONN is the deprecated spelling
    assert myapp.policy.outlier_detection and myapp.policy.consecutive_5xx_errors == 5
    canary = routes["myapp.example.com"]
    assert [(d.subset, d.weight) for d in canary.http[1].destinations] == [("stable", 90), ("canary", 10)]
    echo = routes["echo.demo.svc.cluster.local"]
    assert echo.waypoint == "demo/waypoint"
    assert [(d.host, d.weight) for d in echo.http[1].destinations] == [
        ("echo-v1.demo.svc.cluster.local", 80), ("echo-v2.demo.svc.cluster.local", 20)]
    assert echo.http[0].matches[0].headers[0].match.value == "true"   # the header match sorts first
    [authz] = t.authorizations
    assert authz.has_l7 and authz.scope == "workload"
    assert authz.rules == [Rule(clauses=[[Match(principals=["cluster.local/ns/default/sa/frontend"])]], has_l7=True)]
    [pa] = t.peer_authns
    assert (pa.mode, pa.root) == ("STRICT", False)
    [tel] = t.telemetry
    assert ([(e.sampling_percent, e.providers) for e in tel.tracing], [e.providers for e in tel.access_logging]) == \
        ([(10.0, ["jaeger"])], [["fluentd"]])
    assert by_name(t.workloads, "myapp-1").identity == "spiffe://cluster.local/ns/default/sa/myapp"


def test_translation_round_trips_through_json() -> None:
    t = _one_of_everything()
    by_type = t.by_type()
    assert set(by_type) == set(RESOURCE_TYPES) and all(by_type[k] for k in by_type)
    for r in t.resources():
        back = type(r).from_dict(json.loads(json.dumps(r.to_dict())))
        assert back == r, type(r).__name__


def _one_of_everything() -> Translation:
    objs = [d for _, d in example_docs()] + [
        ns("demo", **{"ambit.io/dataplane-mode": "ambient"}),
        service("echo", {"app": "echo"}, [{"name": "http", "port": 8080, "targetPort": "web"}]),
        pod("e1", "10.244.1.1", labels={"app": "echo"}, ports={"web": 9000}),
        {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy", "metadata": {"name": "a", "namespace": "demo"},
         "spec": {"rules": [{"from": [{"source": {"namespaces": ["x"]}}], "when": [{"key": "destination.ip", "values": ["10.0.0.1"]}]}]}},
        {"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry", "metadata": {"name": "partner", "namespace": "demo"},
         "spec": {"hosts": ["partner.example"], "ports": [{"number": 443, "name": "https", "protocol": "HTTPS"}],
                  "resolution": "DNS", "location": "MESH_EXTERNAL"}},
        {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule", "metadata": {"name": "cred", "namespace": "demo"},
         "spec": {"host": "partner.example", "trafficPolicy": {"tls": {"mode": "MUTUAL", "credentialName": "partner"}}}},
        {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication", "metadata": {"name": "p", "namespace": "demo"},
         "spec": {"selector": {"matchLabels": {"app": "echo"}}, "portLevelMtls": {8080: {"mode": "DISABLE"}}}},
        {"apiVersion": "security.istio.io/v1", "kind": "RequestAuthentication", "metadata": {"name": "r", "namespace": "demo"},
         "spec": {"targetRefs": [{"kind": "Service", "group": "", "name": "echo"}],
                  "jwtRules": [{"issuer": "https://issuer.example", "jwksUri": "http://keys.example/jwks",
                                "fromHeaders": [{"name": "x-jwt"}], "outputClaimToHeaders": [{"header": "x-sub",
                                                                                              "claim": "sub"}]}]}},
        {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "metadata": {"name": "in", "namespace": "demo"},
         "spec": {"gatewayClassName": "ambit", "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]}},
        {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "in", "namespace": "demo"},
         "spec": {"parentRefs": [{"name": "in"}], "rules": [{"backendRefs": [{"name": "echo", "port": 8080}]}]}},
    ]
    t = translate(objs)
    assert t.errors == []
    return t


# -- workloads ------------------------------------------------------------------------------------

@pytest.mark.parametrize("ns_labels,pod_labels,enrolled", [
    ({"ambit.io/dataplane-mode": "ambient"}, {}, True),
    ({"istio.io/dataplane-mode": "ambient"}, {}, True),
    ({"ambit.io/dataplane-mode": "ambient"}, {"ambit.io/dataplane-mode": "none"}, False),
    ({"istio.io/dataplane-mode": "ambient"}, {"istio.io/dataplane-mode": "none"}, False),
    ({}, {}, False),
    ({}, {"ambit.io/dataplane-mode": "ambient"}, True),         # a pod may opt in on its own, as in Istio
    ({"ambit.io/dataplane-mode": "sidecar"}, {}, False),
])
def test_enrolment(ns_labels: dict, pod_labels: dict, enrolled: bool) -> None:
    t = translate([ns("demo", **ns_labels), pod("a", "10.244.1.1", labels=pod_labels)])
    [w] = t.workloads
    assert w.enrolled is enrolled
    assert w.protocol == ("HBONE" if enrolled else "TCP")


def test_host_network_pods_are_never_enrolled() -> None:
    t = translate([ns("demo", **{"ambit.io/dataplane-mode": "ambient"}), pod("a", "10.0.0.1", hostNetwork=True)])
    assert not t.workloads[0].enrolled


def test_workload_identity_and_lab_annotations() -> None:
    t = translate([
        ns("demo"),
        pod("a", "10.244.1.1", sa="reviews", annotations={"lab.ambit.io/netns": "/run/netns/ambit-p1",
                                                           "lab.ambit.io/cgroup": "/sys/fs/cgroup/ambit/p1"}),
        pod("b", "10.244.1.2"),
    ], trust_domain="example.org")
    a, b = by_name(t.workloads, "a"), by_name(t.workloads, "b")
    assert a == Workload(uid="uid-a", name="a", namespace="demo", ips=["10.244.1.1"], node="node-1",
                         service_account="reviews", identity="spiffe://example.org/ns/demo/sa/reviews",
                         labels={}, enrolled=False, protocol="TCP",
                         annotations={"lab.ambit.io/netns": "/run/netns/ambit-p1",
                                      "lab.ambit.io/cgroup": "/sys/fs/cgroup/ambit/p1"},
                         netns="/run/netns/ambit-p1", cgroup="/sys/fs/cgroup/ambit/p1")
    assert (b.service_account, b.identity) == ("default", "spiffe://example.org/ns/demo/sa/default")


def test_pods_without_ip_or_not_running_are_skipped() -> None:
    t = translate([pod("pending", None, phase="Pending"), pod("noip", None), pod("done", "10.0.0.3", phase="Succeeded"),
                   pod("ok", "10.0.0.4"), pod("pulling", "10.0.0.5", phase="Pending")])
    # a Pending pod with an address is a workload: its init containers connect, the agent captures it
    assert [w.name for w in t.workloads] == ["ok", "pulling"]


def test_a_later_pod_claiming_a_mesh_pods_address_or_uid_is_left_out_and_named() -> None:
    """Found by tests/unit/controller/test_config_fuzz.py: a pod with another mesh pod's IP made
    ztunnel refuse every Workload update ("claimed by more than one mesh workload"), and one with
    another pod's uid (a Workload's name) made the config server refuse the whole snapshot. The
    older pod keeps its address and uid; the later is not applied, and the error names it."""
    def aged(p: dict[str, Any], t: str) -> dict[str, Any]:
        p["metadata"]["creationTimestamp"] = t
        return p
    mesh = ns("demo", **{"ambit.io/dataplane-mode": "ambient"})
    old = aged(pod("old", "10.244.1.10"), "2024-01-01T00:00:00Z")
    same_ip = aged(pod("same-ip", "10.244.1.10"), "2024-01-02T00:00:00Z")
    same_uid = aged(pod("same-uid", "10.244.1.11"), "2024-01-02T00:00:00Z")
    same_uid["metadata"]["uid"] = "uid-old"
    plain = [ns("legacy"), pod("host-a", "10.0.0.1", namespace="legacy"), pod("host-b", "10.0.0.1", namespace="legacy")]
    t = translate([mesh, same_ip, same_uid, old, *plain])
    assert sorted(w.name for w in t.workloads) == ["host-a", "host-b", "old"]     # plain TCP may share one
    assert [(e.ref, e.path) for e in t.errors] == [("Pod/demo/same-ip", "status.podIPs"),
                                                   ("Pod/demo/same-uid", "metadata.uid")]
    assert t.errors[0].reason == ("10.244.1.10 is already the address of mesh Pod demo/old: inbound traffic to it "
                                  "would have two identities, so this pod is not applied")
    assert t.errors[1].reason == '"uid-old" is already the uid of Pod demo/old: this pod is not applied'


def test_waypoint_from_pod_or_namespace_labels() -> None:
    t = translate([
        ns("demo", **{"istio.io/use-waypoint": "wp"}),
        pod("inherits", "10.0.0.1"),
        pod("own", "10.0.0.2", labels={"ambit.io/use-waypoint": "other", "ambit.io/use-waypoint-namespace": "infra"}),
        pod("optout", "10.0.0.3", labels={"ambit.io/use-waypoint": "none"}),
    ])
    assert {w.name: w.waypoint for w in t.workloads} == {"inherits": "demo/wp", "own": "infra/other", "optout": ""}


# -- services -------------------------------------------------------------------------------------

def test_service_endpoints_by_selector_with_named_target_ports() -> None:
    t = translate([
        service("echo", {"app": "echo"}, [{"name": "http", "port": 80, "targetPort": "web"},
                                          {"name": "grpc-api", "port": 9000, "targetPort": 9001}]),
        pod("e1", "10.244.1.1", labels={"app": "echo"}, ports={"web": 8080}),
        pod("e2", "10.244.1.2", labels={"app": "echo"}, ports={"web": 8081}),
        pod("other", "10.244.1.3", labels={"app": "other"}),
        pod("elsewhere", "10.244.2.1", namespace="prod", labels={"app": "echo"}),
    ])
    [svc] = t.services
    assert svc.hostname == "echo.demo.svc.cluster.local" and svc.vips == ["10.96.0.10"]
    assert [(p.port, p.target_port, p.target_port_name, p.protocol) for p in svc.ports] == [
        (80, 8080, "web", "HTTP"), (9000, 9001, "", "GRPC")]
    per_pod = {e.ip: {p.port: p.target_port for p in e.ports} for e in svc.endpoints}
    assert per_pod == {"10.244.1.1": {80: 8080, 9000: 9001}, "10.244.1.2": {80: 8081, 9000: 9001}}
    assert by_name(t.workloads, "e1").services == {"demo/echo": [80, 9000]}
    assert by_name(t.workloads, "other").services == {}
    assert by_name(t.workloads, "elsewhere").services == {}


def test_endpoint_slices_win_over_the_selector() -> None:
    t = translate([
        service("echo", {"app": "echo"}, [{"name": "http", "port": 80, "targetPort": 8080}]),
        pod("e1", "10.244.1.1", labels={"app": "echo"}),
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
         "metadata": {"name": "echo-abc", "namespace": "demo", "labels": {"kubernetes.io/service-name": "echo"}},
         "addressType": "IPv4",
         "endpoints": [{"addresses": ["10.244.9.9"], "conditions": {"ready": False}, "nodeName": "node-9",
                        "targetRef": {"kind": "Pod", "name": "ext", "namespace": "demo", "uid": "uid-ext"}},
                       {"addresses": ["10.244.1.1"], "targetRef": {"kind": "Pod", "name": "e1", "uid": "uid-e1"}}],
         "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]},
    ])
    [svc] = t.services
    assert [(e.ip, e.workload_uid, e.node, e.ready) for e in svc.endpoints] == [
        ("10.244.9.9", "uid-ext", "node-9", False), ("10.244.1.1", "uid-e1", "", True)]
    assert by_name(t.workloads, "e1").services == {"demo/echo": [80]}


def test_headless_and_selectorless_services() -> None:
    t = translate([service("db", {"app": "db"}, [{"port": 5432}], cluster_ip="None"),
                   service("ext", None, [{"port": 443}]), pod("db-0", "10.244.1.5", labels={"app": "db"})])
    db, ext = by_name(t.services, "db"), by_name(t.services, "ext")
    assert db.vips == [] and [e.ip for e in db.endpoints] == ["10.244.1.5"]
    assert ext.endpoints == [] and ext.ports[0].target_port == 443


def test_service_waypoint_from_its_label_or_namespace() -> None:
    t = translate([ns("demo", **{"ambit.io/use-waypoint": "wp"}),
                   service("a", {"app": "a"}, [{"port": 80}]),
                   service("b", {"app": "b"}, [{"port": 80}], labels={"istio.io/use-waypoint": "none"}, cluster_ip="10.96.0.2")])
    assert {s.name: s.waypoint for s in t.services} == {"a": "demo/wp", "b": ""}


# -- authorization --------------------------------------------------------------------------------

def ap(spec: dict, name: str = "p", namespace: str = "demo") -> dict:
    return {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def authz(spec: dict, **kw: Any) -> Authorization:
    t = translate([ap(spec, **kw)], **({"root_namespace": "ambit-system"}))
    assert t.errors == []
    [a] = t.authorizations
    return a


def test_empty_allow_policy_denies_everything() -> None:
    a = authz({})
    assert (a.action, a.rules, a.has_l7, a.scope) == ("ALLOW", [], False, "namespace")


def test_a_single_empty_rule_allows_everything() -> None:
    a = authz({"rules": [{}]})
    assert a.rules == [Rule(clauses=[])]        # a rule with no conditions matches every request


def test_rule_shapes_from_to_when() -> None:
    a = authz({"action": "DENY", "selector": {"matchLabels": {"app": "db"}}, "rules": [{
        "from": [{"source": {"principals": ["cluster.local/ns/web/sa/front"], "notNamespaces": ["test"]}},
                 {"source": {"ipBlocks": ["10.0.0.0/8"], "notIpBlocks": ["10.1.0.0/16"]}}],
        "to": [{"operation": {"ports": ["5432"]}}, {"operation": {"notPorts": ["22"]}}],
        "when": [{"key": "source.namespace", "values": ["web"]}, {"key": "destination.port", "notValues": ["9090"]},
                 {"key": "destination.ip", "values": ["10.96.0.10"]}],
    }]})
    assert (a.action, a.scope, a.selector, a.has_l7) == ("DENY", "workload", {"app": "db"}, False)
    assert a.rules == [Rule(clauses=[
        [Match(principals=["cluster.local/ns/web/sa/front"], not_namespaces=["test"]),
         Match(ip_blocks=["10.0.0.0/8"], not_ip_blocks=["10.1.0.0/16"])],
        [Match(ports=[5432]), Match(not_ports=[22])],
        [Match(namespaces=["web"])],
        [Match(not_ports=[9090])],
        [Match(destination_ips=["10.96.0.10"])],
    ])]


def test_l7_rules_are_kept_verbatim_and_flagged() -> None:
    l7 = {"to": [{"operation": {"methods": ["GET"], "paths": ["/api/*"]}}]}
    l4 = {"from": [{"source": {"namespaces": ["web"]}}]}
    header = {"when": [{"key": "request.headers[x-user]", "values": ["alice"]}]}
    jwt = {"from": [{"source": {"requestPrincipals": ["issuer/subject"]}}]}
    mixed = {"from": [{"source": {"namespaces": ["web"], "requestPrincipals": ["*"]}}],
             "to": [{"operation": {"ports": ["8080"], "methods": ["POST"]}}],
             "when": [{"key": "request.auth.claims[group]", "values": ["admin"]},
                      {"key": "source.ip", "values": ["10.0.0.0/8"]}]}
    a = authz({"rules": [l7, l4, header, jwt, mixed]})
    assert a.has_l7 and a.l7_rules == [l7, header, jwt, mixed]
    # every rule also has its L4 part, HTTP attributes dropped (broader), flagged for ztunnel
    assert a.rules == [
        Rule(clauses=[], has_l7=True),
        Rule(clauses=[[Match(namespaces=["web"])]]),
        Rule(clauses=[], has_l7=True),
        Rule(clauses=[], has_l7=True),
        Rule(clauses=[[Match(namespaces=["web"])], [Match(ports=[8080])], [Match(ip_blocks=["10.0.0.0/8"])]],
             has_l7=True),
    ]


def test_policy_scope() -> None:
    assert authz({}, namespace="ambit-system").scope == "global"
    assert authz({"selector": {"matchLabels": {}}}).scope == "namespace"
    a = authz({"targetRefs": [{"kind": "Service", "group": "", "name": "reviews"}]})
    assert (a.scope, a.target_refs) == ("waypoint", [{"kind": "Service", "group": "", "name": "reviews"}])


def test_service_accounts_and_spiffe_principals() -> None:
    t = translate([ap({"rules": [{"from": [{"source": {"serviceAccounts": ["web/front", "local"]}},
                                            {"source": {"principals": ["spiffe://example.org/ns/a/sa/b"]}}]}]})],
                  trust_domain="example.org")
    [a] = t.authorizations
    assert a.rules[0].clauses[0] == [Match(principals=["example.org/ns/web/sa/front", "example.org/ns/demo/sa/local"]),
                                     Match(principals=["example.org/ns/a/sa/b"])]


def test_trust_domains_become_l4_matches_as_written() -> None:
    """trustDomains, notTrustDomains and `when: source.trustDomain` are L4 (ztunnel enforces them), and
    reach the model as written: the proxies expand them over the mesh's trust domain and aliases,
    as they do principals, so the translation does not depend on the aliases."""
    t = translate([ap({"targetRefs": [{"kind": "Service", "group": "", "name": "reviews"}], "rules": [{
        "from": [{"source": {"trustDomains": ["example.org", "*.corp"], "notTrustDomains": ["legacy*"]}}],
        "when": [{"key": "source.trustDomain", "values": ["*"], "notValues": ["cluster.local"]}],
    }]})], trust_domain="example.org")
    assert t.errors == []
    [a] = t.authorizations
    want = Rule(clauses=[
        [Match(trust_domains=["example.org", "*.corp"], not_trust_domains=["legacy*"])],
        [Match(trust_domains=["*"], not_trust_domains=["cluster.local"])],
    ])
    assert (a.has_l7, a.rules, a.http_rules) == (False, [want], [want])


# -- peer authentication --------------------------------------------------------------------------

def test_peer_authentication_port_level_and_mesh_wide() -> None:
    objs = [
        {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
         "metadata": {"name": "default", "namespace": "ambit-system"}, "spec": {"mtls": {"mode": "STRICT"}}},
        {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
         "metadata": {"name": "db", "namespace": "demo"},
         "spec": {"selector": {"matchLabels": {"app": "db"}}, "mtls": {"mode": "STRICT"},
                  "portLevelMtls": {9187: {"mode": "PERMISSIVE"}, "9188": {"mode": "DISABLE"}}}},
        {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
         "metadata": {"name": "ns-wide", "namespace": "demo"}, "spec": {}},
    ]
    t = translate(objs)
    assert t.peer_authns == [
        PeerAuthn(name="default", namespace="ambit-system", mode="STRICT", root=True),
        PeerAuthn(name="db", namespace="demo", mode="STRICT", selector={"app": "db"},
                  port_modes={9187: "PERMISSIVE", 9188: "DISABLE"}),
        PeerAuthn(name="ns-wide", namespace="demo", mode="UNSET"),
    ]


# -- errors ---------------------------------------------------------------------------------------

def test_a_bad_object_is_skipped_and_reported_the_rest_translates() -> None:
    bad = ap({"action": "PERMIT"}, name="bad")
    t = translate([bad, ap({}, name="good"), pod("a", "10.0.0.1"), {"kind": "Deployment", "metadata": {"name": "x"}}])
    assert [a.name for a in t.authorizations] == ["good"]
    assert [str(e) for e in t.errors] == [
        'AuthorizationPolicy/demo/bad: spec.action: must be one of ALLOW, DENY, AUDIT, CUSTOM, got "PERMIT"']
    assert [w.name for w in t.workloads] == ["a"]


# -- routes ---------------------------------------------------------------------------------------

def vs(name: str, spec: dict, namespace: str = "demo") -> dict:
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def routes_for(objs: list[dict], host: str) -> WaypointRoutes:
    t = translate(objs)
    assert t.errors == []
    return {r.hostname: r for r in t.waypoint_routes}[host]


SVCS = [service("reviews", {"app": "reviews"}, [{"name": "http", "port": 9080}]),
        service("ratings", {"app": "ratings"}, [{"name": "http", "port": 9080}], cluster_ip="10.96.0.11")]


def test_virtual_service_resilience_fields_are_normalised() -> None:
    wr = routes_for(SVCS + [vs("reviews", {"hosts": ["reviews"], "http": [{
        "match": [{"uri": {"prefix": "/api"}, "ignoreUriCase": True, "withoutHeaders": {"x-debug": {}},
                   "queryParams": {"v": {"exact": "2"}}}],
        "route": [{"destination": {"host": "reviews", "subset": "v2", "port": {"number": 9080}}}],
        "timeout": "1.5s", "retries": {"attempts": 3, "perTryTimeout": "300ms", "retryOn": "5xx,connect-failure",
                                       "retryRemoteLocalities": True},
        "fault": {"delay": {"fixedDelay": "2s", "percentage": {"value": 10}}, "abort": {"httpStatus": 503}},
        "mirror": {"host": "ratings"}, "mirrorPercentage": {"value": 5.5},
        "rewrite": {"uri": "/v2/api"}, "headers": {"request": {"set": {"x-a": "1"}, "remove": ["x-b"]}},
    }]})], "reviews.demo.svc.cluster.local")
    [r] = wr.http
    m = r.matches[0]
    assert (m.path.kind, m.path.value, m.path.ignore_case) == ("prefix", "/api", True)
    assert [(h.name, h.match, h.invert) for h in m.headers] == [("x-debug", None, True)]
    assert m.query[0].match.value == "2"
    d = r.destinations[0]
    assert (d.host, d.service, d.subset, d.port, d.weight) == ("reviews.demo.svc.cluster.local", "demo/reviews", "v2", 9080, 100)
    assert r.timeout == 1.5
    assert (r.retries.attempts, r.retries.per_try_timeout, r.retries.retry_on) == (3, 0.3, ["5xx", "connect-failure"])
    assert r.retries.remote_localities          # the waypoint's clusters leave the priorities tried
    # an abort without a percentage is injected into no request, as Istio translates it
    assert (r.fault.delay, r.fault.delay_percent, r.fault.abort_status, r.fault.abort_percent) == (2.0, 10.0, 503, 0.0)
    assert (r.mirrors[0].destination.service, r.mirrors[0].percent) == ("demo/ratings", 5.5)
    assert (r.rewrite.path, r.rewrite.path_mode) == ("/v2/api", "prefix")
    assert (r.headers.request_set, r.headers.request_remove) == ({"x-a": "1"}, ["x-b"])


def test_ingress_only_virtual_services_are_not_for_waypoints() -> None:
    t = translate(SVCS + [vs("ingress", {"hosts": ["reviews"], "gateways": ["istio-system/public"],
                                         "http": [{"route": [{"destination": {"host": "reviews"}}]}]}),
                          vs("both", {"hosts": ["ratings"], "gateways": ["public", "mesh"],
                                      "http": [{"route": [{"destination": {"host": "ratings"}}]}]})])
    assert [r.hostname for r in t.waypoint_routes] == ["ratings.demo.svc.cluster.local"]


def test_destination_rule_subset_policies_merge_over_the_host_policy() -> None:
    wr = routes_for(SVCS + [{
        "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule", "metadata": {"name": "r", "namespace": "demo"},
        "spec": {"host": "reviews.demo.svc.cluster.local",
                 "trafficPolicy": {"loadBalancer": {"simple": "RANDOM"},
                                   "connectionPool": {"tcp": {"maxConnections": 10, "connectTimeout": "250ms"}},
                                   "portLevelSettings": [{"port": {"number": 9080},
                                                          "loadBalancer": {"consistentHash": {"httpHeaderName": "x-user"}}}]},
                 "subsets": [{"name": "v1", "labels": {"version": "v1"}},
                             {"name": "v2", "labels": {"version": "v2"},
                              "trafficPolicy": {"loadBalancer": {"simple": "ROUND_ROBIN"},
                                                "outlierDetection": {"consecutiveGatewayErrors": 3, "interval": "5s"}}}]},
    }], "reviews.demo.svc.cluster.local")
    assert (wr.policy.lb, wr.policy.max_connections, wr.policy.connect_timeout) == ("RANDOM", 10, 0.25)
    assert (wr.port_policies[0].port, wr.port_policies[0].policy.lb, wr.port_policies[0].policy.hash_header) == (
        9080, "CONSISTENT_HASH", "x-user")
    v1, v2 = wr.subsets
    assert (v1.policy.lb, v1.policy.max_connections) == ("RANDOM", 10)
    assert (v2.labels, v2.policy.lb, v2.policy.max_connections) == ({"version": "v2"}, "ROUND_ROBIN", 10)
    assert (v2.policy.outlier_detection, v2.policy.consecutive_gateway_errors, v2.policy.interval,
            v2.policy.base_ejection_time) == (True, 3, 5.0, 30.0)


def test_a_port_level_entry_replaces_the_policy_it_is_in_and_inherits_nothing() -> None:
    """Istio's GetPortLevelTrafficPolicy / MergeSubsetTrafficPolicy (and the DestinationRule CRD:
    "default values will be applied to fields omitted in port-level traffic policies"): port 9080's
    entry sets only a connection pool, so on 9080 the host's RANDOM balancing, its outlier
    detection and its TLS origination are not in force; the other port keeps them. A subset's
    policy still overrides per part, and a subset's own port-level entry replaces all four parts.
    `ambit apply` names what the entry does not inherit."""
    dr = {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule", "metadata": {"name": "r", "namespace": "demo"},
          "spec": {"host": "reviews.demo.svc.cluster.local",
                   "trafficPolicy": {"loadBalancer": {"simple": "RANDOM"}, "tls": {"mode": "SIMPLE"},
                                     "outlierDetection": {"consecutive5xxErrors": 2},
                                     "portLevelSettings": [{"port": {"number": 9080},
                                                            "connectionPool": {"tcp": {"maxConnections": 7}}}]},
                   "subsets": [{"name": "v1", "labels": {"version": "v1"},
                                "trafficPolicy": {"loadBalancer": {"simple": "ROUND_ROBIN"}}},
                               {"name": "v2", "labels": {"version": "v2"},
                                "trafficPolicy": {"portLevelSettings": [{"port": {"number": 9080},
                                                                         "tls": {"mode": "SIMPLE", "sni": "v2.example"}}]}}]}}
    wr = routes_for(SVCS + [dr], "reviews.demo.svc.cluster.local")
    assert (wr.policy.lb, wr.policy.tls_mode, wr.policy.outlier_detection) == ("RANDOM", "SIMPLE", True)
    [port] = wr.port_policies
    assert (port.port, port.policy.max_connections) == (9080, 7)
    assert (port.policy.lb, port.policy.tls_mode, port.policy.outlier_detection) == ("", "", False), \
        "a port-level entry inherits nothing from the host's policy"
    v1, v2 = wr.subsets
    [v1_port] = v1.port_policies
    assert (v1_port.policy.lb, v1_port.policy.max_connections, v1_port.policy.tls_mode) == ("ROUND_ROBIN", 7, ""), \
        "the subset's loadBalancer over the host's port-level entry"
    [v2_port] = v2.port_policies
    assert (v2_port.policy.tls_mode, v2_port.policy.sni, v2_port.policy.max_connections, v2_port.policy.lb) == \
        ("SIMPLE", "v2.example", 0, ""), "the subset's port-level entry replaces all four parts"
    warned = {a.path: a.reason for a in advisories(SVCS + [dr])}
    assert "port 9080 does not inherit loadBalancer, outlierDetection, tls from the trafficPolicy it is in" in \
        warned["spec.trafficPolicy.portLevelSettings[0]"]
    assert "no TLS is originated on that port" in warned["spec.trafficPolicy.portLevelSettings[0]"]


def test_outlier_detection_http_error_codes_reach_every_policy_level() -> None:
    """Sorted and deduplicated; the subset's and port's outlierDetection replace the host's whole
    (Istio's MergeTrafficPolicy), so a level without the list counts 5xx again."""
    wr = routes_for(SVCS + [{
        "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule", "metadata": {"name": "r", "namespace": "demo"},
        "spec": {"host": "reviews.demo.svc.cluster.local",
                 "trafficPolicy": {"outlierDetection": {"outlierDetectionHttpErrorCodes": [503, 429, 503]},
                                   "portLevelSettings": [{"port": {"number": 9080},
                                                          "outlierDetection": {"outlierDetectionHttpErrorCodes": [404]}}]},
                 "subsets": [{"name": "v1", "labels": {"version": "v1"}},
                             {"name": "v2", "labels": {"version": "v2"},
                              "trafficPolicy": {"outlierDetection": {"consecutive5xxErrors": 2}}}]},
    }], "reviews.demo.svc.cluster.local")
    assert wr.policy is not None and wr.policy.outlier_http_error_codes == [429, 503]
    assert wr.port_policies[0].policy.outlier_http_error_codes == [404]
    v1, v2 = wr.subsets
    assert v1.policy is not None and v1.policy.outlier_http_error_codes == [429, 503]
    assert v2.policy is not None and (v2.policy.consecutive_5xx_errors, v2.policy.outlier_http_error_codes) == (2, [])


def test_redirect_prefix_rewrite_replaces_the_matched_prefix() -> None:
    wr = routes_for(SVCS + [vs("reviews", {"hosts": ["reviews"], "http": [
        {"match": [{"uri": {"prefix": "/v1/"}}], "redirect": {"prefixRewrite": "/v2/", "redirectCode": 302}},
        {"redirect": {"uri": "/moved"}}]})], "reviews.demo.svc.cluster.local")
    assert [(r.redirect.path, r.redirect.path_mode, r.redirect.code) for r in wr.http if r.redirect] == [
        ("/v2/", "prefix", 302), ("/moved", "full", 301)]


def httproute(name: str, rules: list[dict], created: str = "2024-01-01T00:00:00Z", **spec: Any) -> dict:
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": name, "namespace": "demo", "creationTimestamp": created},
            "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "reviews", "port": 9080}], "rules": rules,
                     **spec}}


def test_httproute_rules_follow_gateway_api_precedence() -> None:
    wr = routes_for(SVCS + [
        httproute("old", [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                           "backendRefs": [{"name": "reviews", "port": 9080}]}], created="2024-01-01T00:00:00Z"),
        httproute("new", [
            {"matches": [{"path": {"type": "PathPrefix", "value": "/api"}},
                         {"path": {"type": "Exact", "value": "/login"}},
                         {"path": {"type": "PathPrefix", "value": "/api"}, "headers": [{"name": "X-Beta", "value": "1"}]}],
             "filters": [{"type": "RequestHeaderModifier", "requestHeaderModifier": {"add": [{"name": "x-r", "value": "new"}]}}],
             "backendRefs": [{"name": "ratings", "port": 9080, "weight": 3}, {"name": "reviews", "port": 9080}],
             "timeouts": {"request": "10s"}},
            {"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
             "filters": [{"type": "RequestRedirect", "requestRedirect": {"scheme": "https", "statusCode": 301}}]},
        ], created="2024-06-01T00:00:00Z"),
    ], "reviews.demo.svc.cluster.local")
    order = [(r.source, r.matches[0].path.kind, r.matches[0].path.value, len(r.matches[0].headers)) for r in wr.http]
    assert order == [
        ("HTTPRoute/demo/new", "exact", "/login", 0),
        ("HTTPRoute/demo/new", "path_prefix", "/api", 1),
        ("HTTPRoute/demo/new", "path_prefix", "/api", 0),
        ("HTTPRoute/demo/old", "path_prefix", "/", 0),     # same match: the older route wins
        ("HTTPRoute/demo/new", "path_prefix", "/", 0),
    ]
    api = wr.http[1]
    assert api.matches[0].headers[0].name == "x-beta" and api.matches[0].port == 9080
    assert [(d.service, d.weight) for d in api.destinations] == [("demo/ratings", 3), ("demo/reviews", 1)]
    assert (api.timeout, api.headers.request_add) == (10.0, {"x-r": "new"})
    redirect = wr.http[4]
    assert (redirect.redirect.scheme, redirect.redirect.code, redirect.destinations) == ("https", 301, [])


def test_grpcroute_methods_become_paths() -> None:
    grpc = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GRPCRoute",
            "metadata": {"name": "g", "namespace": "demo"},
            "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "reviews"}],
                     "rules": [{"matches": [{"method": {"service": "pkg.Reviews", "method": "Get"}},
                                            {"method": {"service": "pkg.Admin"}}],
                                "backendRefs": [{"name": "ratings", "port": 9080}]}]}}
    wr = routes_for(SVCS + [grpc], "reviews.demo.svc.cluster.local")
    assert [(r.grpc, r.matches[0].path.kind, r.matches[0].path.value) for r in wr.http] == [
        (True, "exact", "/pkg.Reviews/Get"), (True, "prefix", "/pkg.Admin/")]


def test_a_grpc_regex_method_match_keeps_an_alternation_within_its_part() -> None:
    """GRPCMethodMatch's RegularExpression `service` and `method` are each a regex of its own part:
    `method: "Get|List"` is the method Get or List of that service. Written bare into one
    `/service/method` regex, the alternation took the whole path: `/pkg.Svc/List` did not match."""
    from ambit.regex import compile_re2, full_match
    grpc = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GRPCRoute",
            "metadata": {"name": "g", "namespace": "demo"},
            "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "reviews"}],
                     "rules": [{"matches": [{"method": {"type": "RegularExpression", "service": "pkg\\.Svc|pkg\\.Old",
                                                        "method": "Get|List"}}],
                                "backendRefs": [{"name": "ratings", "port": 9080}]}]}}
    path = routes_for(SVCS + [grpc], "reviews.demo.svc.cluster.local").http[0].matches[0].path
    assert path.kind == "regex"
    rx = compile_re2(path.value)
    assert [p for p in ("/pkg.Svc/Get", "/pkg.Svc/List", "/pkg.Old/List", "/pkg.Svc/Put", "/other.Svc/Get", "List",
                        "/pkg.Svc") if full_match(rx, p)] == ["/pkg.Svc/Get", "/pkg.Svc/List", "/pkg.Old/List"]


WAYPOINT_WP = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "metadata": {"name": "wp", "namespace": "demo"},
               "spec": {"gatewayClassName": "ambit-waypoint", "listeners": [{"name": "mesh", "port": 15008,
                                                                             "protocol": "HBONE"}]}}


def test_routes_attached_to_a_waypoint_gateway_apply_to_its_services() -> None:
    objs = [ns("demo", **{"ambit.io/use-waypoint": "wp"}), *SVCS, WAYPOINT_WP,
            {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "all", "namespace": "demo"},
             "spec": {"parentRefs": [{"name": "wp"}], "rules": [{"backendRefs": [{"name": "reviews", "port": 9080}]}]}}]
    t = translate(objs)
    assert sorted(r.hostname for r in t.waypoint_routes) == ["ratings.demo.svc.cluster.local",
                                                             "reviews.demo.svc.cluster.local"]
    assert all(r.waypoint == "demo/wp" for r in t.waypoint_routes)


def test_traffic_distribution_is_read_as_istio_reads_it() -> None:
    """spec.trafficDistribution first (PreferClose and PreferSameZone mean the same), then the
    Service's networking.istio.io/traffic-distribution annotation (any case), then its namespace's;
    a spec value Ambit does not know falls through to the annotations, an annotation value it does
    not know means none."""
    def svc_(name: str, ip: str, spec: str | None = None, anno: str | None = None) -> dict[str, Any]:
        s = service(name, {"app": name}, [{"name": "http", "port": 80}], cluster_ip=ip)
        if spec is not None:
            s["spec"]["trafficDistribution"] = spec
        if anno is not None:
            s["metadata"]["annotations"] = {"networking.istio.io/traffic-distribution": anno}
        return s
    space = ns("demo", **{"ambit.io/dataplane-mode": "ambient"})
    space["metadata"]["annotations"] = {"networking.istio.io/traffic-distribution": "PreferSameNode"}
    other = ns("other")
    objs = [space, other, svc_("close", "10.96.0.20", "PreferClose"), svc_("zone", "10.96.0.21", "PreferSameZone"),
            svc_("node", "10.96.0.22", "PreferSameNode", "PreferClose"), svc_("anno", "10.96.0.23", None, "preferclose"),
            svc_("newer", "10.96.0.24", "PreferSameRack", "PreferSameZone"), svc_("typo", "10.96.0.25", None, "nearby"),
            svc_("inherits", "10.96.0.26"),
            service("plain", {"app": "plain"}, [{"name": "http", "port": 80}], namespace="other", cluster_ip="10.96.0.27")]
    got = {s.name: s.traffic_distribution for s in translate(objs).services}
    assert got == {"close": "PreferSameZone", "zone": "PreferSameZone", "node": "PreferSameNode",
                   "anno": "PreferSameZone", "newer": "PreferSameZone", "typo": "", "inherits": "PreferSameNode",
                   "plain": ""}


def test_an_unready_pod_is_an_unready_endpoint_unless_the_service_publishes_not_ready_addresses() -> None:
    """As the EndpointSlice controller marks them (endpoints from the selector: the lab, or before
    the slices arrive): a pod whose Ready condition is False is not ready, except for a Service with
    publishNotReadyAddresses (a StatefulSet's peer discovery), whose pods are all ready."""
    starting = pod("db-0", "10.210.1.40", labels={"app": "db"})
    starting["status"]["conditions"] = [{"type": "Ready", "status": "False"}]
    peers = service("db-peers", {"app": "db"}, [{"name": "tcp", "port": 5432}], cluster_ip="10.96.0.40")
    peers["spec"]["publishNotReadyAddresses"] = True
    objs = [ns("demo"), starting, service("db", {"app": "db"}, [{"name": "tcp", "port": 5432}], cluster_ip="10.96.0.41"),
            peers]
    got = {s.name: [e.ready for e in s.endpoints] for s in translate(objs).services}
    assert got == {"db": [False], "db-peers": [True]}


def test_internal_traffic_policy_local_reaches_the_model_and_cluster_is_the_default() -> None:
    local = service("agent", {"app": "agent"}, [{"name": "http", "port": 80}])
    local["spec"]["internalTrafficPolicy"] = "Local"
    objs = [ns("demo", **{"ambit.io/dataplane-mode": "ambient"}), local,
            service("web", {"app": "web"}, [{"name": "http", "port": 80}], cluster_ip="10.96.0.11")]
    tr = translate(objs)
    assert by_name(tr.services, "agent").node_local is True
    assert by_name(tr.services, "web").node_local is False
