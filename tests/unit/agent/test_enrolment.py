from __future__ import annotations

from agent import enrolment
from agent.enrolment import PodRef


def pod(name: str, ns: str = "demo", node: str = "node1", ip: str | None = "10.0.0.1", labels=None,
        annotations=None, phase: str = "Running") -> dict:
    return {"metadata": {"name": name, "namespace": ns, "uid": f"uid-{ns}-{name}", "labels": labels or {},
                         "annotations": {"lab.ambit.io/netns": f"/n/{name}", **(annotations or {})}},
            "spec": {"nodeName": node, "serviceAccountName": "sa"},
            "status": {"phase": phase, **({"podIP": ip} if ip else {})}}


AMBIENT = {"demo": {"ambit.io/dataplane-mode": "ambient"}, "legacy": {}}


def test_only_ambient_namespaces_on_this_node_are_enrolled() -> None:
    pods = [pod("a"), pod("b", ns="legacy"), pod("c", node="node2")]
    assert set(enrolment.desired("node1", pods, AMBIENT)) == {"uid-demo-a"}


def test_istio_label_is_honoured_for_migration() -> None:
    assert enrolment.desired("node1", [pod("a", ns="x")], {"x": {"istio.io/dataplane-mode": "ambient"}})


def test_pod_opt_out_and_pods_without_a_sandbox() -> None:
    pods = [pod("a", labels={"ambit.io/dataplane-mode": "none"}), pod("b", ip=None), pod("c", phase="Succeeded"),
            pod("d", ip=None, phase="Pending")]
    assert enrolment.desired("node1", pods, AMBIENT) == {}


def test_a_pending_pod_with_an_address_is_enrolled() -> None:
    """Its sandbox is up: init containers run (and may connect) and the app starts any moment,
    however long the image pull. It was left out until Running, so once the CNI plugin's grace had
    passed (a slow pull) its first connections bypassed ztunnel."""
    assert set(enrolment.desired("node1", [pod("c", phase="Pending")], AMBIENT)) == {"uid-demo-c"}


def test_plan_adds_removes_and_updates_on_annotation_change() -> None:
    want = enrolment.desired("node1", [pod("a"), pod("b")], AMBIENT)
    p = enrolment.plan({}, want)
    assert [r.name for r in p.add] == ["a", "b"] and not p.remove and not p.update
    current: dict[str, PodRef | None] = dict(want)
    changed = enrolment.desired("node1", [pod("a", annotations={"ambit.io/exclude-outbound-ports": "53"})], AMBIENT)
    p = enrolment.plan(current, changed)
    assert [r.name for r in p.update] == ["a"] and p.remove == ["uid-demo-b"] and not p.add


def test_adopted_pods_with_unknown_refs_are_refreshed() -> None:
    want = enrolment.desired("node1", [pod("a")], AMBIENT)
    p = enrolment.plan({"uid-demo-a": None, "uid-gone": None}, want)
    assert [r.name for r in p.update] == ["a"] and p.remove == ["uid-gone"]


def test_label_changes_alone_do_not_force_a_reattach() -> None:
    a = enrolment.desired("node1", [pod("a", labels={"x": "1"})], AMBIENT)
    b = enrolment.desired("node1", [pod("a", labels={"x": "2"})], AMBIENT)
    assert enrolment.plan(dict(a), b).update == []


def test_one_rule_for_controller_and_agent() -> None:
    """The controller's Workload.enrolled and the agent's own decision never disagree."""
    from controller.translate.workloads import is_enrolled as controller_rule
    cases = [({}, {"ambit.io/dataplane-mode": "ambient"}), ({"ambit.io/dataplane-mode": "ambient"}, {}),
             ({"ambit.io/dataplane-mode": "none"}, AMBIENT["demo"]), ({}, {}),
             ({"istio.io/dataplane-mode": "ambient", "ambit.io/dataplane-mode": "none"}, {})]
    for pod_labels, ns_labels in cases:
        p = pod("a", ns="x", labels=pod_labels)
        agent_says = bool(enrolment.desired("node1", [p], {"x": ns_labels}))
        assert agent_says == controller_rule(p, ns_labels), (pod_labels, ns_labels)


def test_a_pod_can_enrol_itself_in_an_unlabelled_namespace() -> None:
    assert enrolment.desired("node1", [pod("a", ns="legacy", labels={"ambit.io/dataplane-mode": "ambient"})], AMBIENT)


def test_every_pod_of_the_node_is_known_with_the_decision_even_before_it_has_an_ip() -> None:
    """The agent keeps a pod the CNI plugin captured until the API server says something about it:
    so a pod without an IP yet is "known, to capture", and a pod of a plain namespace "known, no"."""
    pods = [pod("a", ip=None, phase="Pending"), pod("b", ns="legacy"), pod("c", node="node2"),
            pod("d", labels={"ambit.io/dataplane-mode": "none"})]
    shown, refused = enrolment.known_uids(enrolment.local_pods("node1", pods, AMBIENT))
    assert shown == {"uid-demo-a", "uid-legacy-b", "uid-demo-d"}
    assert refused == {"uid-legacy-b", "uid-demo-d"}
