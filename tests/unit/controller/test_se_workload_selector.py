"""ServiceEntry `workloadSelector`: the pods of the entry's namespace it selects are its hosts'
endpoints, as in Istio's ambient registry (pilot/pkg/serviceregistry/ambient: a pod gets every
ServiceEntry of its namespace whose non-empty selector its labels carry; the entry's port reaches
the pod's container port of the same name, else targetPort, else the port's number). From
translation to ztunnel's route decision and a waypoint's endpoint pick, with no mock in between."""

from __future__ import annotations

from typing import Any

from controller.translate import translate
from controller.validation import validate_object
from tests.unit.ztunnel.meshcfg import config
from waypoint import endpoints as wp_endpoints
from ztunnel.routing import HBONE, REFUSE, RoundRobin, decide

Obj = dict[str, Any]


def ns(name: str, **labels: str) -> Obj:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def pod(name: str, ip: str, labels: dict[str, str], namespace: str = "demo", ready: bool = True,
        phase: str = "Running", ports: list[Obj] | None = None, **extra: Any) -> Obj:
    spec = {"nodeName": "node1", "serviceAccountName": name,
            "containers": [{"name": "app", "ports": ports if ports is not None else
                            [{"name": "mysql", "containerPort": 3307}]}], **extra}
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "uid": f"uid-{name}", "labels": labels},
            "spec": spec,
            "status": {"phase": phase, "podIP": ip,
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def entry(spec: Obj, name: str = "db", namespace: str = "demo", **labels: str) -> Obj:
    base = {"hosts": ["mysql.internal"], "location": "MESH_INTERNAL", "resolution": "STATIC",
            "ports": [{"number": 3306, "name": "mysql", "protocol": "TCP"}],
            "workloadSelector": {"labels": {"app": "mysql"}}}
    return {"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
            "metadata": {"name": name, "namespace": namespace, "labels": labels}, "spec": {**base, **spec}}


MESH = [ns("demo", **{"ambit.io/dataplane-mode": "ambient"}), ns("other", **{"ambit.io/dataplane-mode": "ambient"})]
CLIENT = pod("client", "10.210.1.5", {"app": "client"}, ports=[])


def host(tr: Any, name: str = "mysql.internal", namespace: str = "demo") -> Any:
    return next(s for s in tr.services if s.kind == "ServiceEntry" and s.name == name and s.namespace == namespace)


def test_istios_documented_selector_entry_is_accepted() -> None:
    """istio.io's ServiceEntry reference: `details-svc`, MESH_INTERNAL, selecting app=details-legacy."""
    doc = entry({"hosts": ["details.bookinfo.com"], "ports": [{"number": 80, "name": "http", "protocol": "HTTP",
                                                              "targetPort": 8080}],
                 "workloadSelector": {"labels": {"app": "details-legacy"}}})
    assert validate_object(doc) == []
    assert validate_object(entry({"workloadSelector": {}})) == [], "Istio accepts an empty selector (it selects none)"


def test_the_selected_ready_pods_of_the_entrys_namespace_are_its_endpoints() -> None:
    deleting = pod("mysql-3", "10.210.1.13", {"app": "mysql"})
    deleting["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    objs = [*MESH, CLIENT, entry({}),
            pod("mysql-0", "10.210.1.10", {"app": "mysql", "role": "primary"}),
            pod("mysql-1", "10.210.1.11", {"app": "mysql"}, ready=False),
            pod("mysql-2", "10.210.1.12", {"app": "mysql"}, phase="Pending"), deleting,
            pod("web", "10.210.1.14", {"app": "web"}),
            pod("mysql-elsewhere", "10.210.1.15", {"app": "mysql"}, namespace="other")]
    tr = translate(objs)
    assert tr.errors == []
    svc = host(tr)
    assert [(e.workload_uid, e.ip, e.ready) for e in svc.endpoints] == [
        ("uid-mysql-0", "10.210.1.10", True), ("uid-mysql-1", "10.210.1.11", False)], \
        "running pods of its namespace with the labels; unready ones listed not ready"
    assert svc.endpoints[0].labels == {"app": "mysql", "role": "primary"}, "DestinationRule subsets select by these"
    assert svc.vips and svc.vips[0].startswith("240.240."), "auto-allocated VIP, as any STATIC entry"
    backs = {w.name: w.services for w in tr.workloads}
    assert backs["mysql-0"] == {"demo/mysql.internal": [3306]} and backs["mysql-1"] == {"demo/mysql.internal": [3306]}
    assert backs["web"] == {} and backs["mysql-elsewhere"] == {}, "never another namespace's pod, nor a non-match"


def test_ports_map_by_container_port_name_then_target_port_then_number() -> None:
    ports = [{"number": 3306, "name": "mysql"}, {"number": 9104, "name": "metrics", "targetPort": 9100},
             {"number": 8080, "name": "admin"}]
    sidecar = {"initContainers": [{"name": "proxy", "restartPolicy": "Always",
                                   "ports": [{"name": "admin", "containerPort": 18080}]}]}
    objs = [*MESH, entry({"ports": ports}),
            pod("a", "10.210.1.10", {"app": "mysql"}, ports=[{"name": "mysql", "containerPort": 3307},
                                                            {"name": "metrics", "containerPort": 9999,
                                                             "protocol": "UDP"}], **sidecar),
            pod("b", "10.210.1.11", {"app": "mysql"}, ports=[])]
    tr = translate(objs)
    svc = host(tr)
    cfg = config(tr.workloads, tr.services)
    vip = svc.vips[0]
    want = {"a": {3306: 3307, 9104: 9100, 8080: 18080}, "b": {3306: 3306, 9104: 9100, 8080: 8080}}
    lb = RoundRobin()
    for port in (3306, 9104, 8080):
        dials = {decide(cfg, vip, port, lb, "demo").target for _ in range(2)}
        assert dials == {("10.210.1.10", want["a"][port]), ("10.210.1.11", want["b"][port])}, port


def test_ztunnel_reaches_the_pods_over_hbone_whatever_the_location_and_skips_unready_ones() -> None:
    """Istio's ambient reads no `location`: a selected pod is a mesh workload, reached over HBONE to
    its own identity, even for the default MESH_EXTERNAL."""
    for location in ("MESH_INTERNAL", "MESH_EXTERNAL"):
        objs = [*MESH, CLIENT, entry({"location": location, "addresses": ["240.240.9.9"]}),
                pod("mysql-0", "10.210.1.10", {"app": "mysql"}),
                pod("mysql-1", "10.210.1.11", {"app": "mysql"}, ready=False)]
        tr = translate(objs)
        cfg = config(tr.workloads, tr.services)
        routes = [decide(cfg, "240.240.9.9", 3306, RoundRobin(), "demo") for _ in range(3)]
        assert {(r.kind, r.dial, r.identity) for r in routes} == {
            (HBONE, ("10.210.1.10", 15008), "spiffe://cluster.local/ns/demo/sa/mysql-0")}, location
        assert routes[0].target == ("10.210.1.10", 3307) and routes[0].service.hostname == "mysql.internal"


def test_a_pod_relabelled_out_or_gone_unready_leaves_the_host() -> None:
    objs = [*MESH, CLIENT, entry({"addresses": ["240.240.9.9"]}), pod("mysql-0", "10.210.1.10", {"app": "mysql"})]
    tr = translate(objs)
    assert decide(config(tr.workloads, tr.services), "240.240.9.9", 3306).kind == HBONE
    objs[-1]["metadata"]["labels"] = {"app": "retired"}
    tr = translate(objs)
    assert host(tr).endpoints == [] and next(w for w in tr.workloads if w.name == "mysql-0").services == {}
    r = decide(config(tr.workloads, tr.services), "240.240.9.9", 3306)
    assert r.kind == REFUSE and "mysql.internal" in r.reason
    objs[-1]["metadata"]["labels"] = {"app": "mysql"}
    objs[-1]["status"]["conditions"][0]["status"] = "False"
    tr = translate(objs)
    assert decide(config(tr.workloads, tr.services), "240.240.9.9", 3306).kind == REFUSE


def test_an_empty_selector_selects_no_pod_and_resolution_none_still_balances_over_the_pods() -> None:
    tr = translate([*MESH, entry({"workloadSelector": {}}), pod("mysql-0", "10.210.1.10", {"app": "mysql"})])
    assert host(tr).endpoints == []
    tr = translate([*MESH, CLIENT, entry({"resolution": "NONE", "addresses": ["240.240.9.9"]}),
                    pod("mysql-0", "10.210.1.10", {"app": "mysql"})])
    assert host(tr).resolution == "STATIC" and [e.ip for e in host(tr).endpoints] == ["10.210.1.10"]
    assert decide(config(tr.workloads, tr.services), "240.240.9.9", 3306).dial == ("10.210.1.10", 15008)


def test_every_host_of_the_entry_gets_the_pods_and_exportTo_hides_them_from_other_namespaces() -> None:
    tr = translate([*MESH, CLIENT, entry({"hosts": ["mysql.internal", "db.internal"], "exportTo": ["."],
                                 "ports": [{"number": 3306, "name": "mysql", "protocol": "TLS"}]}),
                    pod("mysql-0", "10.210.1.10", {"app": "mysql"}),
                    pod("stranger", "10.210.1.20", {"app": "client"}, namespace="other", ports=[])])
    a, b = host(tr), host(tr, "db.internal")
    assert [e.ip for e in a.endpoints] == [e.ip for e in b.endpoints] == ["10.210.1.10"] and a.vips != b.vips
    assert next(w for w in tr.workloads if w.name == "mysql-0").services == {
        "demo/db.internal": [3306], "demo/mysql.internal": [3306]}
    cfg = config(tr.workloads, tr.services)
    assert decide(cfg, a.vips[0], 3306, None, "demo").kind == HBONE
    assert decide(cfg, a.vips[0], 3306, None, "other").service is None, "not exported to namespace other"


def test_a_waypoint_bound_entry_sends_to_the_selected_pods_over_hbone_and_subsets_use_pod_labels() -> None:
    gw = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
          "metadata": {"name": "waypoint", "namespace": "demo"},
          "spec": {"gatewayClassName": "istio-waypoint", "listeners": [{"name": "mesh", "port": 15008,
                                                                         "protocol": "HBONE"}]}}
    se = entry({"location": "MESH_EXTERNAL", "addresses": ["240.240.9.9"]}, **{"istio.io/use-waypoint": "waypoint"})
    tr = translate([*MESH, CLIENT, gw, se, pod("mysql-0", "10.210.1.10", {"app": "mysql", "version": "v1"}),
                    pod("mysql-1", "10.210.1.11", {"app": "mysql", "version": "v2"})])
    svc = host(tr)
    assert svc.waypoint == "demo/waypoint"
    workloads = {w.uid: w for w in tr.workloads}
    by_ip = {w.ips[0]: w for w in tr.workloads}
    picks = wp_endpoints.candidates(svc, 3306, {"version": "v2"}, workloads, by_ip)
    assert [(p.ip, p.port, p.mesh, p.plain, p.identity) for p in picks] == [
        ("10.210.1.11", 3307, True, False, "spiffe://cluster.local/ns/demo/sa/mysql-1")]
    # the pods' ztunnel admits tunnels to the entry's port only from the entry's waypoint
    assert next(w for w in tr.workloads if w.name == "mysql-0").services == {"demo/mysql.internal": [3306]}


def test_analyze_warns_of_a_selector_that_selects_no_pod_of_the_entrys_namespace() -> None:
    from ambitctl import analyze
    objs = [*MESH, pod("mysql-0", "10.210.1.10", {"app": "mysql"}),
            pod("pg-0", "10.210.1.20", {"app": "postgres"}, namespace="other"),
            # each its own host: two entries of one namespace with one host are one too many (the later is not applied)
            entry({}, name="ok"),
            entry({"hosts": ["pg.internal"], "workloadSelector": {"labels": {"app": "postgres"}}}, name="elsewhere"),
            entry({"hosts": ["none.internal"], "workloadSelector": {}}, name="empty")]
    found = {(f.code, f.ref, f.path) for f in analyze.analyze(objs, complete=True)}
    assert ("AMB0104", "ServiceEntry/demo/elsewhere", "spec.workloadSelector.labels") in found
    assert ("AMB0104", "ServiceEntry/demo/empty", "spec.workloadSelector") in found
    assert not [f for f in found if f[1] == "ServiceEntry/demo/ok"]
