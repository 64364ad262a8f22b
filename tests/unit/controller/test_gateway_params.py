"""A Gateway's parametersRef overlays, sans-IO: Kubernetes' strategic merge for the lists that merge
by key (controller/waypoints/smp.py), and what makes a parameter set invalid
(controller/waypoints/params.py): every case a platform team meets writing one."""

from __future__ import annotations

import json
from typing import Any

import pytest

from controller.waypoints.params import MAX_OVERLAY_BYTES, check
from controller.waypoints.render import (
    OVERLAY_FIELDS_ANNOTATION,
    WaypointDeploySettings,
    apply_update,
    render,
)
from controller.waypoints.smp import MergeError, strategic_merge

S = WaypointDeploySettings(image="ambit:test", controller_address="ctl:15012")


def gateway(cls: str = "ambit-waypoint", ref: dict[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": "wp", "namespace": "demo", "uid": "u1"},
            "spec": {"gatewayClassName": cls, "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}],
                     "infrastructure": {"parametersRef": ref or {"group": "", "kind": "ConfigMap",
                                                                 "name": "wp-options"}}}}


def cms(**data: str) -> dict[tuple[str, str], dict[str, Any]]:
    return {("demo", "wp-options"): {"apiVersion": "v1", "kind": "ConfigMap",
                                     "metadata": {"name": "wp-options", "namespace": "demo"}, "data": data}}


def rendered(gw: dict[str, Any], data: dict[tuple[str, str], dict[str, Any]]) -> dict[str, dict[str, Any]]:
    from controller.waypoints.params import apply
    from controller.waypoints.render import optional_objects
    p = check(gw, data, S)
    assert p is not None and p.errors == []
    objs, errors = apply(render(gw, S), optional_objects(gw), p)
    assert errors == []
    return {o["kind"]: o for o in objs}


def errors(gw: dict[str, Any], data: dict[tuple[str, str], dict[str, Any]]) -> list[str]:
    p = check(gw, data, S)
    assert p is not None
    return p.errors


# -- the merge ------------------------------------------------------------------------------------

POD = {"apiVersion": "apps/v1", "kind": "Deployment", "spec": {"template": {"spec": {
    "containers": [{"name": "a", "image": "x", "args": ["--one"],
                    "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                    "ports": [{"containerPort": 80, "name": "http"}],
                    "volumeMounts": [{"name": "v", "mountPath": "/v"}]},
                   {"name": "b", "image": "y"}],
    "volumes": [{"name": "v", "emptyDir": {}}],
    "tolerations": [{"key": "old", "operator": "Exists"}]}}}}


def test_containers_env_ports_mounts_and_volumes_merge_by_their_kubernetes_keys() -> None:
    out = strategic_merge("Deployment", POD, {"spec": {"template": {"spec": {
        "containers": [{"name": "a", "resources": {"requests": {"memory": "1Gi"}},
                        "env": [{"name": "B", "value": "two"}, {"name": "C", "value": "3"}],
                        "ports": [{"containerPort": 80, "protocol": "TCP"}, {"containerPort": 81}],
                        "volumeMounts": [{"mountPath": "/w", "name": "w"}]},
                       {"name": "c", "image": "z"}],
        "volumes": [{"name": "w", "emptyDir": {"medium": "Memory"}}]}}}})
    a, b, c = out["spec"]["template"]["spec"]["containers"]
    assert (a["name"], b["name"], c["name"]) == ("a", "b", "c")       # merged in place, new ones appended
    assert a["image"] == "x" and a["args"] == ["--one"] and a["resources"] == {"requests": {"memory": "1Gi"}}
    assert a["env"] == [{"name": "A", "value": "1"}, {"name": "B", "value": "two"}, {"name": "C", "value": "3"}]
    assert a["ports"] == [{"containerPort": 80, "name": "http", "protocol": "TCP"}, {"containerPort": 81}]
    assert [m["mountPath"] for m in a["volumeMounts"]] == ["/v", "/w"]        # volumeMounts: by mountPath
    assert [v["name"] for v in out["spec"]["template"]["spec"]["volumes"]] == ["v", "w"]
    assert POD["spec"]["template"]["spec"]["containers"][0]["env"][1]["value"] == "2"    # not modified


def test_lists_without_a_merge_key_are_replaced_and_null_removes_a_field() -> None:
    out = strategic_merge("Deployment", POD, {"spec": {"template": {"spec": {
        "tolerations": [{"key": "gw", "operator": "Equal", "value": "true", "effect": "NoSchedule"}],
        "containers": [{"name": "a", "args": ["--two"], "image": None}]}}}})
    spec = out["spec"]["template"]["spec"]
    assert spec["tolerations"] == [{"key": "gw", "operator": "Equal", "value": "true", "effect": "NoSchedule"}]
    assert spec["containers"][0]["args"] == ["--two"] and "image" not in spec["containers"][0]


def test_patch_directives_delete_in_keyed_lists_and_replace_maps() -> None:
    out = strategic_merge("Deployment", POD, {"spec": {"template": {"spec": {
        "containers": [{"name": "b", "$patch": "delete"},
                       {"name": "a", "env": [{"name": "A", "$patch": "delete"}]}],
        "securityContext": {"$patch": "replace", "runAsUser": 1}}}}})
    [a] = out["spec"]["template"]["spec"]["containers"]
    assert a["env"] == [{"name": "B", "value": "2"}]
    assert out["spec"]["template"]["spec"]["securityContext"] == {"runAsUser": 1}
    with pytest.raises(MergeError, match=r"\$retainKeys"):
        strategic_merge("Deployment", POD, {"spec": {"$retainKeys": ["template"]}})
    with pytest.raises(MergeError, match="merge key 'name'"):
        strategic_merge("Deployment", POD, {"spec": {"template": {"spec": {"containers": [{"image": "q"}]}}}})


def test_service_ports_merge_by_port() -> None:
    svc = {"spec": {"ports": [{"name": "mesh", "port": 15008, "targetPort": 15008}]}}
    out = strategic_merge("Service", svc, {"spec": {"ports": [{"port": 15008, "appProtocol": "all"},
                                                              {"name": "x", "port": 9000}]}})
    assert out["spec"]["ports"] == [{"name": "mesh", "port": 15008, "targetPort": 15008, "appProtocol": "all"},
                                    {"name": "x", "port": 9000}]


# -- the parameters ---------------------------------------------------------------------------------

SIZING = """
spec:
  template:
    spec:
      priorityClassName: mesh-critical
      nodeSelector: {pool: mesh}
      tolerations:
      - {key: dedicated, operator: Equal, value: mesh, effect: NoSchedule}
      containers:
      - name: waypoint
        resources:
          requests: {cpu: 500m, memory: 512Mi}
          limits: {memory: 2Gi}
"""


def test_a_deployment_overlay_sets_resources_scheduling_and_keeps_what_ambit_renders() -> None:
    gw = gateway()
    objs = rendered(gw, cms(deployment=SIZING))
    assert set(objs) == {"ServiceAccount", "Service", "Deployment"}      # no HPA, no PDB without their keys
    pod = objs["Deployment"]["spec"]["template"]["spec"]
    [c] = pod["containers"]
    assert c["resources"] == {"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"memory": "2Gi"}}
    assert c["args"] == render(gw, S)[2]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert pod["nodeSelector"] == {"pool": "mesh"} and pod["priorityClassName"] == "mesh-critical"
    assert pod["tolerations"][0]["key"] == "dedicated"
    assert "replicas" not in objs["Deployment"]["spec"]         # the count is the scaler's
    assert json.loads(objs["Deployment"]["metadata"]["annotations"][OVERLAY_FIELDS_ANNOTATION]) == [
        ["spec", "template", "spec", "priorityClassName"], ["spec", "template", "spec", "nodeSelector"],
        ["spec", "template", "spec", "tolerations"]]


def test_hpa_and_pdb_are_rendered_only_with_their_keys() -> None:
    objs = rendered(gateway(), cms(horizontalPodAutoscaler="spec: {minReplicas: 2, maxReplicas: 5}",
                                   podDisruptionBudget="spec: {minAvailable: 1}"))
    hpa, pdb = objs["HorizontalPodAutoscaler"], objs["PodDisruptionBudget"]
    assert hpa["apiVersion"] == "autoscaling/v2" and pdb["apiVersion"] == "policy/v1"
    assert hpa["spec"] == {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "wp"},
                           "minReplicas": 2, "maxReplicas": 5}
    assert pdb["spec"] == {"selector": {"matchLabels": {"gateway.networking.k8s.io/gateway-name": "wp"}},
                           "minAvailable": 1}
    for o in (hpa, pdb):
        assert o["metadata"]["ownerReferences"][0]["uid"] == "u1"
        assert o["metadata"]["labels"]["ambit.io/managed-by"] == "waypoint-controller"


def test_service_and_service_account_overlays_add_annotations_and_ports() -> None:
    objs = rendered(gateway("ambit"), cms(
        service="metadata: {annotations: {lb.example.com/internal: 'true'}}\nspec: {type: NodePort}",
        serviceAccount="metadata: {annotations: {iam.example.com/role: gw}}"))
    assert objs["Service"]["metadata"]["annotations"]["lb.example.com/internal"] == "true"
    assert objs["Service"]["spec"]["type"] == "NodePort"
    assert objs["ServiceAccount"]["metadata"]["annotations"]["iam.example.com/role"] == "gw"
    # what the overlay added, key by key in the maps others write to as well (never the whole map)
    assert json.loads(objs["Service"]["metadata"]["annotations"][OVERLAY_FIELDS_ANNOTATION]) == [
        ["metadata", "annotations", "lb.example.com/internal"]]


@pytest.mark.parametrize("key, overlay, says", [
    ("deployment", "spec: {selector: {matchLabels: {app: x}}}", "spec.selector is Ambit's"),
    ("deployment", "spec: {template: {metadata: {labels: {gateway.networking.k8s.io/gateway-name: x}}}}",
     "spec.template.metadata.labels.gateway.networking.k8s.io/gateway-name is Ambit's"),
    ("deployment", "spec: {template: {metadata: {labels: {istio.io/dataplane-mode: ambient}}}}",
     "labels.istio.io/dataplane-mode is Ambit's"),
    ("deployment", "spec: {template: {spec: {containers: [{name: waypoint, args: [--debug]}]}}}",
     "containers[waypoint].args is Ambit's"),
    ("deployment", "spec: {template: {spec: {containers: [{name: waypoint, command: [sh]}]}}}",
     "containers[waypoint].command is Ambit's"),
    ("deployment", "spec: {template: {spec: {containers: [{name: waypoint, $patch: delete}]}}}",
     "containers[waypoint] is Ambit's"),
    ("deployment", "spec: {template: {spec: {serviceAccountName: default}}}", "serviceAccountName is Ambit's"),
    ("deployment", "spec: {template: {spec: {volumes: [{name: ca-token, emptyDir: {}}]}}}",
     "volumes[ca-token] is Ambit's"),
    ("deployment", "metadata: {name: other}", "metadata.name is Ambit's"),
    ("deployment", "metadata: {labels: {ambit.io/managed-by: me}}", "ambit.io/managed-by is Ambit's"),
    ("service", "spec: {selector: {app: x}}", "spec.selector is Ambit's"),
    ("service", "spec: {ports: [{port: 15008, targetPort: 9999}]}", "spec.ports[15008] is Ambit's"),
    ("horizontalPodAutoscaler", "spec: {scaleTargetRef: {name: other}}", "spec.scaleTargetRef is Ambit's"),
    ("podDisruptionBudget", "spec: {selector: {matchLabels: {app: x}}}", "spec.selector is Ambit's"),
    ("deployment", "spec: [1, 2", "key deployment: not YAML"),
    ("deployment", "- a\n- b", "a YAML list, not a map"),
    ("deployment", "spec: {template: {spec: {containers: [{image: x}]}}}", "merge key 'name'"),
])
def test_an_overlay_that_changes_what_ambit_owns_or_does_not_parse_is_invalid(key: str, overlay: str,
                                                                               says: str) -> None:
    [err] = errors(gateway(), cms(**{key: overlay}))
    assert err.startswith(f"key {key}: ") and says in err, err


def test_other_keys_kinds_missing_and_oversized_configmaps_are_invalid() -> None:
    gw = gateway()
    assert errors(gw, {}) == ["the ConfigMap does not exist"]
    [e] = errors(gw, cms(deploymnet="spec: {}"))
    assert e.startswith("key deploymnet: not an overlay (the keys are deployment, service")
    [e] = errors(gateway(ref={"group": "example.com", "kind": "GatewayParameters", "name": "x"}), cms())
    assert "from a ConfigMap (group \"\", kind ConfigMap)" in e
    big = cms()
    big[("demo", "wp-options")]["omittedData"] = {"oversize": {"deployment": MAX_OVERLAY_BYTES + 1},
                                                  "others": ["app.json"], "othersTotal": 3}
    assert errors(gw, big) == [f"key deployment: {MAX_OVERLAY_BYTES + 1} bytes, over the {MAX_OVERLAY_BYTES} bytes "
                               "the controller keeps of an overlay (an overlay says only what differs from the "
                               "rendered object)",
                               "key app.json (and 2 more): not an overlay (the keys are deployment, service, "
                               "serviceAccount, horizontalPodAutoscaler, podDisruptionBudget)"]
    [e] = errors(gw, cms(deployment="spec: {replicas: 3}", horizontalPodAutoscaler="spec: {maxReplicas: 4}"))
    assert "spec.replicas: the horizontalPodAutoscaler owns the replica count" in e
    assert check({**gw, "spec": {**gw["spec"], "infrastructure": {}}}, cms()) is None


def test_an_update_removes_what_an_earlier_overlay_added_and_never_the_replica_count() -> None:
    gw = gateway()
    before = rendered(gw, cms(deployment=SIZING + "  replicas: 3\nmetadata: {annotations: {a: b}}"))["Deployment"]
    after = rendered(gw, cms(deployment="spec: {template: {spec: {nodeSelector: {pool: other}}}}"))["Deployment"]
    put = apply_update(before, after)
    pod = put["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"pool": "other"}
    assert "tolerations" not in pod and "priorityClassName" not in pod and "a" not in put["metadata"]["annotations"]
    assert put["spec"]["replicas"] == 3         # no longer owned: kept as the scaler left it
    plain = apply_update(after, render(gw, S)[2])
    assert "nodeSelector" not in plain["spec"]["template"]["spec"]
    assert OVERLAY_FIELDS_ANNOTATION not in (plain["metadata"].get("annotations") or {})
