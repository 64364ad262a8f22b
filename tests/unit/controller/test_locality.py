"""Locality for locality load balancing: the controller reads a pod's region/zone/subzone from its
node's topology labels (or the pod's `istio-locality` label) into Workload.locality, through the
API server (emulated) as in a cluster, follows a node relabelled; DestinationRule
`localityLbSetting` is validated by Istio's rules, carried to the waypoint's TrafficPolicy, and
warned about only where it does nothing (failover without outlier detection)."""

from __future__ import annotations

import threading
from typing import Any

from ambit.model import Workload
from controller.sources.kube import KubeSource, make_api_client
from controller.translate import translate
from controller.validation import validate_object
from controller.waypoints.advisories import advisories
from tests.support.kube_emulator import KubeEmulator
from tests.support.wait import wait_for
from tests.unit.controller.test_waypoint_advisories import ns, svc, waypoint

ZONE, REGION, SUBZONE = "topology.kubernetes.io/zone", "topology.kubernetes.io/region", "topology.istio.io/subzone"


def node(name: str, **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels},
            "status": {"addresses": [{"type": "InternalIP", "address": "172.18.0.2"}]}}


def pod(name: str, ip: str, node_name: str, **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "demo", "uid": f"uid-{name}",
                                                           "labels": labels},
            "spec": {"nodeName": node_name, "containers": [{"name": "app"}]},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}}


def dr(loc: dict[str, Any], outlier: bool = True) -> dict[str, Any]:
    policy: dict[str, Any] = {"loadBalancer": {"localityLbSetting": loc}}
    if outlier:
        policy["outlierDetection"] = {"consecutive5xxErrors": 3}
    return {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": "web", "namespace": "demo"}, "spec": {"host": "web", "trafficPolicy": policy}}


def test_workload_locality_comes_from_the_nodes_labels_through_the_api_server() -> None:
    from prometheus_client import CollectorRegistry

    from controller.app import Controller
    from controller.configserver import ConfigServer
    emu = KubeEmulator()
    emu.start()
    emu.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo"}})
    emu.create(node("n1", **{REGION: "us-east", ZONE: "us-east-1a", SUBZONE: "rack1"}))
    emu.create(node("n2"))
    emu.create(pod("a", "10.244.1.1", "n1"))
    emu.create(pod("b", "10.244.2.1", "n2"))
    emu.create(pod("c", "10.244.2.2", "n2", **{"istio-locality": "eu-west.eu-west-1b"}))
    source = KubeSource(make_api_client(emu.url), debounce=0.01, backoff=(0.05, 0.3))
    ctl = Controller(source, ConfigServer(debounce=0.0, registry=CollectorRegistry()))
    stop = threading.Event()
    ctl.run_source(stop)

    def localities() -> dict[str, str]:
        tr = ctl.translation
        return {w.name: w.locality for w in tr.workloads} if tr is not None else {}
    try:
        wait_for(lambda: len(localities()) == 3, "the first translation", timeout=15)
        assert localities() == {"a": "us-east/us-east-1a/rack1", "b": "", "c": "eu-west/eu-west-1b/"}
        emu.update(node("n2", **{REGION: "us-east", ZONE: "us-east-1b"}))     # a node labelled later
        wait_for(lambda: localities().get("b") == "us-east/us-east-1b/", "the relabelled node", timeout=15)
        assert localities()["c"] == "eu-west/eu-west-1b/"       # the pod's own label wins
    finally:
        stop.set()
        source.api.close()
        emu.stop()
    # the field reaches the data plane, and an older controller's Workload (no field) means "unknown"
    w = next(w for w in ctl.translation.workloads if w.name == "a")
    assert Workload.from_dict(w.to_dict()).locality == "us-east/us-east-1a/rack1"
    d = w.to_dict()
    del d["locality"]
    assert Workload.from_dict(d).locality == ""


def test_locality_settings_reach_the_waypoints_traffic_policy() -> None:
    loc = {"failover": [{"from": "us-east", "to": "eu-west"}], "failoverPriority": ["tier"]}
    tr = translate([ns("demo"), svc("web"), dr(loc)])
    [routes] = [r for r in tr.waypoint_routes if r.service == "demo/web"]
    p = routes.policy
    assert p is not None and p.outlier_detection and not p.locality_disabled and p.locality_set
    assert p.locality_failover == [["us-east", "eu-west"]] and p.locality_failover_priority == ["tier"]
    # without localityLbSetting the rule does not override the Service's trafficDistribution
    no_setting = dr({})
    del no_setting["spec"]["trafficPolicy"]["loadBalancer"]
    tr = translate([ns("demo"), svc("web"), no_setting])
    [routes] = [r for r in tr.waypoint_routes if r.service == "demo/web"]
    assert routes.policy is not None and not routes.policy.locality_set
    tr = translate([ns("demo"), svc("web"), dr({"enabled": False})])
    [routes] = [r for r in tr.waypoint_routes if r.service == "demo/web"]
    assert routes.policy is not None and routes.policy.locality_disabled
    tr = translate([ns("demo"), svc("web"), dr({"distribute": [{"from": "us-east/*", "to": {"us-east/*": 100}}]})])
    [routes] = [r for r in tr.waypoint_routes if r.service == "demo/web"]
    assert routes.policy is not None and routes.policy.locality_distribute == [["us-east/*", {"us-east/*": 100}]]


def test_invalid_locality_settings_are_refused_naming_the_field() -> None:
    def errors(loc: dict[str, Any]) -> list[str]:
        return [f"{e.ref}: {e.path}: {e.reason}" for e in validate_object(dr(loc))]
    base = "DestinationRule/demo/web: spec.trafficPolicy.loadBalancer.localityLbSetting"
    assert errors({"distribute": [{"from": "a/*", "to": {"a/*": 100}}], "failover": [{"from": "a", "to": "b"}]}) == [
        f"{base}: distribute and failover cannot both be set"]
    assert errors({"distribute": [{"from": "a/*", "to": {"a/*": 60, "b/*": 30}}]}) == [
        f"{base}.distribute[0].to: locality weights must sum to 100, not 90"]
    assert errors({"distribute": [{"from": "a/*", "to": {"a/*": 100, "b/*": 0}}]}) == [
        f"{base}.distribute[0].to: locality weights must be in 1..100"]
    assert errors({"distribute": [{"from": "a/*/z", "to": {"a/*": 100}}]}) == [
        f"{base}.distribute[0]: locality 'a/*/z': the wildcard '*' may appear once, as the last part"]
    assert errors({"failover": [{"from": "us-east", "to": "us-east"}]}) == [
        f"{base}.failover[0]: failover from and to must be different regions"]
    assert errors({"failover": [{"from": "us-east/1a", "to": "eu-*"}]}) == [
        f"{base}.failover[0]: failover from and to are regions only (no '/')",
        f"{base}.failover[0]: failover regions cannot contain the wildcard '*'"]
    assert errors({"failover": [{"from": "a", "to": "b"}], "failoverPriority": [ZONE]}) == [
        f"{base}.failoverPriority: cannot set failover and the topology label '{ZONE}' in failoverPriority at once"]
    assert errors({"enabled": True, "failover": [{"from": "a", "to": "b"}], "failoverPriority": ["tier"]}) == []
    assert errors({"distribute": [{"from": "a/b/c", "to": {"a/*": 50, "b": 50}}]}) == []


def test_only_failover_without_outlier_detection_is_warned_as_not_applied() -> None:
    served = [ns("demo", **{"ambit.io/use-waypoint": "waypoint"}), svc("web"), waypoint()]
    assert advisories([*served, dr({"failover": [{"from": "a", "to": "b"}]})]) == []
    assert advisories([*served, dr({"distribute": [{"from": "a/*", "to": {"a/*": 100}}]}, outlier=False)]) == []
    assert advisories([*served, dr({"enabled": False}, outlier=False)]) == []
    [a] = advisories([*served, dr({"failover": [{"from": "a", "to": "b"}]}, outlier=False)])
    assert (a.ref, a.path) == ("DestinationRule/demo/web", "spec.trafficPolicy.loadBalancer.localityLbSetting")
    assert "applies only with outlierDetection" in a.reason
