"""When the agent repairs a pod it cannot capture, and what it does (agent/repair.py): pure, with an
injected clock. A running enrolled pod whose capture keeps failing runs uncaptured (plaintext from
outside the mesh reaches it); after the bound it is labelled or deleted, a few at a time."""

from __future__ import annotations

from agent.repair import LABEL, Failing, Repair, RepairPlanner, RepairSettings, check_pod


def failing(uid: str, failures: int, reason: str = "OSError: [Errno 7] Argument list too long: ambit_pods") -> Failing:
    return Failing(uid, "mesh", f"pod-{uid}", failures, reason)


def planner(mode: str = "delete", **kw: float) -> RepairPlanner:
    return RepairPlanner(RepairSettings(mode=mode, **kw))  # type: ignore[arg-type]


def test_a_pod_is_repaired_only_once_both_the_duration_and_the_attempts_have_passed() -> None:
    p = planner(after=60.0, min_attempts=3)
    known = {"u1"}
    assert p.plan(0.0, [failing("u1", 1)], set(), {}, known) == []
    assert p.plan(59.0, [failing("u1", 7)], set(), {}, known) == [], "59 s is inside the bound"
    assert p.plan(61.0, [failing("u1", 2)], set(), {}, known) == [], "two attempts are not enough"
    [r] = p.plan(62.0, [failing("u1", 3)], set(), {}, known)
    assert (r.uid, r.action) == ("u1", "delete")
    assert "3 times over 62s" in r.reason and "ambit_pods" in r.reason, r.reason
    assert p.plan(200.0, [failing("u1", 9)], set(), {}, known) == [], "a pod is repaired once"


def test_a_pod_that_heals_starts_its_bound_again_when_it_fails_again() -> None:
    p = planner(after=60.0, min_attempts=1)
    p.plan(0.0, [failing("u1", 1)], set(), {}, {"u1"})
    p.plan(50.0, [], {"u1"}, {}, {"u1"})                  # captured at 50 s
    assert p.plan(70.0, [failing("u1", 1)], set(), {}, {"u1"}) == [], "the clock restarted at 70 s"
    assert [r.uid for r in p.plan(131.0, [failing("u1", 4)], set(), {}, {"u1"})] == ["u1"]


def test_off_never_repairs_and_label_labels() -> None:
    assert planner("off", after=0.0, min_attempts=1).plan(100.0, [failing("u1", 50)], set(), {}, {"u1"}) == []
    [r] = planner("label", after=0.0, min_attempts=1).plan(0.0, [failing("u1", 1)], set(), {}, {"u1"})
    assert r.action == "label"


def test_a_node_whose_capture_is_broken_for_every_pod_repairs_a_few_then_one_per_interval() -> None:
    p = planner(after=0.0, min_attempts=1, burst=3, interval=30.0)
    pods = [failing(f"u{i:02}", 5) for i in range(20)]
    known = {f.uid for f in pods}
    assert len(p.plan(0.0, pods, set(), {}, known)) == 3
    assert p.limited == 17
    assert p.plan(10.0, pods, set(), {}, known) == [], "no token yet"
    assert p.limited == 17, "a pod held back is counted once, not every turn of the loop"
    assert len(p.plan(30.0, pods, set(), {}, known)) == 1
    assert len(p.plan(90.0, pods, set(), {}, known)) == 2, "a token per 30 s"
    assert len(p.plan(10_000.0, pods, set(), {}, known)) == 3, "never more than the burst at once"


def test_a_refused_repair_is_due_again() -> None:
    p = planner(after=0.0, min_attempts=1)
    [r] = p.plan(0.0, [failing("u1", 1)], set(), {}, {"u1"})
    p.undo(r, 0.0)
    assert [x.uid for x in p.plan(1.0, [failing("u1", 2)], set(), {}, {"u1"})] == ["u1"]


def test_a_refused_label_removal_is_asked_again_after_the_interval_not_every_turn() -> None:
    p = planner("label", interval=30.0)
    labelled = {"u1": ("mesh", "pod-u1")}
    [r] = p.plan(0.0, [], {"u1"}, labelled, {"u1"})
    p.undo(r, 0.0)
    assert p.plan(10.0, [], {"u1"}, labelled, {"u1"}) == []
    assert [x.action for x in p.plan(30.0, [], {"u1"}, labelled, {"u1"})] == ["unlabel"]


def test_a_captured_pod_that_carries_the_label_has_it_removed_once() -> None:
    p = planner("off")                        # even with repair off now: the label must not lie
    [r] = p.plan(0.0, [], {"u1"}, {"u1": ("mesh", "pod-u1")}, {"u1"})
    assert (r.action, r.key) == ("unlabel", "mesh/pod-u1")
    assert p.plan(1.0, [], {"u1"}, {"u1": ("mesh", "pod-u1")}, {"u1"}) == [], "asked once"
    assert p.plan(2.0, [failing("u1", 1)], set(), {"u1": ("mesh", "pod-u1")}, {"u1"}) == [], "not while failing"


# -- the pod as the API server has it, just before acting -------------------------------------------

def pod(uid: str = "u1", node: str = "node1", **md: object) -> dict:
    return {"metadata": {"name": "pod-u1", "namespace": "mesh", "uid": uid, "labels": {"app": "a"}, **md},
            "spec": {"nodeName": node}}


OWNED = {"ownerReferences": [{"kind": "ReplicaSet", "name": "rs", "uid": "rs1", "controller": True}]}


def test_delete_only_a_pod_a_controller_re_creates_else_label_it() -> None:
    r = Repair("u1", "mesh", "pod-u1", "delete", "capture has failed")
    assert check_pod(r, pod(**OWNED), "node1")[0] == "delete"
    action, why = check_pod(r, pod(), "node1")
    assert action == "label" and "not owned by a controller" in why
    not_controller = {"ownerReferences": [{"kind": "ConfigMap", "name": "x", "uid": "c1"}]}
    assert check_pod(r, pod(**not_controller), "node1")[0] == "label"


def test_never_touch_a_pod_that_changed_since_the_decision() -> None:
    r = Repair("u1", "mesh", "pod-u1", "delete", "capture has failed")
    assert check_pod(r, None, "node1")[0] == ""
    assert check_pod(r, pod(uid="u2", **OWNED), "node1")[0] == "", "re-created under the same name"
    assert check_pod(r, pod(node="node2", **OWNED), "node1")[0] == "", "another node's pod"
    assert check_pod(r, pod(deletionTimestamp="2026-01-01T00:00:00Z", **OWNED), "node1")[0] == ""
    opted = pod(**OWNED)
    opted["metadata"]["labels"]["istio.io/dataplane-mode"] = "none"
    assert check_pod(r, opted, "node1")[0] == "", "opted out of the mesh since"
    labelled = pod()
    labelled["metadata"]["labels"][LABEL] = "true"
    assert check_pod(Repair("u1", "mesh", "pod-u1", "label", "x"), labelled, "node1")[0] == ""
    assert check_pod(Repair("u1", "mesh", "pod-u1", "unlabel", "x"), labelled, "node1")[0] == "unlabel"
    assert check_pod(Repair("u1", "mesh", "pod-u1", "unlabel", "x"), pod(), "node1")[0] == ""
