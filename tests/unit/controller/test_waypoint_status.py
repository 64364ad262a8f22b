"""Waypoint Gateway status (Gateway API Accepted/Programmed/addresses) as pure functions, and its
writing into the lab store (controller.waypoints.gateways, .labstatus)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ambit.labstore import LabStore
from controller.waypoints import gateways as gws
from controller.waypoints.labstatus import LabWaypointStatus, desired_statuses
from controller.waypoints.render import WaypointDeploySettings, needs_update, render


def gateway(cls: str = "ambit-waypoint", **labels: str) -> dict[str, Any]:
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": "waypoint", "namespace": "demo", "labels": labels, "generation": 3, "uid": "u-1"},
            "spec": {"gatewayClassName": cls, "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}}


def service(ip: str | None = "10.96.0.20") -> dict[str, Any]:
    spec: dict[str, Any] = {"ports": [{"name": "mesh", "port": 15008}]}
    if ip:
        spec["clusterIP"] = ip
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "waypoint", "namespace": "demo"}, "spec": spec}


def conds(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def test_classes_and_waypoint_for() -> None:
    assert gws.is_waypoint(gateway()) and gws.is_waypoint(gateway("istio-waypoint"))
    assert not gws.is_waypoint(gateway("istio")) and not gws.is_waypoint(service())
    assert gws.waypoint_for(gateway()) == "service"
    assert gws.waypoint_for(gateway(**{"istio.io/waypoint-for": "all"})) == "all"
    assert gws.waypoint_for(gateway(**{"ambit.io/waypoint-for": "workload", "istio.io/waypoint-for": "all"})) == "workload"


def test_programmed_with_the_service_vip_as_address() -> None:
    st = gws.desired_status(gateway(), service())
    assert conds(st) == {"Accepted": ("True", "Accepted"), "Programmed": ("True", "Programmed")}
    assert st["addresses"] == [{"type": "IPAddress", "value": "10.96.0.20"}]
    assert all(c["observedGeneration"] == 3 for c in st["conditions"])
    [lst] = st["listeners"]
    assert lst["name"] == "mesh" and {c["type"]: c["status"] for c in lst["conditions"]} == {
        "Accepted": "True", "Programmed": "True", "ResolvedRefs": "True"}


def test_not_programmed_until_the_address_is_assigned() -> None:
    for svc in (None, service(ip=None)):
        st = gws.desired_status(gateway(), svc)
        assert conds(st) == {"Accepted": ("True", "Accepted"), "Programmed": ("False", "AddressNotAssigned")}
        assert st["addresses"] == []


def test_bad_waypoint_for_is_not_accepted() -> None:
    st = gws.desired_status(gateway(**{"ambit.io/waypoint-for": "everything"}), service())
    assert conds(st) == {"Accepted": ("False", "Invalid"), "Programmed": ("False", "Invalid")}
    assert "everything" in st["conditions"][0]["message"]
    assert "not used as a waypoint" in st["conditions"][0]["message"]     # what the translation says too


def test_transition_times_survive_an_unchanged_status() -> None:
    first = gws.with_times(None, gws.desired_status(gateway(), None), now=1000)
    assert not gws.status_differs(first, gws.desired_status(gateway(), None))
    later = gws.with_times(first, gws.desired_status(gateway(), service()), now=2000)
    t = {c["type"]: c["lastTransitionTime"] for c in later["conditions"]}
    assert t["Accepted"] == "1970-01-01T00:16:40Z" and t["Programmed"] == "1970-01-01T00:33:20Z"
    assert gws.status_differs(first, gws.desired_status(gateway(), service()))


def test_render_is_stable_and_detects_drift() -> None:
    s = WaypointDeploySettings(image="ambit:1", controller_address="c:15012")
    sa, svc, dep = render(gateway(), s)
    assert [o["kind"] for o in (sa, svc, dep)] == ["ServiceAccount", "Service", "Deployment"]
    existing = {**dep, "spec": {**dep["spec"], "progressDeadlineSeconds": 600}}   # server defaults
    assert not needs_update(existing, dep)
    assert needs_update(existing, render(gateway(), WaypointDeploySettings(image="ambit:2", controller_address="c"))[2])


def test_lab_store_gets_gateway_and_policy_status_once(tmp_path: Path) -> None:
    store = LabStore(tmp_path / "store.json")
    policy = {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
              "metadata": {"name": "p", "namespace": "demo"},
              "spec": {"selector": {"matchLabels": {"app": "x"}}, "rules": [{"to": [{"operation": {"paths": ["/a"]}}]}]}}
    other = gateway("istio")
    other["metadata"]["name"] = "ingress"
    store.apply([gateway(), service(), policy, other])
    lab = LabWaypointStatus(store)
    lab.reconcile(store.list())
    gw = store.get("Gateway", "demo", "waypoint")
    assert conds(gw["status"])["Programmed"] == ("True", "Programmed")
    assert gw["status"]["addresses"] == [{"type": "IPAddress", "value": "10.96.0.20"}]
    assert "status" not in store.get("Gateway", "demo", "ingress")          # not ours
    [c] = store.get("AuthorizationPolicy", "demo", "p")["status"]["conditions"]
    assert (c["type"], c["status"]) == ("ZtunnelAccepted", "False")
    rev = store.revision()
    assert desired_statuses(store.list()) == {}
    lab.reconcile(store.list())
    assert store.revision() == rev            # nothing changed: no write, no snapshot loop
    # the policy is fixed (no HTTP rules): its condition goes
    policy["spec"]["rules"] = [{"to": [{"operation": {"ports": ["80"]}}]}]
    store.apply([policy])
    lab.reconcile(store.list())
    assert store.get("AuthorizationPolicy", "demo", "p")["status"]["conditions"] == []


def test_lab_store_gets_enforced_false_for_fields_accepted_but_not_applied(tmp_path: Path) -> None:
    store = LabStore(tmp_path / "store.json")
    dr = {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
          "metadata": {"name": "d", "namespace": "demo"},
          "spec": {"host": "web", "trafficPolicy": {"tls": {"mode": "SIMPLE"}}}}
    store.apply([gateway(), service(), dr])
    LabWaypointStatus(store).reconcile(store.list())
    [c] = store.get("DestinationRule", "demo", "d")["status"]["conditions"]
    assert (c["type"], c["status"]) == ("Enforced", "False") and "spec.trafficPolicy.tls: " in c["message"]
    del dr["spec"]["trafficPolicy"]
    store.apply([dr])
    LabWaypointStatus(store).reconcile(store.list())
    assert all("trafficPolicy" not in c["message"]
               for c in store.get("DestinationRule", "demo", "d")["status"]["conditions"])


def test_listener_supported_kinds_follow_allowed_routes_kinds() -> None:
    """A waypoint honours its listener's allowedRoutes.kinds (controller.translate.parents); its status
    says which kinds it takes, and that a kind it cannot carry is an invalid one."""
    gw = gateway()
    gw["spec"]["listeners"][0]["allowedRoutes"] = {"kinds": [{"kind": "GRPCRoute"}]}
    [lst] = gws.desired_status(gw, service())["listeners"]
    assert lst["supportedKinds"] == [{"group": "gateway.networking.k8s.io", "kind": "GRPCRoute"}]
    gw["spec"]["listeners"][0]["allowedRoutes"] = {"kinds": [{"kind": "TCPRoute"}]}
    [lst] = gws.desired_status(gw, service())["listeners"]
    assert lst["supportedKinds"] == []
    resolved = {c["type"]: c for c in lst["conditions"]}["ResolvedRefs"]
    assert (resolved["status"], resolved["reason"]) == ("False", "InvalidRouteKinds")
    assert "TCPRoute" in resolved["message"]


def test_lab_gateways_say_invalid_parameters_as_in_a_cluster(tmp_path: Path) -> None:
    """The lab applies no overlay (it runs gateways as processes), but a Gateway whose class defaults
    or own parametersRef a cluster's controller would refuse says so in the lab too: Accepted=False,
    InvalidParameters, naming the ConfigMap; fixed, it is Accepted again."""
    from controller.translate import translate
    store = LabStore(tmp_path / "store.json")
    defaults = {"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "waypoint-defaults", "namespace": "ambit-system",
                             "labels": {"gateway.istio.io/defaults-for-class": "ambit-waypoint"}},
                "data": {"service": "spec: {selector: {app: mine}}"}}
    ingress = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
               "metadata": {"name": "edge", "namespace": "demo", "generation": 1},
               "spec": {"gatewayClassName": "ambit", "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}],
                        "infrastructure": {"parametersRef": {"group": "", "kind": "ConfigMap", "name": "missing"}}}}
    store.apply([gateway(), service(), defaults, ingress])
    lab = LabWaypointStatus(store)
    lab.reconcile(store.list(), translate(store.list()))
    gw = store.get("Gateway", "demo", "waypoint")
    assert conds(gw["status"])["Accepted"] == ("False", "InvalidParameters")
    [accepted] = [c for c in gw["status"]["conditions"] if c["type"] == "Accepted"]
    assert "ConfigMap ambit-system/waypoint-defaults: key service: spec.selector is Ambit's" in accepted["message"]
    edge = store.get("Gateway", "demo", "edge")
    assert conds(edge["status"])["Accepted"] == ("False", "InvalidParameters")
    assert "parametersRef ConfigMap demo/missing: the ConfigMap does not exist" in \
        next(c["message"] for c in edge["status"]["conditions"] if c["type"] == "Accepted")
    defaults["data"] = {"service": "metadata: {annotations: {a: b}}"}
    store.apply([defaults])
    lab.reconcile(store.list(), translate(store.list()))
    assert conds(store.get("Gateway", "demo", "waypoint")["status"])["Accepted"] == ("True", "Accepted")
