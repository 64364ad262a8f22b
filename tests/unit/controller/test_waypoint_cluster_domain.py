"""A cluster whose DNS domain is not cluster.local: the controller, started with `--cluster-domain`,
renders waypoint and ingress Deployments whose pods take the same domain, so the route hosts the
controller writes (`<svc>.<ns>.svc.<domain>`) are the ones the waypoint matches requests against.
Against the API-server emulator through the official client, with the controller's own wiring
(its settings, `make_source`, `waypoint_hook`), as tests/unit/controller/test_waypoint_deploy.py."""

from __future__ import annotations

import re
import threading
from typing import Any

from controller.__main__ import make_source, waypoint_hook
from controller.settings import load as controller_settings
from controller.translate import Translation, translate
from tests.support.kube_emulator import KubeEmulator
from tests.support.wait import wait_for
from waypoint.routing import build_table
from waypoint.settings import WaypointSettings
from waypoint.settings import load as waypoint_settings

GW_V1 = "gateway.networking.k8s.io/v1"


def _pod_settings(dep: dict[str, Any]) -> WaypointSettings:
    """The waypoint settings the Deployment's pod starts with (its $(VAR)s as placeholders)."""
    [c] = dep["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: f"<{e['name']}>" for e in c.get("env", [])}
    return waypoint_settings([re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], a) for a in c["args"]], {})


def _deployments(domain_flags: list[str]) -> tuple[dict[str, Any], dict[str, Any], Translation]:
    """Run the controller's waypoint duty with `domain_flags` against a cluster holding a waypoint
    Gateway, an ingress Gateway and a routed Service; their Deployments, and the last translation
    the duty was handed."""
    emu = KubeEmulator().start()
    args = controller_settings(["--kube", "--kube-host", emu.url, "--waypoint-image", "ambit:test", *domain_flags], {})
    source = make_source(args)
    hook = waypoint_hook(args, None, source)
    assert hook is not None
    seen: list[Translation] = []

    def on_snapshot(objs: Any) -> None:
        tr = translate(objs, cluster_domain=args.cluster_domain)     # as the controller translates
        seen.append(tr)
        hook(objs, tr)
    stop = threading.Event()
    t = threading.Thread(target=source.run, args=(on_snapshot, stop), daemon=True)
    t.start()
    try:
        emu.create({"apiVersion": "v1", "kind": "Namespace",
                    "metadata": {"name": "demo", "labels": {"ambit.io/dataplane-mode": "ambient"}}})
        emu.create({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "reviews", "namespace": "demo"},
                    "spec": {"clusterIP": "10.96.0.11", "selector": {"app": "reviews"},
                             "ports": [{"name": "http", "port": 80}]}})
        emu.create({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                    "metadata": {"name": "reviews", "namespace": "demo"},
                    "spec": {"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews"}}]}]}})
        emu.create({"apiVersion": GW_V1, "kind": "Gateway", "metadata": {"name": "waypoint", "namespace": "demo"},
                    "spec": {"gatewayClassName": "ambit-waypoint",
                             "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}})
        emu.create({"apiVersion": GW_V1, "kind": "Gateway", "metadata": {"name": "edge", "namespace": "demo"},
                    "spec": {"gatewayClassName": "ambit",
                             "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]}})
        wp = wait_for(lambda: emu.get("apps/v1", "Deployment", "waypoint", "demo"), timeout=10, what="waypoint")
        edge = wait_for(lambda: emu.get("apps/v1", "Deployment", "edge", "demo"), timeout=10, what="ingress")
        wait_for(lambda: seen and any(w.hostname.startswith("reviews.") for w in seen[-1].waypoint_routes),
                 timeout=10, what="the routed Service translated")
        return wp, edge, seen[-1]
    finally:
        stop.set()
        t.join(timeout=10)
        emu.stop()


def test_the_controllers_cluster_domain_reaches_waypoint_and_ingress_pods_and_their_route_hosts() -> None:
    deps = _deployments(["--cluster-domain", "corp.example"])
    wp, edge, tr = _pod_settings(deps[0]), _pod_settings(deps[1]), deps[2]
    assert (wp.gateway_class, edge.gateway_class) == ("ambit-waypoint", "ambit")
    assert wp.cluster_domain == edge.cluster_domain == "corp.example"
    # The controller names the Service under its domain; the waypoint, started as rendered,
    # completes a client's short name `reviews` (from demo) to that very host.
    [routes] = [w for w in tr.waypoint_routes if w.hostname.startswith("reviews.")]
    assert routes.hostname == "reviews.demo.svc.corp.example"
    found = build_table(tr.waypoint_routes, wp.cluster_domain).by_authority("reviews", "demo")
    assert found is not None and found.hostname == "reviews.demo.svc.corp.example"


def test_the_default_cluster_domain_is_rendered_too() -> None:
    """Always rendered (as Istio's waypoint template renders `<ns>.svc.<clusterDomain>`): the pod
    says which domain it runs with, whatever the waypoint's own default."""
    for dep in _deployments([])[:2]:
        [c] = dep["spec"]["template"]["spec"]["containers"]
        assert c["args"][c["args"].index("--cluster-domain") + 1] == "cluster.local"
        assert _pod_settings(dep).cluster_domain == "cluster.local"
