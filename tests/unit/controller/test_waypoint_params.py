"""A Gateway's parametersRef in a cluster: KubeSource + KubeWaypointReconciler against the API-server
emulator, through the official client. The ConfigMap's overlays reach the rendered Deployment
(resources, tolerations), an HPA and PDB exist while their keys do, an edit of the ConfigMap
re-renders, a bad ConfigMap leaves the objects as they were and says why on the Gateway
(Accepted=False, InvalidParameters), and a Deployment scaled by someone else keeps its replicas."""

from __future__ import annotations

import threading
from typing import Any

from tests.support.kube_emulator import KubeEmulator
from tests.support.wait import wait_for
from tests.unit.controller.test_gateway_params import SIZING
from tests.unit.controller.test_waypoint_deploy import GW_V1, assert_allowed_by_install, cluster, gateway  # noqa: F401


def options(data: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "wp-options", "namespace": "demo"},
            "data": data}


def with_ref(gw: dict[str, Any]) -> dict[str, Any]:
    gw["spec"]["infrastructure"] = {"parametersRef": {"group": "", "kind": "ConfigMap", "name": "wp-options"}}
    return gw


def deployment(emu: KubeEmulator) -> dict[str, Any]:
    return emu.get("apps/v1", "Deployment", "waypoint", "demo") or {}


def container(emu: KubeEmulator) -> dict[str, Any]:
    return ((((deployment(emu).get("spec") or {}).get("template") or {}).get("spec") or {})
            .get("containers") or [{}])[0]


def accepted(emu: KubeEmulator) -> dict[str, Any]:
    st = (emu.get(GW_V1, "Gateway", "waypoint", "demo") or {}).get("status") or {}
    return next((c for c in st.get("conditions") or [] if c["type"] == "Accepted"), {})


def test_parameters_reach_the_deployment_an_hpa_and_follow_the_configmap(cluster) -> None:  # noqa: F811
    emu, rec = cluster
    emu.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo"}})
    emu.create(options({"deployment": SIZING,
                        "horizontalPodAutoscaler": "spec: {minReplicas: 2, maxReplicas: 6}"}))
    gw = emu.create(with_ref(gateway()))
    wait_for(lambda: container(emu).get("resources", {}).get("limits") == {"memory": "2Gi"}, timeout=10,
             what="the overlay's resources")
    dep = deployment(emu)
    assert dep["spec"]["template"]["spec"]["tolerations"] == [
        {"key": "dedicated", "operator": "Equal", "value": "mesh", "effect": "NoSchedule"}]
    assert container(emu)["resources"]["requests"] == {"cpu": "500m", "memory": "512Mi"}
    assert dep["spec"]["template"]["spec"]["nodeSelector"] == {"pool": "mesh"}
    assert container(emu)["command"] == ["python3", "-m", "waypoint"]
    hpa = wait_for(lambda: emu.get("autoscaling/v2", "HorizontalPodAutoscaler", "waypoint", "demo"), timeout=10,
                   what="the HPA")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "waypoint"}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 6)
    assert hpa["metadata"]["ownerReferences"][0]["uid"] == gw["metadata"]["uid"]
    assert emu.get("policy/v1", "PodDisruptionBudget", "waypoint", "demo") is None
    wait_for(lambda: accepted(emu).get("status") == "True", timeout=10, what="Accepted")

    # an edit of the ConfigMap re-renders: new memory, tolerations gone, a PDB instead of the HPA
    emu.update(options({"deployment": "spec: {template: {spec: {containers: [{name: waypoint, resources: "
                                      "{requests: {memory: 1Gi}, limits: {memory: 4Gi}}}]}}}",
                        "podDisruptionBudget": "spec: {maxUnavailable: 1}"}))
    wait_for(lambda: container(emu).get("resources", {}).get("limits") == {"memory": "4Gi"}, timeout=10,
             what="the edited overlay")
    assert "tolerations" not in deployment(emu)["spec"]["template"]["spec"]
    assert "nodeSelector" not in deployment(emu)["spec"]["template"]["spec"]
    pdb = wait_for(lambda: emu.get("policy/v1", "PodDisruptionBudget", "waypoint", "demo"), timeout=10,
                   what="the PDB")
    assert pdb["spec"] == {"selector": {"matchLabels": {"gateway.networking.k8s.io/gateway-name": "waypoint"}},
                           "maxUnavailable": 1}
    wait_for(lambda: emu.get("autoscaling/v2", "HorizontalPodAutoscaler", "waypoint", "demo") is None,
             timeout=10, what="the HPA deleted once its key is gone")
    # the parametersRef removed from the Gateway: the rendered objects again, and no PDB
    gw = emu.get(GW_V1, "Gateway", "waypoint", "demo")
    del gw["spec"]["infrastructure"]
    emu.update(gw)
    wait_for(lambda: emu.get("policy/v1", "PodDisruptionBudget", "waypoint", "demo") is None, timeout=10,
             what="the PDB deleted once the Gateway has no parameters")
    wait_for(lambda: container(emu).get("resources", {}).get("limits") == {"memory": "1Gi"}, timeout=10,
             what="the rendered resources again")
    # a Gateway that never had parameters costs no HPA/PDB requests
    seen = len(emu.requests)
    emu.create(gateway("plain"))
    wait_for(lambda: emu.get("apps/v1", "Deployment", "plain", "demo"), timeout=10, what="the plain Deployment")
    assert not [r for r in emu.requests[seen:] if "/plain" in r[1] and ("autoscalers" in r[1] or "budgets" in r[1])]
    # deleting the Gateway deletes what it owned
    emu.delete(GW_V1, "Gateway", "waypoint", "demo")
    assert emu.get("apps/v1", "Deployment", "waypoint", "demo") is None
    assert rec.errors == []
    assert_allowed_by_install(emu.requests)


def test_a_bad_configmap_is_invalid_parameters_and_nothing_of_it_is_applied(cluster) -> None:  # noqa: F811
    emu, rec = cluster
    emu.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo"}})
    emu.create(options({"deployment": SIZING}))
    emu.create(with_ref(gateway()))
    wait_for(lambda: container(emu).get("resources", {}).get("limits") == {"memory": "2Gi"}, timeout=10,
             what="the overlay's resources")
    # one good key and one that changes the selector: neither is applied
    emu.update(options({"deployment": SIZING.replace("2Gi", "8Gi"),
                        "service": "spec: {selector: {app: mine}}"}))
    cond = wait_for(lambda: accepted(emu) if accepted(emu).get("reason") == "InvalidParameters" else None,
                    timeout=10, what="InvalidParameters")
    assert cond["status"] == "False"
    assert "ConfigMap demo/wp-options" in cond["message"] and "key service: spec.selector is Ambit's" \
        in cond["message"], cond["message"]
    threading.Event().wait(0.3)
    assert container(emu)["resources"]["limits"] == {"memory": "2Gi"}          # as last rendered
    assert emu.get("v1", "Service", "waypoint", "demo")["spec"]["selector"] == {
        "gateway.networking.k8s.io/gateway-name": "waypoint"}
    # a key that is no overlay, then a missing ConfigMap
    emu.update(options({"deployment": SIZING, "replicas": "3"}))
    wait_for(lambda: "key replicas: not an overlay" in accepted(emu).get("message", ""), timeout=10,
             what="the unknown key reported")
    emu.delete("v1", "ConfigMap", "wp-options", "demo")
    wait_for(lambda: "ConfigMap demo/wp-options: the ConfigMap does not exist" in accepted(emu).get("message", ""),
             timeout=10, what="the missing ConfigMap reported")
    # fixed: accepted again, and the new overlay applied
    emu.create(options({"deployment": SIZING.replace("2Gi", "3Gi")}))
    wait_for(lambda: accepted(emu).get("status") == "True", timeout=10, what="Accepted again")
    wait_for(lambda: container(emu).get("resources", {}).get("limits") == {"memory": "3Gi"}, timeout=10,
             what="the fixed overlay")


def test_a_scaled_deployment_keeps_its_replicas(cluster) -> None:  # noqa: F811
    """kubectl scale (or an HPA) writes spec.replicas; the controller sets it on creation only, so
    a re-render (here: the Gateway's labels change) keeps the count."""
    emu, rec = cluster
    emu.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo"}})
    emu.create(gateway())
    dep = wait_for(lambda: deployment(emu) or None, timeout=10, what="the Deployment")
    assert dep["spec"]["replicas"] == 1                 # WaypointDeploySettings.replicas, on creation
    dep["spec"]["replicas"] = 4
    emu.update(dep)                                     # kubectl scale --replicas=4
    gw = emu.get(GW_V1, "Gateway", "waypoint", "demo")
    gw["spec"]["infrastructure"] = {"labels": {"team": "payments"}}
    emu.update(gw)
    wait_for(lambda: deployment(emu)["spec"]["template"]["metadata"]["labels"].get("team") == "payments",
             timeout=10, what="re-rendered")
    assert deployment(emu)["spec"]["replicas"] == 4
    assert rec.errors == []
