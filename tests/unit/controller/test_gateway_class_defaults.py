"""A Gateway class's defaults, sans-IO: the ConfigMap of the root namespace labelled
`gateway.istio.io/defaults-for-class: <class>` (controller/waypoints/class_defaults.py) overlays every
Gateway of the class before the Gateway's own parametersRef, which wins (controller/waypoints/params.py),
as Istio's deployment controller merges them. What a platform team relies on: the defaults reach a
Gateway with no parameters, a team's own overlay beats them, a bad defaults ConfigMap is named and
applies nothing, and two ConfigMaps for one class resolve the same way every time."""

from __future__ import annotations

from typing import Any

from ambit.kube.resource import Resource
from controller.sources.kube import default_types
from controller.waypoints import class_defaults
from controller.waypoints.params import apply, check
from controller.waypoints.render import WaypointDeploySettings, apply_update, optional_objects, render
from tests.unit.controller.test_gateway_params import SIZING

S = WaypointDeploySettings(image="ambit:test", controller_address="ctl:15012", root_namespace="ambit-system")
LABEL = "gateway.istio.io/defaults-for-class"


def gateway(cls: str = "ambit-waypoint", own: bool = False) -> dict[str, Any]:
    gw = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
          "metadata": {"name": "wp", "namespace": "demo", "uid": "u1"},
          "spec": {"gatewayClassName": cls, "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}}
    if own:
        gw["spec"]["infrastructure"] = {"parametersRef": {"group": "", "kind": "ConfigMap", "name": "wp-options"}}
    return gw


def cm(name: str, ns: str, data: dict[str, str], cls: str | None = None, created: str = "2026-01-01T00:00:00Z",
       ) -> dict[str, Any]:
    md: dict[str, Any] = {"name": name, "namespace": ns, "creationTimestamp": created}
    if cls is not None:
        md["labels"] = {LABEL: cls}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": md, "data": data}


def store(*cms: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(c["metadata"]["namespace"], c["metadata"]["name"]): c for c in cms}


def defaults(data: dict[str, str], cls: str = "ambit-waypoint", **kw: Any) -> dict[str, Any]:
    return cm("waypoint-defaults", "ambit-system", data, cls, **kw)


def own(data: dict[str, str]) -> dict[str, Any]:
    return cm("wp-options", "demo", data)


def deployed(gw: dict[str, Any], cms: dict[tuple[str, str], dict[str, Any]]) -> dict[str, dict[str, Any]]:
    p = check(gw, cms, S)
    assert p is not None and p.errors == [], p and p.message()
    objs, errors = apply(render(gw, S), optional_objects(gw), p)
    assert errors == []
    return {o["kind"]: o for o in objs}


def pod(objs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return objs["Deployment"]["spec"]["template"]["spec"]


def test_class_defaults_reach_a_gateway_without_parameters_of_that_class_only() -> None:
    cms = store(defaults({"deployment": SIZING, "podDisruptionBudget": "spec: {maxUnavailable: 1}"}))
    objs = deployed(gateway(), cms)
    assert pod(objs)["containers"][0]["resources"]["limits"] == {"memory": "2Gi"}
    assert pod(objs)["nodeSelector"] == {"pool": "mesh"}
    assert objs["PodDisruptionBudget"]["spec"]["maxUnavailable"] == 1
    # the ingress class `ambit` and the Istio-named waypoint class have no defaults here
    assert check(gateway("ambit"), cms, S) is None and check(gateway("istio-waypoint"), cms, S) is None
    # the label outside the root namespace selects nothing
    elsewhere = store(cm("waypoint-defaults", "demo", {"deployment": SIZING}, "ambit-waypoint"))
    assert check(gateway(), elsewhere, S) is None
    assert "root namespace (ambit-system) only" in class_defaults.misplaced(
        elsewhere[("demo", "waypoint-defaults")], "ambit-system")
    # ... and so does another root namespace than the controller's
    assert check(gateway(), cms, WaypointDeploySettings(image="", controller_address="", root_namespace="mesh")) \
        is None


def test_the_gateways_own_overlay_merges_after_the_class_defaults_and_wins() -> None:
    cms = store(defaults({"deployment": SIZING, "service": "metadata: {annotations: {lb: internal, team: mesh}}"}),
                own({"deployment": "spec: {template: {spec: {nodeSelector: {pool: payments}, containers: "
                                    "[{name: waypoint, resources: {limits: {memory: 4Gi}}}]}}}",
                     "service": "metadata: {annotations: {lb: external}}"}))
    objs = deployed(gateway(own=True), cms)
    c = pod(objs)["containers"][0]
    assert c["resources"]["limits"] == {"memory": "4Gi"}                       # the Gateway's
    assert c["resources"]["requests"] == {"cpu": "500m", "memory": "512Mi"}    # the class's, merged under it
    assert pod(objs)["nodeSelector"] == {"pool": "payments"}
    assert pod(objs)["tolerations"] == [{"key": "dedicated", "operator": "Equal", "value": "mesh",
                                         "effect": "NoSchedule"}]
    ann = objs["Service"]["metadata"]["annotations"]
    assert (ann["lb"], ann["team"]) == ("external", "mesh")
    # a Gateway removes a class default with null, as strategic merge does
    cms[("demo", "wp-options")]["data"] = {"deployment": "spec: {template: {spec: {tolerations: null}}}"}
    assert "tolerations" not in pod(deployed(gateway(own=True), cms))


def test_invalid_class_defaults_name_the_configmap_and_key_and_apply_nothing() -> None:
    cms = store(defaults({"deployment": SIZING, "service": "spec: {selector: {app: mine}}"}),
                own({"deployment": "spec: {template: {spec: {nodeSelector: {pool: payments}}}}"}))
    p = check(gateway(own=True), cms, S)
    assert p is not None
    [bad] = p.errors
    assert bad.startswith("key service: spec.selector is Ambit's")
    msg = p.message()
    assert msg.startswith(f"class defaults ({LABEL}: ambit-waypoint) ConfigMap ambit-system/waypoint-defaults: "
                          "key service: spec.selector is Ambit's"), msg
    assert "parametersRef" not in msg.split(" (nothing")[0]       # the Gateway's own is not blamed
    # neither the valid class key nor the Gateway's own valid overlay is applied: nothing is
    assert apply(render(gateway(own=True), S), optional_objects(gateway(own=True)), p) == ([], [bad])
    # a key that is no overlay, and YAML that does not parse
    cms[("ambit-system", "waypoint-defaults")]["data"] = {"replicas": "3", "deployment": "spec: [1"}
    errs = check(gateway(), cms, S).errors
    assert errs[0].startswith("key replicas: not an overlay") and errs[1].startswith("key deployment: not YAML")


def test_an_owned_field_changed_by_the_gateways_overlay_is_blamed_on_it_not_on_the_class() -> None:
    cms = store(defaults({"deployment": SIZING}),
                own({"deployment": "spec: {template: {spec: {serviceAccountName: other}}}"}))
    p = check(gateway(own=True), cms, S)
    assert p is not None and [la.errors for la in p.layers] == [[], [
        "key deployment: spec.template.spec.serviceAccountName is Ambit's: it is the gateway's SPIFFE identity, "
        "which ztunnels and policy expect"]]


def test_a_class_autoscaler_and_a_replica_count_fight_unless_a_later_layer_nulls_it() -> None:
    hpa = "spec: {minReplicas: 2, maxReplicas: 8}"
    cms = store(defaults({"deployment": "spec: {replicas: 3}"}), own({"horizontalPodAutoscaler": hpa}))
    [e] = check(gateway(own=True), cms, S).errors
    assert "the horizontalPodAutoscaler owns the replica count" in e and "replicas: null" in e
    cms[("demo", "wp-options")]["data"]["deployment"] = "spec: {replicas: null}"
    objs = deployed(gateway(own=True), cms)
    assert "replicas" not in objs["Deployment"]["spec"] and objs["HorizontalPodAutoscaler"]["spec"]["maxReplicas"] == 8
    # a class HPA and a Gateway that sets replicas: the Gateway's overlay is the one to fix
    cms = store(defaults({"horizontalPodAutoscaler": hpa}), own({"deployment": "spec: {replicas: 5}"}))
    p = check(gateway(own=True), cms, S)
    assert [bool(la.errors) for la in p.layers] == [False, True]


def test_two_configmaps_for_one_class_the_oldest_applies_then_the_first_name() -> None:
    old = cm("b-defaults", "ambit-system", {"deployment": "spec: {template: {spec: {nodeSelector: {pool: b}}}}"},
             "ambit-waypoint", created="2026-01-01T00:00:00Z")
    new = cm("a-defaults", "ambit-system", {"deployment": "spec: {template: {spec: {nodeSelector: {pool: a}}}}"},
             "ambit-waypoint", created="2026-02-01T00:00:00Z")
    for order in ((old, new), (new, old)):
        assert pod(deployed(gateway(), store(*order)))["nodeSelector"] == {"pool": "b"}
    [(cls, found)] = class_defaults.duplicates(store(new, old), "ambit-system").items()
    msg = class_defaults.duplicate_message(cls, found)
    assert "the oldest, ConfigMap ambit-system/b-defaults, is applied" in msg and "ambit-system/a-defaults not" in msg
    # created in the same second: by name
    new["metadata"]["creationTimestamp"] = old["metadata"]["creationTimestamp"]
    assert pod(deployed(gateway(), store(old, new)))["nodeSelector"] == {"pool": "a"}


def test_removing_the_class_defaults_removes_what_they_added() -> None:
    before = deployed(gateway(), store(defaults({"deployment": SIZING})))["Deployment"]
    after = render(gateway(), S)[2]                 # no defaults, no own ref: the rendered Deployment
    assert check(gateway(), {}, S) is None
    put = apply_update(before, after)
    spec = put["spec"]["template"]["spec"]
    assert "nodeSelector" not in spec and "tolerations" not in spec and "priorityClassName" not in spec


def test_the_controllers_configmap_watch_keeps_the_label_and_age_and_no_other_label() -> None:
    [t] = [t for t in default_types() if t.kind == "ConfigMap"]
    assert isinstance(t, Resource)
    raw = {"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": "d", "namespace": "ambit-system", "creationTimestamp": "2026-01-01T00:00:00Z",
                        "resourceVersion": "9", "labels": {LABEL: "ambit", "app": "x"}, "annotations": {"a": "b"}},
           "data": {"deployment": "spec: {}", "other": "x"}}
    kept = t.project(raw)
    assert kept["metadata"] == {"name": "d", "namespace": "ambit-system", "labels": {LABEL: "ambit"},
                                "creationTimestamp": "2026-01-01T00:00:00Z"}
    assert kept["data"] == {"deployment": "spec: {}"}
    plain = t.project({**raw, "metadata": {**raw["metadata"], "labels": {"app": "x"}}})
    assert plain["metadata"] == {"name": "d", "namespace": "ambit-system"}
