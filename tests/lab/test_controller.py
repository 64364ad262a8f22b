"""The controller in the lab: config from `ambit apply` reaches every ztunnel, bad config is refused
with the field named, a data-plane rejection shows in `ambit status`, and a controller outage
neither breaks traffic nor loses changes."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from ambit.dataplane import endpoint
from ambit.labstore import LabStore
from tests.lab.labctl import Lab

pytestmark = pytest.mark.lab

from tests.unit.controller.ctl_examples import EXAMPLES  # noqa: E402  (shared/ beside the clone)

NODES = ("node1", "node2")
ECHO = "http://echo.demo.svc.cluster.local:8080/"


def zt(lab: Lab, node: str, path: str) -> Any:
    status, body = endpoint.get_json(lab.dir / node / "admin.sock", path)
    assert status == 200, f"ztunnel {node} {path}: HTTP {status}: {body}"
    return body


def versions(lab: Lab) -> dict[str, str]:
    return {n: zt(lab, n, "/config_dump")["version"] for n in NODES}


def status_json(lab: Lab) -> tuple[int, dict[str, Any]]:
    p = lab.ambit("status", "-o", "json", check=False)
    assert p.stdout, f"ambit status printed nothing: {p.stderr}"
    return p.returncode, json.loads(p.stdout)


def manifests() -> list[Path]:
    return sorted((EXAMPLES / "istio").glob("*.yaml")) + sorted((EXAMPLES / "gateway-api").glob("*.yaml"))


def docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def ready(lab: Lab, node: str) -> bool:
    """ztunnel's readiness: 503 until it is synced, so poll the status (zt() insists on a 200)."""
    return endpoint.get_json(lab.dir / node / "admin.sock", "/healthz/ready")[0] == 200


def wait_until_everywhere(lab: Lab, pred, what: str, timeout: float = 10.0) -> float:
    """Poll every ztunnel's admin socket until pred(node) holds on all; returns when it did (time.time())."""
    deadline = time.monotonic() + timeout
    pending = set(NODES)
    while pending:
        for n in sorted(pending):
            if pred(n):
                pending.discard(n)
        if not pending:
            return time.time()
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} on {sorted(pending)}")
        time.sleep(0.01)
    return time.time()


def store_written_at(lab: Lab) -> float:
    return (lab.dir / "store.json").stat().st_mtime_ns / 1e9


def test_every_example_applies_and_reads_back(lab: Lab) -> None:
    files = manifests()
    assert len(files) >= 10, f"examples missing under {EXAMPLES}"
    args = [a for f in files for a in ("-f", str(f))]
    try:
        out = lab.ambit("apply", *args).stdout
        applied = [(f, d) for f in files for d in docs(f)]
        stored: dict[tuple[str, str, str], dict[str, Any]] = {}
        for kind in sorted({d["kind"] for _, d in applied}):
            for o in json.loads(lab.ambit("get", kind, "-A", "-o", "json").stdout)["items"]:
                stored[(kind, o["metadata"]["namespace"], o["metadata"]["name"])] = o
        for f, d in applied:
            name = d["metadata"]["name"]
            assert f"/{name} created" in out or f"/{name} configured" in out or f"/{name} unchanged" in out
            got = stored.get((d["kind"], d["metadata"].get("namespace", "default"), name))
            assert got is not None and got["spec"] == d["spec"], f"{f.name}: {d['kind']}/{name} reads back different"
        # The controller took them all: nothing rejected, every ztunnel in sync with it.
        rc, st = status_json(lab)
        assert rc == 0 and not st["config_errors"], st["config_errors"]
        policies = zt(lab, "node1", "/policies")
        assert {"default/myapp-auth"} <= {f"{a['namespace']}/{a['name']}" for a in policies["authorizations"]}
        assert any(p["name"] == "default" and p["mode"] == "STRICT" for p in policies["peer_authns"])
    finally:
        lab.ambit("delete", *args, "--ignore-not-found", check=False)
        # the lab as it was found, ztunnels included (one store write, one snapshot: once its policies
        # are gone they hold the config without the examples, which the next test takes as its baseline)
        wait_until_everywhere(lab, lambda n: not _example_policies(zt(lab, n, "/policies")), "examples gone")


def _example_policies(policies: dict[str, Any]) -> bool:
    return ("default/myapp-auth" in {f"{a['namespace']}/{a['name']}" for a in policies["authorizations"]}
            or any(p["name"] == "default" and p["mode"] == "STRICT" for p in policies["peer_authns"]))


def test_broken_copy_is_rejected_naming_the_field_and_nothing_changes(lab: Lab) -> None:
    vs_file = EXAMPLES / "istio" / "virtual-service.yaml"
    good = docs(vs_file)[0]
    v0 = versions(lab)
    lab.ambit("apply", "-f", str(vs_file))
    try:
        wait_until_everywhere(lab, lambda n: ready(lab, n), "sync")
        # the baseline is the config with the good VirtualService in it (the config version covers
        # every type), not the one before it that the apply has yet to replace
        wait_until_everywhere(lab, lambda n: zt(lab, n, "/config_dump")["version"] != v0[n], "the good copy pushed")
        before_obj = json.loads(lab.ambit("get", "vs", good["metadata"]["name"], "-o", "json").stdout)
        before = versions(lab)
        bad = copy.deepcopy(good)
        bad["spec"]["http"][0]["route"][0]["weight"] = "lots"
        p = lab.ambit("apply", "-f", "-", input=yaml.safe_dump(bad), check=False)
        assert p.returncode != 0
        assert "VirtualService/default/myapp: spec.http[0].route[0].weight:" in p.stderr and "nothing was applied" in p.stderr
        after_obj = json.loads(lab.ambit("get", "vs", good["metadata"]["name"], "-o", "json").stdout)
        assert after_obj == before_obj

        # A writer that skips the CLI's validation (the store is shared): the controller keeps the
        # last good version, names the field in `ambit status`, and the ztunnels see no change.
        LabStore(lab.dir / "store.json").apply([{**bad, "metadata": {**bad["metadata"], "namespace": "default"}}])
        deadline = time.monotonic() + 10
        while True:
            rc, st = status_json(lab)
            if st["config_errors"] or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert rc != 0
        assert {"ref": "VirtualService/default/myapp", "path": "spec.http[0].route[0].weight"}.items() <= \
            st["config_errors"][0].items()
        assert versions(lab) == before
        assert "spec.http[0].route[0].weight" in lab.ambit("status", check=False).stdout
    finally:
        lab.ambit("delete", "-f", str(vs_file), "--ignore-not-found", check=False)
    lab.wait_for(lambda: status_json(lab)[0] == 0 and not status_json(lab)[1]["config_errors"], timeout=10,
                 what="deleting the object clears its error")


def test_changes_reach_every_ztunnel_within_a_second(lab: Lab) -> None:
    """Acceptance: a pod add, a namespace label and a new Service reach every ztunnel's config in
    under 1 s (measured from the store write to the change being visible on the admin socket)."""
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "late", "namespace": "ctltest", "labels": {"app": "late"}},
           # A node the lab does not have: no agent tries to capture it, every ztunnel must know it.
           "spec": {"nodeName": "node9", "serviceAccountName": "late", "containers": [{"name": "app"}]},
           "status": {"phase": "Running", "podIP": "10.210.9.5", "podIPs": [{"ip": "10.210.9.5"}]}}
    ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ctltest"}}
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "late", "namespace": "ctltest"},
           "spec": {"clusterIP": "10.96.0.99", "selector": {"app": "late"},
                    "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}

    def workload(n: str) -> dict[str, Any] | None:
        return next((w for w in zt(lab, n, "/workloads") if w["namespace"] == "ctltest" and w["name"] == "late"), None)

    latencies: dict[str, float] = {}
    try:
        lab.ambit("apply", "-f", "-", input=yaml.safe_dump_all([ns, pod]))
        done = wait_until_everywhere(lab, lambda n: workload(n) is not None, "the new pod")
        latencies["pod add"] = done - store_written_at(lab)

        lab.ambit("label", "namespace", "ctltest", "ambit.io/dataplane-mode=ambient")
        done = wait_until_everywhere(lab, lambda n: (workload(n) or {}).get("enrolled") is True, "enrolment")
        latencies["namespace label"] = done - store_written_at(lab)

        lab.ambit("apply", "-f", "-", input=yaml.safe_dump(svc))

        def has_service(n: str) -> bool:
            return any(s["name"] == "late" and s["vips"] == ["10.96.0.99"] and
                       [e["ip"] for e in s["endpoints"]] == ["10.210.9.5"] for s in zt(lab, n, "/services"))
        done = wait_until_everywhere(lab, has_service, "the new service")
        latencies["service add"] = done - store_written_at(lab)
    finally:
        lab.ambit("delete", "svc", "late", "-n", "ctltest", "--ignore-not-found", check=False)
        lab.ambit("delete", "pod", "late", "-n", "ctltest", "--ignore-not-found", check=False)
        lab.ambit("delete", "ns", "ctltest", "--ignore-not-found", check=False)
    print("propagation latencies:", {k: f"{v * 1000:.0f} ms" for k, v in latencies.items()})
    for what, secs in latencies.items():
        assert secs < 1.0, f"{what} took {secs:.3f}s to reach every ztunnel"
    wait_until_everywhere(lab, lambda n: workload(n) is None, "the pod's removal")


def test_internal_traffic_policy_local_keeps_clients_on_their_nodes_endpoints(lab: Lab) -> None:
    """kube-proxy's rule, applied by ztunnel: echo-v1 runs on node1, echo-v2 on node2; through a
    Service with `internalTrafficPolicy: Local`, demo/client (node1) reaches only echo-v1."""
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "echo-local", "namespace": "demo"},
           "spec": {"clusterIP": "10.96.0.97", "selector": {"app": "echo"}, "internalTrafficPolicy": "Local",
                    "ports": [{"name": "http", "port": 8080, "targetPort": 8080}]}}
    try:
        lab.ambit("apply", "-f", "-", input=yaml.safe_dump(svc))
        wait_until_everywhere(lab, lambda n: any(s["name"] == "echo-local" and s.get("node_local") and
                                                 len(s["endpoints"]) == 2 for s in zt(lab, n, "/services")),
                              "the node-local service")
        seen = {lab.curl("demo/client", "http://10.96.0.97:8080/")["version"] for _ in range(8)}
        assert seen == {"v1"}, f"a node1 client reached {seen} through a Local service"
    finally:
        lab.ambit("delete", "svc", "echo-local", "-n", "demo", "--ignore-not-found", check=False)


def test_traffic_distribution_keeps_clients_close_by_the_field_and_the_istio_annotation(lab: Lab) -> None:
    """Kubernetes trafficDistribution, applied by ztunnel as Istio's: echo-v1 runs on node1, echo-v2
    on node2, and the lab's nodes have no zone labels. Through a Service with `PreferSameNode`,
    demo/client (node1) reaches only echo-v1; with `PreferClose` (same zone: every endpoint here
    shares the unlabelled zone) it reaches both; with the field removed and Istio's annotation
    `networking.istio.io/traffic-distribution: PreferSameNode`, only echo-v1 again."""
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "echo-near", "namespace": "demo"},
           "spec": {"clusterIP": "10.96.0.98", "selector": {"app": "echo"}, "trafficDistribution": "PreferSameNode",
                    "ports": [{"name": "http", "port": 8080, "targetPort": 8080}]}}

    def reached(preference: str) -> set[str]:
        wait_until_everywhere(lab, lambda n: any(s["name"] == "echo-near" and s.get("traffic_distribution") == preference
                                                 and len(s["endpoints"]) == 2 for s in zt(lab, n, "/services")),
                              f"the {preference} service")
        # one curl, six connections (Connection: close): ztunnel balances each connection on its own
        p = lab.exec("demo/client", "curl", "-sS", "--fail", "-m", "5", "-H", "Connection: close",
                     *["http://10.96.0.98:8080/"] * 6, timeout=30)
        assert p.returncode == 0, p.stderr
        return {json.loads(line)["version"] for line in p.stdout.splitlines() if line.strip()}
    try:
        lab.ambit("apply", "-f", "-", input=yaml.safe_dump(svc))
        assert reached("PreferSameNode") == {"v1"}, "a node1 client left its node with PreferSameNode"
        described = lab.ambit("describe", "svc", "echo-near", "-n", "demo").stdout
        assert "balancing:  PreferSameNode: the client's node, then subzone" in described, described
        svc["spec"]["trafficDistribution"] = "PreferClose"
        lab.ambit("apply", "-f", "-", input=yaml.safe_dump(svc))
        assert reached("PreferSameZone") == {"v1", "v2"}, "PreferClose narrowed within one (unlabelled) zone"
        del svc["spec"]["trafficDistribution"]
        svc["metadata"]["annotations"] = {"networking.istio.io/traffic-distribution": "PreferSameNode"}
        lab.ambit("apply", "-f", "-", input=yaml.safe_dump(svc))
        assert reached("PreferSameNode") == {"v1"}, "Istio's annotation was not applied"
    finally:
        lab.ambit("delete", "svc", "echo-near", "-n", "demo", "--ignore-not-found", check=False)
        # the lab as it was found, ztunnels included: the next test reads their Services as its baseline
        wait_until_everywhere(lab, lambda n: all(s["name"] != "echo-near" for s in zt(lab, n, "/services")),
                              "echo-near gone from every ztunnel")


def test_a_vip_collision_is_nacked_by_ztunnels_and_shown_in_status(lab: Lab) -> None:
    """Two Services on one VIP: the store and the controller accept it (the Kubernetes API server
    would refuse the second), but a ztunnel cannot route an ambiguous VIP and refuses the update.
    `ambit status` shows the NACK with its reason and fails; ztunnels keep the previous services."""
    echo_vip = next(s["vip"] for s in lab.status()["services"] if s["name"] == "echo")
    dup = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "echo-copy", "namespace": "demo"},
           "spec": {"clusterIP": echo_vip, "selector": {"app": "echo"},
                    "ports": [{"name": "http", "port": 8080, "targetPort": 8080}]}}
    before = {n: sorted(s["name"] for s in zt(lab, n, "/services")) for n in NODES}
    try:
        lab.ambit("apply", "-f", "-", input=yaml.safe_dump(dup))

        def nacked() -> bool:
            _, st = status_json(lab)
            return all(any(t["nacking"] and t["type_url"] == "ambit.io/Service" for t in s["types"])
                       for s in st["subscribers"] if s["node"]["kind"] == "ztunnel" and s["connected"])
        deadline = time.monotonic() + 10
        while not nacked():
            assert time.monotonic() < deadline, "ztunnels did not NACK the colliding Service"
            time.sleep(0.05)
        p = lab.ambit("status", check=False)
        assert p.returncode == 1
        assert f"VIP {echo_vip} is claimed by more than one Service (demo/echo, demo/echo-copy)" in p.stdout
        assert "ztunnel/node1" in p.stdout and "ztunnel/node2" in p.stdout
        assert {n: sorted(s["name"] for s in zt(lab, n, "/services")) for n in NODES} == before
        assert lab.curl("demo/client", ECHO)["namespace"] == "demo", "the last good config keeps serving"
    finally:
        lab.ambit("delete", "svc", "echo-copy", "-n", "demo", "--ignore-not-found", check=False)
    deadline = time.monotonic() + 10
    while status_json(lab)[0] != 0:
        assert time.monotonic() < deadline, lab.ambit("status", check=False).stdout
        time.sleep(0.05)


def test_controller_outage_keeps_traffic_and_resyncs_after(lab: Lab) -> None:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "away", "namespace": "ctlout"},
           "spec": {"nodeName": "node9", "serviceAccountName": "away", "containers": [{"name": "app"}]},
           "status": {"phase": "Running", "podIP": "10.210.9.6"}}
    ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ctlout"}}
    lab.ambit("apply", "-f", "-", input=yaml.safe_dump_all([ns, pod]))

    def away(n: str) -> dict[str, Any] | None:
        return next((w for w in zt(lab, n, "/workloads") if w["namespace"] == "ctlout"), None)
    try:
        wait_until_everywhere(lab, lambda n: away(n) is not None, "the pod")
        dump_before = {n: zt(lab, n, "/config_dump") for n in NODES}

        lab.ambit("lab", "stop", "controller")
        wait_until_everywhere(lab, lambda n: not zt(lab, n, "/config_dump")["client"]["connected"],
                              "ztunnels to notice the controller is gone")
        assert lab.curl("demo/client", ECHO)["namespace"] == "demo"
        for n in NODES:
            d = zt(lab, n, "/config_dump")
            assert (d["version"], d["workloads"], d["services"]) == \
                (dump_before[n]["version"], dump_before[n]["workloads"], dump_before[n]["services"])

        # A ztunnel restarted during the outage serves its cached config at once (not "ready":
        # it cannot know the cache is current), and traffic still flows.
        old_pid = lab.proc_pid("ztunnel/node1")
        lab.ambit("lab", "restart", "ztunnel", "--node", "node1")
        lab.wait_for(lambda: lab.proc_pid("ztunnel/node1") not in (None, old_pid), what="ztunnel restart")
        d = lab.wait_for(lambda: _try(lambda: zt(lab, "node1", "/config_dump")), what="restarted admin")
        assert d["workloads"] == dump_before["node1"]["workloads"] and d["synced"] is False
        assert endpoint.get_json(lab.dir / "node1" / "admin.sock", "/healthz/ready")[0] == 503
        lab.wait_for(lambda: _try(lambda: lab.curl("demo/client", ECHO)), timeout=15, what="traffic after restart")

        # A change made while the controller is down is picked up when it is back.
        lab.ambit("label", "namespace", "ctlout", "ambit.io/dataplane-mode=ambient")
        lab.ambit("lab", "start", "controller")
        wait_until_everywhere(lab, lambda n: (away(n) or {}).get("enrolled") is True, "the change made during the outage",
                              timeout=20)
        wait_until_everywhere(lab, lambda n: ready(lab, n), "readiness", timeout=20)

        # ztunnel state equals controller state: every type in sync at the controller's version,
        # and each ztunnel holds exactly the store's running pods, once each.
        def all_in_sync() -> bool:
            rc, st = status_json(lab)
            subs = [s for s in st["subscribers"] if s["connected"] and s["node"]["kind"] == "ztunnel"]
            return (rc == 0 and sorted(s["node"]["name"] for s in subs) == list(NODES) and
                    all(t["in_sync"] and t["acked_version"] == st["version"] for s in subs for t in s["types"]))
        lab.wait_for(all_in_sync, timeout=10, what="every ztunnel in sync with the controller")
        pods = json.loads(lab.ambit("get", "pods", "-A", "-o", "json").stdout)["items"]
        want = sorted(p["metadata"]["uid"] for p in pods if (p.get("status") or {}).get("phase") == "Running")
        _, st = status_json(lab)
        for n in NODES:
            d = zt(lab, n, "/config_dump")
            assert sorted(w["uid"] for w in d["workloads"]) == want
            assert d["version"] == st["version"]
    finally:
        lab.ambit("lab", "start", "controller", check=False)
        lab.ambit("delete", "pod", "away", "-n", "ctlout", "--ignore-not-found", check=False)
        lab.ambit("delete", "ns", "ctlout", "--ignore-not-found", check=False)


def _try(fn):
    try:
        return fn()
    except (OSError, AssertionError, ValueError):
        return None
