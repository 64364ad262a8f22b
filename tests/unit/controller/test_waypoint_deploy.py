"""Waypoints in a cluster: the controller's KubeSource + KubeWaypointReconciler against the API-server
emulator, through the official kubernetes client (no mocks): a waypoint Gateway gets its
ServiceAccount, Service and Deployment (owned by it), its status (Accepted, Programmed, address);
an update re-renders; deleting the Gateway garbage-collects them; other classes are not claimed."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from controller.sources.kube import KubeSource, make_api_client
from controller.translate import translate
from controller.waypoints.reconcile import KubeWaypointReconciler
from controller.waypoints.render import WaypointDeploySettings
from tests.support.kube_emulator import KubeEmulator
from tests.support.kube_source import running
from tests.support.wait import wait_for

GW_V1 = "gateway.networking.k8s.io/v1"


def gateway(name: str = "waypoint", cls: str = "ambit-waypoint", **labels: str) -> dict[str, Any]:
    return {"apiVersion": GW_V1, "kind": "Gateway", "metadata": {"name": name, "namespace": "demo", "labels": labels},
            "spec": {"gatewayClassName": cls, "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}}


@pytest.fixture
def cluster() -> Iterator[tuple[KubeEmulator, KubeWaypointReconciler]]:
    emu = KubeEmulator().start()
    api = make_api_client(emu.url)
    rec = KubeWaypointReconciler(api, WaypointDeploySettings(image="ambit:test", controller_address="ctl:15012"))
    source = KubeSource(make_api_client(emu.url), debounce=0.01)
    try:
        with running(source, rec.reconcile):
            yield emu, rec
    finally:
        emu.stop()


def test_waypoint_gateway_owns_deployment_service_and_sa(cluster: tuple[KubeEmulator, KubeWaypointReconciler]) -> None:
    emu, rec = cluster
    emu.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo"}})
    gw = emu.create(gateway())
    uid = gw["metadata"]["uid"]

    dep = wait_for(lambda: emu.get("apps/v1", "Deployment", "waypoint", "demo"), timeout=10, what="deployment")
    svc = wait_for(lambda: emu.get("v1", "Service", "waypoint", "demo"), timeout=10, what="service")
    sa = wait_for(lambda: emu.get("v1", "ServiceAccount", "waypoint", "demo"), timeout=10, what="service account")
    for o in (dep, svc, sa):
        [ref] = o["metadata"]["ownerReferences"]
        assert (ref["kind"], ref["name"], ref["uid"], ref["controller"]) == ("Gateway", "waypoint", uid, True)
        assert o["metadata"]["labels"]["gateway.networking.k8s.io/gateway-name"] == "waypoint"
    pod = dep["spec"]["template"]
    assert pod["spec"]["serviceAccountName"] == "waypoint"
    assert pod["metadata"]["labels"]["ambit.io/dataplane-mode"] == "none"
    assert pod["metadata"]["labels"]["istio.io/dataplane-mode"] == "none"
    assert pod["metadata"]["labels"]["gateway.networking.k8s.io/gateway-name"] == "waypoint"
    [c] = pod["spec"]["containers"]
    assert c["image"] == "ambit:test" and c["command"] == ["python3", "-m", "waypoint"]
    assert c["args"][c["args"].index("--waypoint") + 1] == "demo/waypoint"
    assert c["readinessProbe"]["httpGet"] == {"path": "/healthz/ready", "port": 15021}
    assert {"name": "mesh", "port": 15008, "targetPort": 15008, "protocol": "TCP", "appProtocol": "all"} \
        in svc["spec"]["ports"]
    assert svc["spec"]["selector"] == {"gateway.networking.k8s.io/gateway-name": "waypoint"}

    # status: Accepted, Programmed, and the Service's VIP as the address
    def programmed() -> dict[str, Any] | None:
        st = (emu.get(GW_V1, "Gateway", "waypoint", "demo") or {}).get("status") or {}
        conds = {c["type"]: c for c in st.get("conditions") or []}
        return st if conds.get("Programmed", {}).get("status") == "True" else None
    st = wait_for(programmed, timeout=10, what="Programmed")
    conds = {c["type"]: c for c in st["conditions"]}
    assert (conds["Accepted"]["status"], conds["Accepted"]["reason"]) == ("True", "Accepted")
    assert conds["Programmed"]["reason"] == "Programmed" and conds["Programmed"]["lastTransitionTime"]
    assert st["addresses"] == [{"type": "IPAddress", "value": svc["spec"]["clusterIP"]}]
    assert [lst["name"] for lst in st["listeners"]] == ["mesh"]

    # update: infrastructure labels reach the rendered objects
    gw = emu.get(GW_V1, "Gateway", "waypoint", "demo")
    gw["spec"]["infrastructure"] = {"labels": {"team": "payments"}}
    emu.update(gw)
    wait_for(lambda: (emu.get("apps/v1", "Deployment", "waypoint", "demo") or {}).get("spec", {}).get("template", {})
             .get("metadata", {}).get("labels", {}).get("team") == "payments", timeout=10, what="re-rendered")
    assert emu.get("v1", "Service", "waypoint", "demo")["spec"]["clusterIP"] == svc["spec"]["clusterIP"]  # kept
    # steady state: once everything is as wanted, the controller writes nothing more
    threading.Event().wait(0.5)
    quiet_rv = emu.resource_version
    threading.Event().wait(0.5)
    assert emu.resource_version == quiet_rv

    # delete: the garbage collector removes everything the Gateway owned
    emu.delete(GW_V1, "Gateway", "waypoint", "demo")
    for kind, av in (("Deployment", "apps/v1"), ("Service", "v1"), ("ServiceAccount", "v1")):
        assert emu.get(av, kind, "waypoint", "demo") is None
    threading.Event().wait(0.3)       # and the controller does not recreate them
    assert emu.get("apps/v1", "Deployment", "waypoint", "demo") is None
    assert rec.errors == []
    assert_allowed_by_install(emu.requests)


def assert_allowed_by_install(requests: list[tuple[str, str, dict[str, str]]]) -> None:
    """Every request the controller made is allowed by the ClusterRole `ambit install` renders."""
    from ambitctl.commands import install
    rules = install.controller_rules()
    verbs = {"GET": "get", "POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
    seen = set()
    for method, path, query in requests:
        parts = [p for p in path.split("/") if p]
        group = "" if parts[0] == "api" else parts[1]
        rest = parts[2:] if parts[0] == "api" else parts[3:]
        if rest[:1] == ["namespaces"] and len(rest) >= 3:
            rest = rest[2:]
        resource = rest[0] + (f"/{rest[2]}" if len(rest) >= 3 else "")
        verb = verbs[method] if len(rest) >= 2 or method != "GET" else ("watch" if query.get("watch") else "list")
        seen.add((group, resource, verb))
    assert ("apps", "deployments", "create") in seen and ("gateway.networking.k8s.io", "gateways/status", "patch") in seen
    for group, resource, verb in seen:
        assert any(group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"] for r in rules), \
            f"ambit install does not allow {verb} {resource}.{group}"


def test_other_gateway_classes_are_not_claimed(cluster: tuple[KubeEmulator, KubeWaypointReconciler]) -> None:
    emu, _ = cluster
    emu.create(gateway("ingress", cls="other-vendor"))
    emu.create(gateway("wp", cls="istio-waypoint", **{"istio.io/waypoint-for": "all"}))
    wait_for(lambda: emu.get("apps/v1", "Deployment", "wp", "demo"), timeout=10, what="istio-waypoint deployed")
    threading.Event().wait(0.3)
    assert emu.get("apps/v1", "Deployment", "ingress", "demo") is None
    assert "status" not in emu.get(GW_V1, "Gateway", "ingress", "demo")


def test_a_waypoint_with_an_invalid_waypoint_for_is_not_deployed(
        cluster: tuple[KubeEmulator, KubeWaypointReconciler]) -> None:
    """No waypoint (the translation's verdict, and its status's): nothing is deployed for it."""
    emu, _ = cluster
    emu.create(gateway("typo", **{"ambit.io/waypoint-for": "services"}))
    emu.create(gateway("good", **{"ambit.io/waypoint-for": "service"}))
    wait_for(lambda: emu.get("apps/v1", "Deployment", "good", "demo"), timeout=10, what="the valid waypoint deployed")

    def refused() -> dict[str, Any] | None:
        st = (emu.get(GW_V1, "Gateway", "typo", "demo") or {}).get("status") or {}
        return next((c for c in st.get("conditions") or [] if c["type"] == "Accepted"), None)
    accepted = wait_for(refused, timeout=10, what="the typo'd waypoint's status")
    assert (accepted["status"], accepted["reason"]) == ("False", "Invalid")
    assert "not used as a waypoint" in accepted["message"]
    # the reconciler writes a Gateway's status after deploying it, in the same pass: none was
    for kind, av in (("Deployment", "apps/v1"), ("Service", "v1"), ("ServiceAccount", "v1")):
        assert emu.get(av, kind, "typo", "demo") is None, kind


def test_ingress_gateway_owns_a_loadbalancer_service_and_is_programmed_at_its_address() -> None:
    """An ingress Gateway (class ambit): a Deployment running the proxy in ingress mode on the
    listener ports and a LoadBalancer Service exposing them; once the (emulated) cloud gives that
    Service an address, the Gateway is Programmed there. Status verdicts come from the translation,
    as in the controller (on_applied passes it)."""
    emu = KubeEmulator().start()
    rec = KubeWaypointReconciler(make_api_client(emu.url), WaypointDeploySettings(image="ambit:test",
                                                                                   controller_address="ctl:15012"))
    source = KubeSource(make_api_client(emu.url), debounce=0.01)
    stop = threading.Event()
    t = threading.Thread(target=source.run, args=(lambda objs: rec.reconcile(objs, translate(objs)), stop),
                         daemon=True)
    t.start()
    try:
        emu.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo"}})
        emu.create({"apiVersion": GW_V1, "kind": "Gateway", "metadata": {"name": "edge", "namespace": "demo"},
                    "spec": {"gatewayClassName": "ambit", "listeners": [
                        {"name": "http", "port": 80, "protocol": "HTTP"},
                        {"name": "http-alt", "port": 8080, "protocol": "HTTP", "hostname": "a.example.com"}]}})
        dep = wait_for(lambda: emu.get("apps/v1", "Deployment", "edge", "demo"), timeout=10, what="deployment")
        svc = wait_for(lambda: emu.get("v1", "Service", "edge", "demo"), timeout=10, what="service")
        assert svc["spec"]["type"] == "LoadBalancer"
        assert [(p["port"], p["targetPort"]) for p in svc["spec"]["ports"]] == [(80, 80), (8080, 8080)]
        pod = dep["spec"]["template"]["spec"]
        [c] = pod["containers"]
        assert c["args"][c["args"].index("--gateway-class") + 1] == "ambit"
        assert {p["containerPort"] for p in c["ports"]} >= {80, 8080}
        assert pod["securityContext"]["sysctls"] == [{"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"}]

        def status() -> dict[str, Any]:
            return (emu.get(GW_V1, "Gateway", "edge", "demo") or {}).get("status") or {}

        def cond(type_: str) -> tuple[str, str] | None:
            c = next((c for c in status().get("conditions") or [] if c["type"] == type_), None)
            return (c["status"], c["reason"]) if c else None
        wait_for(lambda: cond("Programmed") == ("False", "AddressNotAssigned"), timeout=10, what="not programmed")
        assert cond("Accepted") == ("True", "Accepted")
        svc["status"] = {"loadBalancer": {"ingress": [{"ip": "203.0.113.9"}]}}     # the cloud's part
        emu.update(svc)
        wait_for(lambda: cond("Programmed") == ("True", "Programmed"), timeout=10, what="programmed")
        assert status()["addresses"] == [{"type": "IPAddress", "value": "203.0.113.9"}]
        assert [ln["name"] for ln in status()["listeners"]] == ["http", "http-alt"]
        # an Istio Gateway its pods serve adds its servers' ports to the Deployment and the Service
        emu.create({"apiVersion": "networking.istio.io/v1", "kind": "Gateway",
                    "metadata": {"name": "bookinfo-gateway", "namespace": "demo"},
                    "spec": {"selector": {"gateway.networking.k8s.io/gateway-name": "edge"},
                             "servers": [{"port": {"number": 9080, "name": "http", "protocol": "HTTP"},
                                          "hosts": ["*"]}]}})
        wait_for(lambda: [p["port"] for p in emu.get("v1", "Service", "edge", "demo")["spec"]["ports"]]
                 == [80, 8080, 9080], timeout=10, what="the Istio Gateway's port on the Service")
        wait_for(lambda: 9080 in {p["containerPort"] for p in emu.get("apps/v1", "Deployment", "edge", "demo")[
            "spec"]["template"]["spec"]["containers"][0]["ports"]}, timeout=10, what="the port on the Deployment")
    finally:
        stop.set()
        t.join(timeout=10)
        emu.stop()


def test_an_object_the_controller_did_not_create_is_not_taken_over(
        cluster: tuple[KubeEmulator, KubeWaypointReconciler]) -> None:
    emu, rec = cluster
    emu.create({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "waypoint", "namespace": "demo"}})
    emu.create(gateway())
    wait_for(lambda: emu.get("apps/v1", "Deployment", "waypoint", "demo"), timeout=10, what="deployment")
    assert "ownerReferences" not in emu.get("v1", "ServiceAccount", "waypoint", "demo")["metadata"]
    wait_for(lambda: any("was not created by ambit" in e for e in rec.errors), timeout=5, what="reported")


def test_policy_with_http_rules_and_no_waypoint_gets_a_condition(
        cluster: tuple[KubeEmulator, KubeWaypointReconciler]) -> None:
    emu, _ = cluster
    emu.create({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                "metadata": {"name": "get-only", "namespace": "demo"},
                "spec": {"selector": {"matchLabels": {"app": "web"}},
                         "rules": [{"to": [{"operation": {"methods": ["GET"]}}]}]}})

    def cond() -> dict[str, Any] | None:
        st = (emu.get("security.istio.io/v1", "AuthorizationPolicy", "get-only", "demo") or {}).get("status") or {}
        return next((c for c in st.get("conditions") or [] if c["type"] == "ZtunnelAccepted"), None)
    c = wait_for(cond, timeout=10, what="ZtunnelAccepted")
    assert (c["status"], c["reason"]) == ("False", "UnsupportedValue")
    assert "spec.rules[0].to[0].operation.methods" in c["message"]


def test_a_field_accepted_but_not_applied_shows_on_the_object_and_goes_when_removed(
        cluster: tuple[KubeEmulator, KubeWaypointReconciler]) -> None:
    """What `ambit apply` warns about in the lab reaches a cluster user on the object itself
    (`Enforced=False`), not only through `ambit analyze`."""
    emu, _ = cluster
    vs = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
          "metadata": {"name": "reviews", "namespace": "demo"},
          "spec": {"hosts": ["reviews"], "http": [{"match": [{"uri": {"prefix": "/"}, "statPrefix": "reviews"}],
                                                   "route": [{"destination": {"host": "reviews"}}]}]}}
    emu.create(vs)

    def cond() -> dict[str, Any] | None:
        st = (emu.get("networking.istio.io/v1", "VirtualService", "reviews", "demo") or {}).get("status") or {}
        return next((c for c in st.get("conditions") or [] if c["type"] == "Enforced"), None)
    c = wait_for(cond, timeout=10, what="Enforced")
    assert c["status"] == "False" and "spec.http[0].match[0].statPrefix: " in c["message"], c
    del vs["spec"]["http"][0]["match"]
    cur = emu.get("networking.istio.io/v1", "VirtualService", "reviews", "demo")
    emu.update({**cur, "spec": vs["spec"]})
    wait_for(lambda: "spec.http[0].match" not in (cond() or {}).get("message", ""), timeout=10,
             what="the statPrefix advisory gone")


def test_ambit_waypoint_cli_against_the_cluster(cluster: tuple[KubeEmulator, KubeWaypointReconciler]) -> None:
    """`ambit waypoint --kube-host`: apply (with --enroll-namespace and --wait, which the running
    controller satisfies), list, status, delete (the garbage collector takes the Deployment)."""
    import argparse
    import io

    from ambitctl.commands import waypoint as cli

    emu, _ = cluster
    emu.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo", "labels": {"team": "a"}}})

    def run(*argv: str) -> tuple[int, str, str]:
        parser = argparse.ArgumentParser(prog="ambit")
        cli.register(parser.add_subparsers())
        args = parser.parse_args(["waypoint", *argv, "--kube-host", emu.url])
        out, err = io.StringIO(), io.StringIO()
        args.stdout, args.stderr = out, err
        return args.func(args), out.getvalue(), err.getvalue()

    rc, out, err = run("apply", "-n", "demo", "--enroll-namespace", "--wait", "--timeout", "15")
    assert rc == 0, err
    assert out.splitlines()[:2] == ["waypoint demo/waypoint applied",
                                    'namespace demo labeled with "ambit.io/use-waypoint: waypoint"']
    assert out.splitlines()[2].startswith("waypoint demo/waypoint programmed (10.96.")
    assert emu.get("v1", "Namespace", "demo", "")["metadata"]["labels"] == {"team": "a",
                                                                          "ambit.io/use-waypoint": "waypoint"}
    assert emu.get("apps/v1", "Deployment", "waypoint", "demo") is not None
    rc, out, _ = run("list", "-A")
    assert out.splitlines()[1].split()[:5] == ["demo", "waypoint", "ambit-waypoint", "service", "True"]
    rc, out, _ = run("status", "-n", "demo")
    assert rc == 0 and "Programmed" in out
    rc, out, _ = run("apply", "-n", "demo", "--for", "all")          # an update keeps the object
    assert rc == 0 and emu.get(GW_V1, "Gateway", "waypoint", "demo")["metadata"]["labels"] == {
        "ambit.io/waypoint-for": "all"}
    rc, out, _ = run("delete", "-n", "demo")
    assert (rc, out) == (0, "waypoint demo/waypoint deleted\n")
    # The garbage collector takes the owned Deployment; as in Kubernetes, not necessarily before
    # the delete returns (a reconcile of the update above may still be finishing).
    wait_for(lambda: emu.get("apps/v1", "Deployment", "waypoint", "demo") is None,
             what="the Deployment collected after its Gateway was deleted", timeout=15)


def test_settled_waypoints_cost_no_api_calls_until_resync() -> None:
    with KubeEmulator() as emu:
        now = [0.0]
        rec = KubeWaypointReconciler(make_api_client(emu.url), WaypointDeploySettings(image="i", controller_address="c"),
                                     write_status=False, resync=60.0, clock=lambda: now[0])
        gw = emu.create(gateway())
        rec.reconcile([gw])
        assert emu.get("apps/v1", "Deployment", "waypoint", "demo") is not None
        calls = len(emu.requests)
        rec.reconcile([gw])                               # another snapshot, same Gateway: nothing to ask
        assert len(emu.requests) == calls
        emu.delete("apps/v1", "Deployment", "waypoint", "demo")
        now[0] = 61.0                                     # the resync repairs drift
        rec.reconcile([gw])
        assert emu.get("apps/v1", "Deployment", "waypoint", "demo") is not None


def test_an_invalid_waypoint_gateway_is_not_accepted() -> None:
    with KubeEmulator() as emu:
        rec = KubeWaypointReconciler(make_api_client(emu.url), None)
        source = KubeSource(make_api_client(emu.url), debounce=0.01, write_status=True)
        stop = threading.Event()
        t = threading.Thread(target=source.run, args=(rec.reconcile, stop), daemon=True)
        t.start()
        try:
            bad = gateway("bad")
            bad["spec"]["listeners"][0]["protocol"] = "TCP"
            emu.create(bad)
            emu.create(gateway("good"))

            def conds(name: str) -> dict[str, Any]:
                st = (emu.get(GW_V1, "Gateway", name, "demo") or {}).get("status") or {}
                return {c["type"]: c for c in st.get("conditions") or []}
            wait_for(lambda: "Accepted" in conds("bad") and "Accepted" in conds("good"), timeout=10, what="status")
            c = conds("bad")
            assert (c["Accepted"]["status"], c["Accepted"]["reason"]) == ("False", "Invalid")
            assert "protocol HBONE or HTTP" in c["Accepted"]["message"]
            assert (c["Programmed"]["status"], c["Programmed"]["reason"]) == ("False", "Invalid")
            g = conds("good")       # written by the reconciler alone: no deployment configured, no Service yet
            assert (g["Accepted"]["status"], g["Programmed"]["reason"]) == ("True", "AddressNotAssigned")
            threading.Event().wait(0.3)
            assert conds("good")["Accepted"]["message"].startswith("accepted by ambit as a waypoint")
        finally:
            stop.set()
            t.join(timeout=10)


def test_the_rendered_waypoint_arguments_are_the_waypoints_own() -> None:
    """The Deployment's args parse with the waypoint binary's own settings: a renamed or missing flag
    would crash-loop every waypoint pod in a cluster."""
    import re as _re

    from controller.waypoints.render import deployment, service
    from waypoint.settings import load as waypoint_settings
    gw = gateway("wp", "istio-waypoint")
    gw["metadata"].setdefault("uid", "u1")
    dep = deployment(gw, WaypointDeploySettings(image="ambit:test", controller_address="ambit-controller:15012"))
    c = dep["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: f"<{e['name']}>" for e in c.get("env", [])}
    args = [_re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), a) for a in c["args"]]
    s = waypoint_settings(args, {})
    assert s.waypoint == "demo/wp" and s.pod_name == "<POD_NAME>" and s.node == "<NODE_NAME>"
    assert s.service_account == "wp" and s.gateway_class == "istio-waypoint"
    assert s.controller == "ambit-controller:15012"
    # kubelet probes readiness on the port the waypoint really serves it on: the status port, which
    # answers /healthz/ready alone; the admin endpoint (config dump, certificates, taps) is loopback only,
    # neither a container port nor behind the Service
    probe = c["readinessProbe"]["httpGet"]
    status_host, _, status_port = s.status_address.rpartition(":")
    assert probe["path"] == "/healthz/ready" and int(status_port) == probe["port"]
    admin_host, _, admin_port = s.admin_address.rpartition(":")
    assert admin_host == "127.0.0.1", "the admin endpoint must not face the network"
    assert int(admin_port) not in {p["containerPort"] for p in c["ports"]}
    svc = service(gw)
    assert int(admin_port) not in {p["targetPort"] for p in svc["spec"]["ports"]}
    assert {p["targetPort"] for p in svc["spec"]["ports"]} <= {p["containerPort"] for p in c["ports"]}
    assert int(status_port) in {p["containerPort"] for p in c["ports"]}


def test_waypoint_workers_get_a_writable_run_dir() -> None:
    """`--waypoint-workers N` reaches the pod's `--workers`, and the supervisor's socket directory
    (`--run-dir`) is a mounted emptyDir: the container's root file system is read-only."""
    from controller.waypoints.render import deployment
    from waypoint.settings import load as waypoint_settings
    gw = gateway("wp", "istio-waypoint")
    gw["metadata"].setdefault("uid", "u1")
    dep = deployment(gw, WaypointDeploySettings(image="ambit:test", controller_address="c:15012", workers=3))
    pod = dep["spec"]["template"]["spec"]
    [c] = pod["containers"]
    s = waypoint_settings([a.replace("$(", "").replace(")", "") for a in c["args"]], {})
    assert (s.workers, s.worker_count) == (3, 3)
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    [mount] = [m for m in c["volumeMounts"] if m["mountPath"] == str(s.run_dir)]
    assert "emptyDir" in next(v for v in pod["volumes"] if v["name"] == mount["name"])


def _mib(q: str) -> int:
    return int(q[:-2]) * (1024 if q.endswith("Gi") else 1)


@pytest.mark.parametrize("workers", [1, 2, 4, 8, 0])
def test_waypoint_memory_follows_its_workers(workers: int) -> None:
    """Each waypoint worker is a whole process with its own pools, so the pod's memory request grows
    with `--workers` (0 is sized for the most it may resolve to), and the limit stays at least twice
    the request: a limit under the workers' working set would OOM-kill them in turn."""
    from ambit.dataplane.cpus import MAX_AUTO_WORKERS
    from controller.waypoints.render import deployment
    gw = gateway("wp", "istio-waypoint")
    gw["metadata"].setdefault("uid", "u1")
    dep = deployment(gw, WaypointDeploySettings(image="ambit:test", controller_address="c:15012", workers=workers))
    [c] = dep["spec"]["template"]["spec"]["containers"]
    request, limit = _mib(c["resources"]["requests"]["memory"]), _mib(c["resources"]["limits"]["memory"])
    n = workers or MAX_AUTO_WORKERS
    assert request == 128 + 64 * (n - 1)
    assert limit >= 2 * request and limit >= 1024
    if workers == 1:        # a single-process waypoint's Deployment is what it was: no roll on upgrade
        assert c["resources"] == {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "1Gi"}}


@pytest.mark.parametrize("workers", [1, 2, 3, 4, 8, 0])
def test_a_connection_flood_at_every_workers_bound_stays_inside_the_pods_limit(workers: int) -> None:
    """--max-connections and --max-pending-handshakes bound each waypoint *process*, sized so one
    process at its bounds stays inside a 1 GiB pod (docs/security.md, "Connection floods": ~65 KiB an
    idle HBONE connection, ~56 KiB a pending handshake, ~50 MB a working process, bench/RESULTS.md).
    A pod of N workers must not let N full bounds add up past its memory limit: the OOM kill the
    bounds exist to prevent would then drop every connection of the namespace."""
    import re as _re

    from ambit.dataplane.cpus import MAX_AUTO_WORKERS
    from controller.waypoints.render import deployment
    from waypoint.settings import load as waypoint_settings
    gw = gateway("wp", "istio-waypoint")
    gw["metadata"].setdefault("uid", "u1")
    dep = deployment(gw, WaypointDeploySettings(image="ambit:test", controller_address="c:15012", workers=workers))
    [c] = dep["spec"]["template"]["spec"]["containers"]
    s = waypoint_settings([_re.sub(r"\$\((\w+)\)", r"<\1>", a) for a in c["args"]], {})
    n = s.workers or MAX_AUTO_WORKERS
    per_process_kib = s.max_connections * 65 + s.max_pending_handshakes * 56 + 50 * 1024
    assert n * per_process_kib <= _mib(c["resources"]["limits"]["memory"]) * 1024, (n, s.max_connections)
    # and the pod still takes the connections one process took; one source's share of it is what it
    # was, and stays below a worker's whole bound (the supervisor deals connections in turn)
    assert n * s.max_connections >= 8192 - n and n * s.max_pending_handshakes >= 1024 - n
    assert n * s.max_connections_per_identity <= 1024 and n * s.max_pending_handshakes_per_source <= 128
    assert s.max_connections_per_identity < s.max_connections or n == 1
    assert s.max_pending_handshakes_per_source < s.max_pending_handshakes or n == 1
    if workers == 1:
        assert "--max-connections" not in c["args"], "a single-process waypoint's Deployment is what it was"
