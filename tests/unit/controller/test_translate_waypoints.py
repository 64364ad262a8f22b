"""Waypoint Gateways in the translation: waypoint-for, the waypoint's own pods and Service."""

from __future__ import annotations

from typing import Any

import pytest

from controller.translate import translate
from tests.unit.controller.test_config_translate import by_name, ns, pod, service

GW_LABEL = "gateway.networking.k8s.io/gateway-name"


def gateway(name: str = "wp", namespace: str = "demo", waypoint_for: str | None = None,
            cls: str = "ambit-waypoint") -> dict[str, Any]:
    labels = {"istio.io/waypoint-for": waypoint_for} if waypoint_for else {}
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {"gatewayClassName": cls, "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}}


def objects(*extra: dict[str, Any]) -> list[dict[str, Any]]:
    return [ns("demo", **{"ambit.io/dataplane-mode": "ambient", "ambit.io/use-waypoint": "wp"}),
            service("echo", {"app": "echo"}, [{"port": 80}]),
            service("wp", {GW_LABEL: "wp"}, [{"name": "mesh", "port": 15008}], cluster_ip="10.96.0.200"),
            pod("echo-1", "10.0.0.1", labels={"app": "echo"}),
            pod("wp-0", "10.0.0.200", labels={GW_LABEL: "wp", "ambit.io/dataplane-mode": "none"}, sa="wp"),
            *extra]


@pytest.mark.parametrize("waypoint_for, svc, wl", [
    (None, "demo/wp", ""), ("service", "demo/wp", ""), ("workload", "", "demo/wp"), ("all", "demo/wp", "demo/wp"),
    ("none", "", "")])
def test_waypoint_for_decides_which_references_take_effect(waypoint_for: str | None, svc: str, wl: str) -> None:
    t = translate(objects(gateway(waypoint_for=waypoint_for)))
    assert t.errors == []
    assert by_name(t.services, "echo").waypoint == svc
    assert by_name(t.workloads, "echo-1").waypoint == wl


def test_the_waypoints_own_pod_and_service_never_use_a_waypoint_and_the_pod_speaks_hbone() -> None:
    t = translate(objects(gateway(cls="istio-waypoint")))
    wp = by_name(t.workloads, "wp-0")
    assert (wp.waypoint, wp.protocol, wp.enrolled, wp.identity) == ("", "HBONE", False,
                                                                   "spiffe://cluster.local/ns/demo/sa/wp")
    assert by_name(t.services, "wp").waypoint == ""


def test_without_the_gateway_references_stay_as_written_and_the_pod_is_plain() -> None:
    t = translate(objects())
    assert by_name(t.services, "echo").waypoint == "demo/wp"
    assert by_name(t.workloads, "wp-0").protocol == "TCP"


def test_an_unknown_waypoint_for_value_makes_no_waypoint_and_its_traffic_fails_closed() -> None:
    """One verdict, as the Gateway's status says (Accepted=False) and the reconciler does (no
    deployment): the Gateway is not a waypoint. The Service keeps its reference, and ztunnel, finding
    no waypoint pod (the Gateway's pod is not one), refuses its traffic rather than bypass it."""
    t = translate(objects(gateway(waypoint_for="everything")))
    [e] = t.errors
    assert (e.ref, e.path) == ("Gateway/demo/wp", "metadata.labels")
    assert "waypoint-for 'everything' is not one of" in e.reason and "not used as a waypoint" in e.reason
    assert "serving services" not in e.reason
    assert by_name(t.services, "echo").waypoint == "demo/wp"
    assert by_name(t.workloads, "wp-0").protocol == "TCP"       # not a waypoint pod
    assert by_name(t.services, "wp").waypoint == "demo/wp"      # nor its Service the waypoint's own
