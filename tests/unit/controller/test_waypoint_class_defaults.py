"""A Gateway class's defaults in a cluster: KubeSource + KubeWaypointReconciler against the API-server
emulator, through the official client. The root namespace's ConfigMap labelled
`gateway.istio.io/defaults-for-class: ambit-waypoint` reaches the Deployment of a waypoint that has no
parametersRef; a Gateway's own overlay beats it; editing it re-renders at once; an invalid one is
reported on the Gateway and applies nothing; deleting it takes away what it added."""

from __future__ import annotations

import threading
from typing import Any

from tests.support.kube_emulator import KubeEmulator
from tests.support.wait import wait_for
from tests.unit.controller.test_gateway_params import SIZING
from tests.unit.controller.test_waypoint_deploy import GW_V1, assert_allowed_by_install, cluster, gateway  # noqa: F401


def class_defaults(data: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "waypoint-defaults", "namespace": "ambit-system",
                         "labels": {"gateway.istio.io/defaults-for-class": "ambit-waypoint"}},
            "data": data}


def container(emu: KubeEmulator, name: str) -> dict[str, Any]:
    dep = emu.get("apps/v1", "Deployment", name, "demo") or {}
    return ((((dep.get("spec") or {}).get("template") or {}).get("spec") or {}).get("containers") or [{}])[0]


def pod_spec(emu: KubeEmulator, name: str) -> dict[str, Any]:
    return emu.get("apps/v1", "Deployment", name, "demo")["spec"]["template"]["spec"]


def limits(emu: KubeEmulator, name: str) -> Any:
    return (container(emu, name).get("resources") or {}).get("limits")


def accepted(emu: KubeEmulator, name: str) -> dict[str, Any]:
    st = (emu.get(GW_V1, "Gateway", name, "demo") or {}).get("status") or {}
    return next((c for c in st.get("conditions") or [] if c["type"] == "Accepted"), {})


def test_class_defaults_reach_waypoints_and_follow_their_configmap(cluster) -> None:  # noqa: F811
    emu, rec = cluster
    for ns in ("demo", "ambit-system"):
        emu.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    emu.create(class_defaults({"deployment": SIZING, "podDisruptionBudget": "spec: {maxUnavailable: 1}"}))
    emu.create(gateway("plain"))                 # no parametersRef: the class defaults alone
    team = gateway("team")
    team["spec"]["infrastructure"] = {"parametersRef": {"group": "", "kind": "ConfigMap", "name": "team-options"}}
    emu.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "team-options", "namespace": "demo"},
                "data": {"deployment": "spec: {template: {spec: {nodeSelector: {pool: payments}, containers: "
                                       "[{name: waypoint, resources: {limits: {memory: 4Gi}}}]}}}"}})
    emu.create(team)
    wait_for(lambda: limits(emu, "plain") == {"memory": "2Gi"}, timeout=10, what="the class default's resources")
    assert pod_spec(emu, "plain")["nodeSelector"] == {"pool": "mesh"}
    wait_for(lambda: emu.get("policy/v1", "PodDisruptionBudget", "plain", "demo"), timeout=10, what="the class PDB")
    # the Gateway's own overlay wins where both set a field; the class's fills the rest
    wait_for(lambda: limits(emu, "team") == {"memory": "4Gi"}, timeout=10, what="the team's own resources")
    assert pod_spec(emu, "team")["nodeSelector"] == {"pool": "payments"}
    assert container(emu, "team")["resources"]["requests"] == {"cpu": "500m", "memory": "512Mi"}
    assert pod_spec(emu, "team")["priorityClassName"] == "mesh-critical"
    wait_for(lambda: accepted(emu, "plain").get("status") == "True", timeout=10, what="Accepted")

    # an edit of the defaults re-renders every Gateway of the class; the team's limit still wins
    cm = emu.get("v1", "ConfigMap", "waypoint-defaults", "ambit-system")
    cm["data"] = {"deployment": SIZING.replace("2Gi", "3Gi").replace("pool: mesh", "pool: mesh2")}
    emu.update(cm)
    wait_for(lambda: limits(emu, "plain") == {"memory": "3Gi"}, timeout=10, what="the edited class default")
    wait_for(lambda: emu.get("policy/v1", "PodDisruptionBudget", "plain", "demo") is None, timeout=10,
             what="the PDB deleted once the class defaults no longer ask for it")
    assert limits(emu, "team") == {"memory": "4Gi"}

    # invalid defaults: the Gateways of the class say which ConfigMap, key and why; nothing is applied
    cm = emu.get("v1", "ConfigMap", "waypoint-defaults", "ambit-system")
    cm["data"] = {"deployment": SIZING.replace("2Gi", "8Gi"), "service": "spec: {selector: {app: mine}}"}
    emu.update(cm)
    for name in ("plain", "team"):
        cond = wait_for(lambda name=name: accepted(emu, name) if accepted(emu, name).get("reason")
                        == "InvalidParameters" else None, timeout=10, what=f"InvalidParameters on {name}")
        assert cond["status"] == "False"
        assert ("class defaults (gateway.istio.io/defaults-for-class: ambit-waypoint) ConfigMap "
                "ambit-system/waypoint-defaults: key service: spec.selector is Ambit's") in cond["message"], \
            cond["message"]
    threading.Event().wait(0.3)
    assert limits(emu, "plain") == {"memory": "3Gi"}                   # as last rendered
    assert limits(emu, "team") == {"memory": "4Gi"}

    # the defaults deleted: what they added goes, the Gateways are accepted again
    emu.delete("v1", "ConfigMap", "waypoint-defaults", "ambit-system")
    wait_for(lambda: limits(emu, "plain") == {"memory": "1Gi"}, timeout=10, what="the rendered resources again")
    for field in ("nodeSelector", "tolerations", "priorityClassName"):
        assert field not in pod_spec(emu, "plain"), field
    wait_for(lambda: "priorityClassName" not in pod_spec(emu, "team"), timeout=10, what="the class fields gone")
    assert limits(emu, "team") == {"memory": "4Gi"} and pod_spec(emu, "team")["nodeSelector"] == {"pool": "payments"}
    wait_for(lambda: accepted(emu, "plain").get("status") == "True", timeout=10, what="Accepted again")
    assert rec.errors == []
    assert_allowed_by_install(emu.requests)
