"""A PeerAuthentication or a ztunnel-enforced AuthorizationPolicy whose pods are all outside the
mesh is enforced nowhere: said by `ambit apply`, the object's status and `ambit analyze` (AMB0137).
Before, a STRICT in a namespace nobody enrolled was accepted without a word, and its pods took
plaintext from anyone."""

from __future__ import annotations

from typing import Any

from ambitctl.analyze import analyze
from controller.waypoints.advisories import advisories
from tests.unit.waypoint.support import translated

AMBIENT = {"ambit.io/dataplane-mode": "ambient"}


def ns(name: str, **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def pod(name: str, namespace: str, ip: str, **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace, "uid": f"u-{name}",
                                                            "labels": labels},
            "spec": {"nodeName": "node1", "serviceAccountName": "default"},
            "status": {"phase": "Running", "podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]}}


def strict(namespace: str, **selector: str) -> dict[str, Any]:
    spec: dict[str, Any] = {"mtls": {"mode": "STRICT"}}
    if selector:
        spec["selector"] = {"matchLabels": selector}
    return {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
            "metadata": {"name": "strict", "namespace": namespace}, "spec": spec}


def deny(namespace: str) -> dict[str, Any]:
    return {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": "deny-other", "namespace": namespace},
            "spec": {"selector": {"matchLabels": {"app": "db"}}, "action": "DENY",
                     "rules": [{"from": [{"source": {"notNamespaces": [namespace]}}]}]}}


def found(objs: list[dict[str, Any]]) -> dict[tuple[str, str], str]:
    return {(a.ref, a.path): a.reason for a in advisories(objs) if a.cause == "PodsNotInMesh"}


def test_a_strict_and_a_deny_over_pods_outside_the_mesh_are_said_to_be_enforced_nowhere() -> None:
    objs = [ns("legacy"), pod("db-0", "legacy", "10.244.1.5", app="db"), pod("web-0", "legacy", "10.244.1.6", app="web"),
            strict("legacy"), deny("legacy")]
    got = found(objs)
    assert set(got) == {("PeerAuthentication/legacy/strict", "metadata.namespace"),
                        ("AuthorizationPolicy/legacy/deny-other", "spec.selector")}
    why = got[("PeerAuthentication/legacy/strict", "metadata.namespace")]
    assert "legacy/db-0, legacy/web-0" in why and "enforced nowhere" in why and "dataplane-mode=ambient" in why
    assert "legacy/db-0" in got[("AuthorizationPolicy/legacy/deny-other", "spec.selector")]
    assert {f.code for f in analyze(objs, complete=True) if f.ref == "PeerAuthentication/legacy/strict"} == {"AMB0137"}
    # what the warning says: no pod of the namespace is captured, so ztunnel sees none of it
    assert {w.name: w.protocol for w in translated(objs).workloads} == {"db-0": "TCP", "web-0": "TCP"}


def test_enrolled_pods_mesh_wide_and_empty_selections_are_not_reported() -> None:
    objs = [ns("shop", **AMBIENT), pod("db-0", "shop", "10.244.1.5", app="db"), strict("shop"), deny("shop"),
            ns("legacy"), pod("old-0", "legacy", "10.244.1.7", app="old"),
            strict("ambit-system"),                          # mesh-wide: in force for the enrolled pods
            deny("legacy")]                                  # selects app=db: no pod of legacy, AMB0104's case
    assert found(objs) == {}
    # one enrolled pod among those selected: enforced for it
    mixed = [ns("legacy"), pod("db-0", "legacy", "10.244.1.5", app="db"),
             pod("db-1", "legacy", "10.244.1.6", app="db", **AMBIENT), deny("legacy")]
    assert found(mixed) == {}
