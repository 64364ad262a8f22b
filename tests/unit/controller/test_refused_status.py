"""Objects whose newest version validation refuses, in a cluster: the controller's KubeSource and
KubeWaypointReconciler against the API-server emulator (no mocks). Gateway API routes first, then
ingress and Istio Gateways.

Without this, `kubectl get httproute -o yaml` kept the verdict on the last valid version (or showed
nothing at all for a route never valid) while the new spec did nothing: the refusal was only in the
controller's log. Now each parent of ours says `Accepted=False UnsupportedValue` at the refused
generation, naming the field and what stays in force; other controllers' parents are not claimed;
the reconciler does not overwrite it from the version in force; a valid version restores the verdict.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from controller.sources.kube import KubeSource, make_api_client
from controller.translate import translate
from controller.translate.ingress import CONTROLLER_NAME
from controller.waypoints.reconcile import KubeWaypointReconciler
from tests.support.kube_emulator import KubeEmulator
from tests.support.wait import wait_for

GW_V1 = "gateway.networking.k8s.io/v1"
NS = "demo"


def service(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": NS},
            "spec": {"clusterIP": "10.96.0.20", "selector": {"app": name},
                     "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}}


def route(weight: Any = 1, parents: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"apiVersion": GW_V1, "kind": "HTTPRoute", "metadata": {"name": "canary", "namespace": NS},
            "spec": {"parentRefs": parents if parents is not None else [
                         {"group": "", "kind": "Service", "name": "echo", "port": 8080},
                         {"name": "elsewhere"}],       # a Gateway of another controller's class
                     "rules": [{"backendRefs": [{"name": "echo", "port": 8080, "weight": weight}]}]}}


@pytest.fixture
def cluster() -> Iterator[tuple[KubeEmulator, KubeSource, KubeWaypointReconciler]]:
    emu = KubeEmulator().start()
    emu.create({"apiVersion": GW_V1, "kind": "Gateway", "metadata": {"name": "elsewhere", "namespace": NS},
                "spec": {"gatewayClassName": "other-mesh",
                         "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]}})
    emu.create(service("echo"))
    source = KubeSource(make_api_client(emu.url), debounce=0.01, write_status=True, backoff=(0.05, 0.3))
    rec = KubeWaypointReconciler(make_api_client(emu.url), None, refused=source.refused)
    stop = threading.Event()
    t = threading.Thread(target=source.run, args=(lambda objs: rec.reconcile(objs, translate(objs)), stop),
                         daemon=True)
    t.start()
    try:
        yield emu, source, rec
    finally:
        stop.set()
        t.join(timeout=10)
        source.api.close()
        emu.stop()


def parents(emu: KubeEmulator) -> list[dict[str, Any]]:
    got = emu.get(GW_V1, "HTTPRoute", "canary", NS) or {}
    return list((got.get("status") or {}).get("parents") or [])


def accepted(entry: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in entry["conditions"] if c["type"] == "Accepted")


def test_a_refused_update_is_on_the_route_and_the_last_valid_version_is_named(cluster) -> None:
    emu, source, rec = cluster
    emu.create(route())
    wait_for(lambda: parents(emu) and accepted(parents(emu)[0])["status"] == "True", "the route's verdict")
    emu.update(route(weight="ten"))

    def refused() -> Any:
        ps = parents(emu)
        return ps and accepted(ps[0])["observedGeneration"] == 2 and ps
    ps = wait_for(refused, "the refusal in the route's status", timeout=15)
    assert [(p["parentRef"]["kind"], p["parentRef"]["name"], p["controllerName"]) for p in ps] == [
        ("Service", "echo", CONTROLLER_NAME)]              # the other class's Gateway is not claimed
    cond = accepted(ps[0])
    assert (cond["status"], cond["reason"]) == ("False", "UnsupportedValue")
    assert "spec.rules[0].backendRefs[0].weight" in cond["message"]
    assert cond["message"].endswith("its last valid version (generation 1) stays in force")
    assert source.refused() == {("HTTPRoute", NS, "canary")}

    # a pass of the reconciler over the version in force (say, another object changed) leaves it
    objects = source.cache.objects()
    rec.reconcile(objects, translate(objects))
    assert accepted(parents(emu)[0])["reason"] == "UnsupportedValue"

    fixed = route(weight=3)
    emu.update(fixed)
    wait_for(lambda: accepted(parents(emu)[0]) == {**accepted(parents(emu)[0]), "status": "True",
                                                    "observedGeneration": 3}, "the verdict on the fixed version")
    assert source.refused() == set()


def test_a_route_never_valid_says_nothing_of_it_is_applied(cluster) -> None:
    emu, source, _ = cluster
    bad = route(weight=-1)
    emu.create(bad)
    ps = wait_for(lambda: parents(emu), "the refusal in the route's status", timeout=15)
    cond = accepted(ps[0])
    assert (cond["status"], cond["reason"], cond["observedGeneration"]) == ("False", "UnsupportedValue", 1)
    assert cond["message"].startswith("refused by ambit: spec.rules[0].backendRefs[0].weight")
    assert cond["message"].endswith("nothing of it is applied")


def test_a_route_valid_again_without_a_parent_of_ours_loses_the_refusal(cluster) -> None:
    """Entries of ours go once nothing of ours is a parent: the refusal does not outlive it."""
    emu, _, _ = cluster
    emu.create(route(weight="ten"))
    wait_for(lambda: parents(emu), "the refusal", timeout=15)
    only_other = route(parents=[{"name": "elsewhere"}])
    emu.update(only_other)
    wait_for(lambda: not parents(emu), "our entry to go", timeout=15)


def test_other_controllers_entries_are_kept(cluster) -> None:
    emu, _, _ = cluster
    theirs = {"parentRef": {"name": "elsewhere"}, "controllerName": "example.com/other",
              "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "",
                              "observedGeneration": 1, "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
    obj = emu.create(route(weight="ten"))
    with_status = copy.deepcopy(obj)
    with_status["status"] = {"parents": [theirs]}
    emu.update(with_status)
    ps = wait_for(lambda: len(parents(emu)) == 2 and parents(emu), "our entry beside theirs", timeout=15)
    assert [p["controllerName"] for p in ps] == [CONTROLLER_NAME, "example.com/other"]
    assert ps[1] == theirs


def conditions(emu: KubeEmulator, api_version: str, name: str) -> dict[str, dict[str, Any]]:
    got = emu.get(api_version, "Gateway", name, NS) or {}
    return {c["type"]: c for c in (got.get("status") or {}).get("conditions") or []}


def test_an_ingress_gateway_refused_says_so_and_the_reconciler_leaves_it(cluster) -> None:
    """An invalid ingress Gateway (class ambit) got no condition at all: only waypoints did."""
    emu, source, rec = cluster
    gw = {"apiVersion": GW_V1, "kind": "Gateway", "metadata": {"name": "edge", "namespace": NS},
          "spec": {"gatewayClassName": "ambit", "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]}}
    emu.create(gw)
    wait_for(lambda: conditions(emu, GW_V1, "edge").get("Accepted", {}).get("status") == "True", "accepted")
    bad = copy.deepcopy(gw)
    bad["spec"]["listeners"][0]["protocol"] = "UDP"
    emu.update(bad)
    wait_for(lambda: conditions(emu, GW_V1, "edge")["Accepted"]["status"] == "False", "the refusal", timeout=15)
    c = conditions(emu, GW_V1, "edge")
    assert (c["Accepted"]["reason"], c["Accepted"]["observedGeneration"]) == ("Invalid", 2)
    assert "spec.listeners[0].protocol" in c["Accepted"]["message"]
    assert (c["Programmed"]["status"], c["Programmed"]["reason"]) == ("False", "Invalid")
    assert ("Gateway", NS, "edge") in source.refused()
    objects = source.cache.objects()            # a pass over the version in force leaves it
    rec.reconcile(objects, translate(objects))
    assert conditions(emu, GW_V1, "edge")["Accepted"]["status"] == "False"


def test_an_istio_gateway_refused_gets_accepted_false(cluster) -> None:
    """Its kind is Gateway too: the Gateway API branch took it and wrote nothing."""
    emu, _, _ = cluster
    emu.create({"apiVersion": "networking.istio.io/v1", "kind": "Gateway", "metadata": {"name": "nospec", "namespace": NS},
                "spec": {"selector": {"istio": "ingressgateway"}}})
    wait_for(lambda: "Accepted" in conditions(emu, "networking.istio.io/v1", "nospec"), "the refusal", timeout=15)
    c = conditions(emu, "networking.istio.io/v1", "nospec")
    assert (c["Accepted"]["status"], c["Accepted"]["reason"]) == ("False", "Invalid")
    assert "spec.servers" in c["Accepted"]["message"]
    assert "Programmed" not in c                # a Gateway API condition; Istio's Gateway has none
