"""ServiceEntry: Istio's documented shapes are accepted, what Ambit does not build is refused by
name, and each host becomes a registry Service that ztunnel and waypoints route by."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from ambit.model import Service
from controller.kinds import unsupported_kind
from controller.translate import translate
from controller.validation import validate_object

# Shapes from Istio's ServiceEntry reference and egress tasks (istio.io/latest/docs/reference/config/
# networking/service-entry/, tasks/traffic-management/egress/).
ISTIO_SAMPLES = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: external-svc-https, namespace: demo}
spec:
  hosts: [api.dropboxapi.com, www.googleapis.com]
  location: MESH_EXTERNAL
  ports: [{number: 443, name: https, protocol: TLS}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: external-svc-mongocluster, namespace: demo}
spec:
  hosts: [mymongodb.somedomain]
  addresses: [192.192.192.192/24]
  ports: [{number: 27018, name: mongodb, protocol: MONGO}]
  location: MESH_INTERNAL
  resolution: STATIC
  endpoints: [{address: 2.2.2.2}, {address: 3.3.3.3}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: external-svc-wikipedia, namespace: demo}
spec:
  hosts: ["*.wikipedia.org"]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: NONE
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: external-svc-dns, namespace: demo}
spec:
  hosts: [foo.bar.com]
  location: MESH_EXTERNAL
  ports: [{number: 443, name: https, protocol: HTTPS}]
  resolution: DNS
  endpoints:
  - address: us.foo.bar.com
    ports: {https: 8443}
  - address: uk.foo.bar.com
    ports: {https: 9443}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: httpbin-ext, namespace: demo}
spec:
  hosts: [httpbin.org]
  ports: [{number: 80, name: http, protocol: HTTP}, {number: 443, name: tls, protocol: TLS}]
  resolution: DNS
  exportTo: ["."]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: cnn, namespace: demo, labels: {istio.io/use-waypoint: waypoint,
                                               istio.io/use-waypoint-namespace: istio-egress}}
spec:
  hosts: [edition.cnn.com]
  addresses: [240.240.0.10]
  ports: [{number: 80, name: http-port, protocol: HTTP, targetPort: 8080}]
  resolution: STATIC
  endpoints: [{address: 198.51.100.7, weight: 3, labels: {version: v2}}, {address: 198.51.100.8}]
"""


def samples() -> list[dict[str, Any]]:
    return list(yaml.safe_load_all(ISTIO_SAMPLES))


def se(spec: dict[str, Any], name: str = "ext", ns: str = "demo", **labels: str) -> dict[str, Any]:
    return {"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
            "metadata": {"name": name, "namespace": ns, "labels": labels}, "spec": spec}


def errors_of(obj: dict[str, Any]) -> list[str]:
    return [f"{e.path}: {e.reason}" for e in validate_object(obj)]


def test_istios_documented_service_entries_are_accepted_and_no_longer_an_unsupported_kind() -> None:
    assert unsupported_kind("networking.istio.io/v1", "ServiceEntry") is None
    for doc in samples():
        assert errors_of(doc) == [], doc["metadata"]["name"]
    ambit = dict(samples()[2], apiVersion="networking.ambit.io/v1")
    assert errors_of(ambit) == []


@pytest.mark.parametrize("spec, path, reason", [
    ({"hosts": ["a.example"], "resolution": "STATIC", "workloadSelector": {"labels": {"app": "x"}},
      "endpoints": [{"address": "1.2.3.4"}]},
     "spec.workloadSelector", "only one of workloadSelector or endpoints can be set"),
    ({"hosts": ["a.example"], "workloadSelector": {"labels": {"app": "*"}}},
     "spec.workloadSelector.labels[app]", "wildcard is not supported in selector"),
    ({"hosts": ["a.example"], "workloadSelector": {"labels": {"*": "x"}}},
     "spec.workloadSelector.labels[*]", "wildcard is not supported in selector"),
    ({"hosts": ["a.example"], "workloadSelector": {"labels": {"": "x"}}},
     "spec.workloadSelector.labels[]", "empty key is not supported in selector"),
    ({"hosts": ["a.example"], "workloadSelector": {"labels": {"app": "x" * 64}}},
     "spec.workloadSelector.labels[app]", "at most 63 characters"),
    ({"hosts": ["a.example"], "workloadSelector": {"matchLabels": {"app": "x"}}},
     "spec.workloadSelector.matchLabels", ""),
    ({"hosts": ["a.example"], "subjectAltNames": ["x"]}, "spec.subjectAltNames", "not supported by Ambit"),
    ({"hosts": ["a.example"], "resolution": "DYNAMIC_DNS"}, "spec.resolution", "DYNAMIC_DNS is not supported"),
    ({"hosts": ["a.example"], "resolution": "DNS", "addresses": ["10.0.0.0/8"]}, "spec.addresses",
     "CIDR addresses are allowed only for NONE/STATIC"),
    ({"hosts": ["a.example"], "endpoints": [{"address": "1.2.3.4"}]}, "spec.endpoints",
     "NONE mode cannot set endpoints"),
    ({"hosts": ["a.example"], "resolution": "STATIC", "endpoints": [{"address": "db.example"}]},
     "spec.endpoints[0].address", "STATIC resolution needs an IP address"),
    ({"hosts": ["a.example"], "resolution": "STATIC"}, "spec.endpoints", "STATIC resolution needs endpoints"),
    ({"hosts": ["a.example"], "resolution": "DNS", "endpoints": [{"address": "unix:///sock"}]},
     "spec.endpoints[0].address", "Unix domain socket endpoints are not supported"),
    ({"hosts": ["a.example"], "resolution": "DNS", "endpoints": [{"address": "x.example", "network": "n1"}]},
     "spec.endpoints[0].network", "not supported by Ambit"),
    ({"hosts": ["a.example", "b.example"], "resolution": "DNS", "ports": [{"number": 5432, "name": "pg",
                                                                          "protocol": "TCP"}]},
     "spec.ports[0].protocol", "multiple hosts provided with non-HTTP, non-TLS ports"),
    ({"hosts": ["*"]}, "spec.hosts[0]", 'invalid host "*"'),
    # a host with a port was accepted and matched no request and no DNS query (Istio refuses it)
    ({"hosts": ["api.example.com:443"], "ports": [{"number": 443, "name": "https", "protocol": "TLS"}]},
     "spec.hosts[0]", "a host has no port"),
    ({"hosts": ["api.example.com?x"]}, "spec.hosts[0]", "must be a DNS name"),
    ({"hosts": ["a.example"], "ports": [{"number": 53, "name": "dns", "protocol": "udp"}]},
     "spec.ports[0].protocol", "UDP is not supported by Ambit"),
    ({"hosts": ["a.example"], "ports": [{"number": 53, "name": "x", "protocol": "QUIC"}]},
     "spec.ports[0].protocol", "unsupported protocol: QUIC"),
    ({"hosts": ["a.example"], "ports": [{"number": 80, "name": "a"}, {"number": 80, "name": "b"}]},
     "spec.ports[1].number", "cannot be duplicated"),
    ({"hosts": ["a.example"], "resolution": "DNS",
      "endpoints": [{"address": "x.example", "ports": {"nope": 8080}}], "ports": [{"number": 80, "name": "http"}]},
     "spec.endpoints[0].ports.nope", "names no port"),
    ({"hosts": []}, "spec.hosts", ""),
    ({"hosts": ["a.example"], "resolution": "DNS", "endpoints": [{"address": "x.example", "locality": "r1//s1"}]},
     "spec.endpoints[0].locality", "must be region[/zone[/subzone]]"),
    ({"hosts": ["a.example"], "resolution": "DNS", "endpoints": [{"address": "x.example", "locality": "a/b/c/d"}]},
     "spec.endpoints[0].locality", "must be region[/zone[/subzone]]"),
])
def test_what_is_not_built_or_ambiguous_is_refused_naming_the_field(spec: dict, path: str, reason: str) -> None:
    errs = errors_of(se(spec))
    assert any(e.startswith(f"{path}: ") and reason in e for e in errs), errs


def services(objs: list[dict[str, Any]]) -> dict[str, Service]:
    tr = translate(objs)
    assert tr.errors == []
    return {s.resource_name: s for s in tr.services if s.kind == "ServiceEntry"}


def test_each_host_is_a_registry_service_named_by_the_host() -> None:
    got = services(samples())
    assert set(got) == {"demo/api.dropboxapi.com", "demo/www.googleapis.com", "demo/mymongodb.somedomain",
                        "demo/*.wikipedia.org", "demo/foo.bar.com", "demo/httpbin.org", "demo/edition.cnn.com"}
    drop = got["demo/api.dropboxapi.com"]
    assert (drop.hostname, drop.location, drop.resolution) == ("api.dropboxapi.com", "MESH_EXTERNAL", "DNS")
    assert [(e.ip, e.hostname) for e in drop.endpoints] == [("", "api.dropboxapi.com")], "DNS resolves the host"
    mongo = got["demo/mymongodb.somedomain"]
    assert (mongo.vips, mongo.subnets, mongo.location) == ([], ["192.192.192.192/24"], "MESH_INTERNAL")
    assert [e.ip for e in mongo.endpoints] == ["2.2.2.2", "3.3.3.3"]
    assert got["demo/*.wikipedia.org"].endpoints == [] and got["demo/*.wikipedia.org"].resolution == "NONE"
    foo = got["demo/foo.bar.com"]
    assert [(e.hostname, [(p.port, p.target_port) for p in e.ports]) for e in foo.endpoints] == [
        ("us.foo.bar.com", [(443, 8443)]), ("uk.foo.bar.com", [(443, 9443)])]
    assert got["demo/httpbin.org"].export_to == ["demo"] and not got["demo/httpbin.org"].visible_to("other")
    assert got["demo/api.dropboxapi.com"].export_to == [] and drop.visible_to("other")
    cnn = got["demo/edition.cnn.com"]
    assert cnn.waypoint == "istio-egress/waypoint" and cnn.vips == ["240.240.0.10"]
    assert [(p.port, p.target_port, p.protocol) for p in cnn.ports] == [(80, 8080, "HTTP")]
    assert [(e.ip, e.weight, e.labels) for e in cnn.endpoints] == [("198.51.100.7", 3, {"version": "v2"}),
                                                                   ("198.51.100.8", 0, {})]
    assert Service.from_dict(json.loads(json.dumps(cnn.to_dict()))) == cnn, "travels the config stream"


def test_istio_leniencies_protocol_case_sniffing_by_name_and_addresses_of_several_hosts() -> None:
    sniffed = se({"hosts": ["c.example"], "ports": [{"number": 80, "name": "http-web", "protocol": ""},
                                                    {"number": 81, "name": "web", "protocol": ""}]}, name="c")
    entry = se({"hosts": ["a.example", "b.example"], "addresses": ["240.240.0.5"], "resolution": "STATIC",
                "endpoints": [{"address": "198.51.100.7"}],
                "ports": [{"number": 443, "name": "https", "protocol": "tls"},
                          {"number": 8080, "name": "api", "protocol": "http"}]})
    assert errors_of(entry) == [] and errors_of(sniffed) == []
    got = services([entry, sniffed])
    a, b = got["demo/a.example"], got["demo/b.example"]
    assert [(p.port, p.protocol) for p in a.ports] == [(443, "TCP"), (8080, "HTTP")]
    assert [(p.port, p.protocol) for p in got["demo/c.example"].ports] == [(80, "HTTP"), (81, "TCP")]
    assert (a.vips, b.vips) == (["240.240.0.5"], []), "an address is one host to ztunnel: the first"
    assert b.endpoints == a.endpoints


def test_an_entry_with_an_address_another_service_holds_is_not_applied_and_reported() -> None:
    """Not half-applied: the whole entry is left out (its other address and its host included), and
    the error says so; the same error refuses it in `ambit apply` and marks its status in a cluster."""
    k8s = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "demo"},
           "spec": {"clusterIP": "10.96.0.5", "ports": [{"port": 80}], "selector": {"app": "web"}}}
    clash = se({"hosts": ["a.example"], "addresses": ["192.0.2.9", "10.96.0.5"],
                "ports": [{"number": 80, "name": "http"}]})
    later = se({"hosts": ["b.example"], "addresses": ["192.0.2.9"], "ports": [{"number": 80, "name": "http"}]},
               name="later")
    tr = translate([k8s, clash, later])
    assert [(s.name, s.vips) for s in tr.services if s.kind == "ServiceEntry"] == [("b.example", ["192.0.2.9"])]
    assert [(e.ref, e.path) for e in tr.errors] == [("ServiceEntry/demo/ext", "spec.addresses[1]")]
    assert tr.errors[0].reason == ("10.96.0.5 is already the address of demo/web: a connection to it could not tell "
                                   "the two apart, so this ServiceEntry is not applied (none of it)")


def test_an_entry_whose_host_names_a_service_of_its_namespace_already_is_not_applied_and_reported() -> None:
    """Found by tests/unit/controller/test_config_fuzz.py: an entry host "web" beside the Service
    demo/web, or a host two entries of a namespace list, made two registry Services of one name;
    the config server refused the whole snapshot ("appears more than once"), so no change anywhere in
    the mesh was served until it was taken back. Now the later entry is left out whole and named,
    as for an address another Service holds."""
    k8s = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "demo"},
           "spec": {"clusterIP": "10.96.0.5", "ports": [{"port": 80}], "selector": {"app": "web"}}}
    port = [{"number": 80, "name": "http", "protocol": "HTTP"}]
    clash = se({"hosts": ["a.example", "web"], "ports": port, "resolution": "DNS"}, name="clash")
    first = se({"hosts": ["b.example"], "ports": port, "resolution": "DNS"}, name="first")
    second = se({"hosts": ["c.example", "b.example"], "ports": port, "resolution": "DNS"}, name="second")
    elsewhere = se({"hosts": ["b.example"], "ports": port, "resolution": "DNS"}, name="second", ns="other")
    tr = translate([k8s, clash, first, second, elsewhere])
    assert sorted(s.resource_name for s in tr.services if s.kind == "ServiceEntry") == ["demo/b.example",
                                                                                        "other/b.example"]
    assert [(e.ref, e.path, e.reason) for e in tr.errors] == [
        ("ServiceEntry/demo/clash", "spec.hosts[1]", '"web" is already the name of Service demo/web in namespace '
         "demo: the registry holds one service per name in a namespace, so this ServiceEntry is not applied "
         "(none of it)"),
        ("ServiceEntry/demo/second", "spec.hosts[1]", '"b.example" is already a host of ServiceEntry demo/first in '
         "namespace demo: the registry holds one service per name in a namespace, so this ServiceEntry is not "
         "applied (none of it)")]


def test_the_oldest_entry_keeps_a_host_or_address_a_newer_one_names_too() -> None:
    """As Istio's registry (push_context.go: "pick the first Service, which is the oldest ... newly
    created Services cannot take ownership unexpectedly"): an entry created later is the one left
    out, whatever its name, so applying a new entry never takes a host or an address from one in
    force. Names decide only between entries of one creation time."""
    port = [{"number": 80, "name": "http", "protocol": "HTTP"}]
    old = se({"hosts": ["b.example"], "addresses": ["192.0.2.7"], "ports": port}, name="zz-old")
    new = se({"hosts": ["b.example"], "ports": port, "resolution": "DNS"}, name="aa-new")
    newer = se({"hosts": ["c.example"], "addresses": ["192.0.2.7"], "ports": port}, name="ab-newer")
    old["metadata"]["creationTimestamp"] = "2026-01-01T00:00:00Z"
    new["metadata"]["creationTimestamp"] = "2026-06-01T00:00:00Z"
    newer["metadata"]["creationTimestamp"] = "2026-06-01T01:00:00+00:00"
    tr = translate([new, newer, old])
    assert [s.resource_name for s in tr.services if s.kind == "ServiceEntry"] == ["demo/b.example"]
    assert [(e.ref, e.path) for e in tr.errors] == [("ServiceEntry/demo/aa-new", "spec.hosts[0]"),
                                                    ("ServiceEntry/demo/ab-newer", "spec.addresses[0]")]
    assert "a host of ServiceEntry demo/zz-old" in tr.errors[0].reason
    assert "ServiceEntry demo/zz-old" in tr.errors[1].reason


def test_a_host_listed_twice_in_one_entry_is_one_host() -> None:
    """Found by the fuzzer too: the same host twice in `hosts` (Istio accepts it) made two
    registry Services of one name, and the config server refused the snapshot."""
    entry = se({"hosts": ["a.example", "b.example", "a.example"], "addresses": ["192.0.2.9"],
                "ports": [{"number": 80, "name": "http"}]})
    got = services([entry])
    assert [(k, s.vips) for k, s in got.items()] == [("demo/a.example", ["192.0.2.9"]), ("demo/b.example", [])]


def test_policies_targeting_a_service_entry_bind_to_each_of_its_hosts() -> None:
    entry = se({"hosts": ["a.example", "b.example"], "ports": [{"number": 80, "name": "http"}]}, name="ext")
    ap = {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
          "metadata": {"name": "egress", "namespace": "demo"},
          "spec": {"targetRefs": [{"kind": "ServiceEntry", "group": "networking.istio.io", "name": "ext"},
                                  {"kind": "ServiceEntry", "group": "networking.istio.io", "name": "missing"}],
                   "action": "ALLOW", "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/demo/sa/a"]}}]}]}}
    (a,) = translate([entry, ap]).authorizations
    assert a.scope == "waypoint"
    assert a.target_refs == [{"group": "", "kind": "Service", "name": h, "namespace": "demo"}
                             for h in ("a.example", "b.example")]


def test_advisories_for_service_entry_targets_and_tls_origination() -> None:
    from controller.waypoints.advisories import advisories
    gw = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
          "metadata": {"name": "waypoint", "namespace": "istio-egress"},
          "spec": {"gatewayClassName": "istio-waypoint",
                   "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}}
    bound = se({"hosts": ["a.example"], "ports": [{"number": 80, "name": "http"}]}, name="bound",
               **{"istio.io/use-waypoint": "waypoint", "istio.io/use-waypoint-namespace": "istio-egress"})
    unbound = se({"hosts": ["b.example"], "ports": [{"number": 80, "name": "http"}]}, name="unbound")

    def ap(target: str) -> dict[str, Any]:
        return {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                "metadata": {"name": f"ap-{target}", "namespace": "demo"},
                "spec": {"targetRefs": [{"kind": "ServiceEntry", "group": "networking.istio.io", "name": target}]}}

    def dr(host: str, tls: dict[str, Any]) -> dict[str, Any]:
        return {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
                "metadata": {"name": f"dr-{host}", "namespace": "demo"},
                "spec": {"host": host, "trafficPolicy": {"tls": tls}}}

    found = {(a.ref, a.path): a.reason for a in advisories([
        gw, bound, unbound, ap("bound"), ap("unbound"), ap("missing"),
        dr("a.example", {"mode": "SIMPLE", "caCertificates": "/ca.pem"}),
        dr("elsewhere.example", {"mode": "SIMPLE"})])}
    assert ("AuthorizationPolicy/demo/ap-bound", "spec.targetRefs[0]") not in found
    assert "bound to no waypoint" in found[("AuthorizationPolicy/demo/ap-unbound", "spec.targetRefs[0]")]
    assert "no ServiceEntry" in found[("AuthorizationPolicy/demo/ap-missing", "spec.targetRefs[0]")]
    assert ("DestinationRule/demo/dr-a.example", "spec.trafficPolicy.tls") not in found, "originated: applied"
    assert "not applied" in found[("DestinationRule/demo/dr-elsewhere.example", "spec.trafficPolicy.tls")]


def test_endpoint_weights_behind_a_waypoint_are_honoured_so_not_warned_about() -> None:
    """The waypoint balances by them now (waypoint/traffic/cluster.py, as Envoy); they were warned
    as "not enforced yet behind waypoint" before."""
    from controller.waypoints.advisories import advisories
    labels = {"istio.io/use-waypoint": "waypoint"}
    none = se({"hosts": ["a.example"], "ports": [{"number": 80, "name": "http"}]}, name="none", **labels)
    weighted = se({"hosts": ["b.example"], "resolution": "STATIC", "ports": [{"number": 80, "name": "http"}],
                   "endpoints": [{"address": "198.51.100.7", "weight": 2}]}, name="weighted", **labels)
    plain = se({"hosts": ["c.example"], "resolution": "STATIC", "ports": [{"number": 80, "name": "http"}],
                "endpoints": [{"address": "198.51.100.7", "weight": 2}]}, name="plain")
    found = {(a.ref, a.path) for a in advisories([none, weighted, plain])
             if "istiod warns" not in a.reason}     # (`none`'s port without protocol or address: istiod's)
    assert not [f for f in found if f[0].startswith("ServiceEntry/")], found


def test_a_waypoint_of_another_namespace_is_used_only_when_it_admits_the_namespace() -> None:
    """Istio: a cross-namespace waypoint takes a namespace's traffic only when its HBONE listener's
    allowedRoutes.namespaces admits it (Same by default). Before, any namespace could bind its
    ServiceEntry, Services or pods to another team's waypoint (say the shared egress waypoint, whose
    address external firewalls trust) by a label."""
    from controller.translate import translate

    def waypoint(allowed: dict[str, Any] | None) -> dict[str, Any]:
        ln: dict[str, Any] = {"name": "mesh", "port": 15008, "protocol": "HBONE"}
        if allowed is not None:
            ln["allowedRoutes"] = {"namespaces": allowed}
        return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                "metadata": {"name": "waypoint", "namespace": "istio-egress"},
                "spec": {"gatewayClassName": "istio-waypoint", "listeners": [ln]}}

    use = {"istio.io/use-waypoint": "waypoint", "istio.io/use-waypoint-namespace": "istio-egress"}
    entry = se({"hosts": ["api.example"], "addresses": ["240.240.0.30"], "resolution": "STATIC",
                "endpoints": [{"address": "198.51.100.9"}], "ports": [{"number": 80, "name": "http"}]},
               name="api", ns="tenant", **use)
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "tenant", "labels": use},
           "spec": {"clusterIP": "10.96.0.40", "ports": [{"port": 80}]}}
    tenant = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "tenant", "labels": {"team": "a"}}}
    for allowed, bound in ((None, False), ({"from": "Same"}, False), ({"from": "All"}, True),
                           ({"from": "Selector", "selector": {"matchLabels": {"team": "a"}}}, True),
                           ({"from": "Selector", "selector": {"matchLabels": {"team": "b"}}}, False)):
        t = translate([tenant, waypoint(allowed), entry, svc])
        got = {s.name: s.waypoint for s in t.services if s.namespace == "tenant"}
        want = "istio-egress/waypoint" if bound else ""
        assert got == {"api.example": want, "web": want}, (allowed, got)
        notes = [n for n in t.parents.notices if n.cause == "WaypointNotAllowed"]
        assert bool(notes) != bound and all("does not admit namespace tenant" in n.reason for n in notes), notes


def test_endpoint_locality_and_the_traffic_distribution_annotation_reach_the_registry_service() -> None:
    """Where a ServiceEntry's endpoints run (Istio's WorkloadEntry `locality`) and its
    networking.istio.io/traffic-distribution annotation: ztunnel and a waypoint prefer the client's
    zone among them (tests/unit/ztunnel/test_traffic_distribution.py)."""
    entry = se({"hosts": ["db.internal"], "addresses": ["240.0.0.9"], "resolution": "STATIC",
                "location": "MESH_INTERNAL", "ports": [{"number": 5432, "name": "pg", "protocol": "TCP"}],
                "endpoints": [{"address": "10.0.0.1", "locality": "us-east/us-east-1a"},
                              {"address": "10.0.0.2", "locality": "us-west"}, {"address": "10.0.0.3"}]})
    entry["metadata"]["annotations"] = {"networking.istio.io/traffic-distribution": "PreferClose"}
    [db] = services([entry]).values()
    assert [e.locality for e in db.endpoints] == ["us-east/us-east-1a", "us-west", ""]
    assert db.traffic_distribution == "PreferSameZone"
    assert Service.from_dict(json.loads(json.dumps(db.to_dict()))) == db, "travels the config stream"


def test_an_empty_endpoint_locality_is_unset_not_refused() -> None:
    """`locality: ""` is the proto3 default, the same as no locality in Istio (which checks no
    locality), as manifests generated from the proto write it. Before, it was refused as an empty
    part, and with it the whole ServiceEntry, which Istio accepts."""
    entry = se({"hosts": ["db.internal"], "addresses": ["240.0.0.9"], "resolution": "STATIC",
                "ports": [{"number": 5432, "name": "pg", "protocol": "TCP"}],
                "endpoints": [{"address": "10.0.0.1", "locality": ""}, {"address": "2001:db8::1", "locality": "r/z"}]})
    assert validate_object(entry) == []
    [db] = services([entry]).values()
    assert [e.locality for e in db.endpoints] == ["", "r/z"]


def test_policies_targeting_an_entry_left_out_for_a_clash_bind_nothing_and_say_why() -> None:
    """An entry left out because an older one holds its host: its targetRefs expanded to that
    host all the same, so its AuthorizationPolicy, Telemetry and BackendTLSPolicy landed on the
    older entry's traffic, which no one had aimed them at. Now they bind nothing, and `ambit apply`
    / `ambit analyze` say the target is not applied."""
    from controller.waypoints.advisories import advisories
    port = [{"number": 80, "name": "http", "protocol": "HTTP"}]
    labels = {"istio.io/use-waypoint": "egress"}
    old = se({"hosts": ["b.example"], "resolution": "STATIC", "endpoints": [{"address": "198.51.100.7"}],
              "ports": port}, name="old", **labels)
    new = se({"hosts": ["b.example"], "resolution": "DNS", "ports": port}, name="new", **labels)
    old["metadata"]["creationTimestamp"] = "2026-01-01T00:00:00Z"
    new["metadata"]["creationTimestamp"] = "2026-06-01T00:00:00Z"
    gw = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "metadata": {"name": "egress", "namespace": "demo"},
          "spec": {"gatewayClassName": "ambit-waypoint", "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}}
    target = [{"kind": "ServiceEntry", "group": "networking.istio.io", "name": "new"}]
    ap = {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy", "metadata": {"name": "deny-new", "namespace": "demo"},
          "spec": {"targetRefs": target, "action": "DENY", "rules": [{"to": [{"operation": {"methods": ["GET"]}}]}]}}
    tel = {"apiVersion": "telemetry.istio.io/v1", "kind": "Telemetry", "metadata": {"name": "new-logs", "namespace": "demo"},
           "spec": {"targetRefs": target, "accessLogging": [{"disabled": True}]}}
    btls = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "BackendTLSPolicy",
            "metadata": {"name": "new-tls", "namespace": "demo", "creationTimestamp": "2026-06-01T00:00:00Z"},
            "spec": {"targetRefs": target, "validation": {"hostname": "b.example", "wellKnownCACertificates": "System"}}}
    objs = [old, new, gw, ap, tel, btls]
    tr = translate(objs)
    assert [(e.ref, e.path) for e in tr.errors] == [("ServiceEntry/demo/new", "spec.hosts[0]")]
    assert tr.entries_applied == {("demo", "old")}
    (a,) = tr.authorizations
    assert a.scope == "waypoint" and a.target_refs == [], "bound to the older entry's host"
    (t,) = tr.telemetry
    assert t.target_refs == []
    assert not [w for w in tr.waypoint_routes if "BackendTLSPolicy/demo/new-tls" in w.sources or w.policy.tls_mode]
    (v,) = tr.backend_tls.ancestors["BackendTLSPolicy/demo/new-tls"]
    assert v.accepted[:2] == (False, "TargetNotFound") and "ServiceEntry demo/new is not applied" in v.accepted[2]
    found = {(x.ref, x.path): x.reason for x in advisories(objs, translation=tr)}
    for ref in ("AuthorizationPolicy/demo/deny-new", "Telemetry/demo/new-logs"):
        assert 'ServiceEntry "demo/new" is not applied' in found[(ref, "spec.targetRefs[0]")], found
    # the same policies aimed at the entry that holds the host bind to it
    for o in (ap, tel, btls):
        o["spec"]["targetRefs"] = [{**target[0], "name": "old"}]
    tr = translate(objs)
    assert tr.authorizations[0].target_refs == [{"group": "", "kind": "Service", "name": "b.example", "namespace": "demo"}]
    assert "BackendTLSPolicy/demo/new-tls" in next(w for w in tr.waypoint_routes if w.hostname == "b.example").sources
