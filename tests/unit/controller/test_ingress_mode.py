"""Policies that do not cover the plaintext inbound of pods in ingress mode
(ambient.istio.io/bypass-inbound-capture) are said, never silently left doing nothing: by
`ambit apply` (a warning naming the policy, the pods and why), by `ambit analyze` (AMB0131), of the
policy and of the pod."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
import yaml

from ambitctl import authzcheck
from ambitctl.analyze import analyze
from ambitctl.cli import build_parser
from ambitctl.describe import describe_pod, format_description
from controller.ingress_mode import ingress_mode_pods
from controller.translate import translate
from controller.waypoints.advisories import advisories

BYPASS = "ambient.istio.io/bypass-inbound-capture"


def ns(name: str, ambient: bool = True) -> dict[str, Any]:
    labels = {"istio.io/dataplane-mode": "ambient"} if ambient else {}
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def pod(name: str, namespace: str = "edge", bypass: str | None = "true", ip: str = "10.1.0.9",
        **labels: str) -> dict[str, Any]:
    md: dict[str, Any] = {"name": name, "namespace": namespace, "labels": {"app": name, **labels}}
    if bypass is not None:
        md["annotations"] = {BYPASS: bypass}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": md,
            "spec": {"nodeName": "node1", "containers": [{"name": "c", "image": "x"}]},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}}


def strict(name: str = "strict", namespace: str = "edge", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec or {"mtls": {"mode": "STRICT"}}}


def authz(name: str, namespace: str = "edge", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec or {"action": "ALLOW", "rules": [{"from": [{"source": {"namespaces": ["edge"]}}]}]}}


def notes(objs: list[dict[str, Any]]) -> dict[tuple[str, str], str]:
    return {(a.ref, a.path): a.reason for a in advisories(objs) if a.cause == "InboundBypassed"}


def test_a_strict_peer_authentication_over_an_ingress_mode_pod_is_said_of_both() -> None:
    got = notes([ns("edge"), pod("nginx"), pod("api", bypass=None), strict()])
    why = got[("PeerAuthentication/edge/strict", "spec.mtls.mode")]
    assert "edge/nginx" in why and "edge/api" not in why
    assert BYPASS in why and "without ztunnel" in why and "HBONE" in why
    assert "PeerAuthentication/edge/strict" in got[("Pod/edge/nginx", f"metadata.annotations[{BYPASS}]")]
    assert ("Pod/edge/api", f"metadata.annotations[{BYPASS}]") not in got


def test_ztunnel_enforced_authorization_policies_are_said_waypoint_bound_ones_are_not() -> None:
    objs = [ns("edge"), pod("nginx"), authz("ns-wide"),
            authz("by-selector", selector={"matchLabels": {"app": "nginx"}}, action="DENY",
                  rules=[{"from": [{"source": {"namespaces": ["evil"]}}]}]),
            authz("other-pod", selector={"matchLabels": {"app": "api"}}),
            authz("at-waypoint", targetRefs=[{"kind": "Service", "group": "", "name": "nginx"}])]
    got = notes(objs)
    assert ("AuthorizationPolicy/edge/ns-wide", "spec") in got
    assert ("AuthorizationPolicy/edge/by-selector", "spec.selector") in got
    assert not [k for k in got if k[0] in ("AuthorizationPolicy/edge/other-pod", "AuthorizationPolicy/edge/at-waypoint")]


def test_only_strict_and_only_enrolled_pods_with_a_true_value_count() -> None:
    assert notes([ns("edge"), pod("nginx"), strict(mtls={"mode": "PERMISSIVE"})]) == {}
    assert notes([ns("edge", ambient=False), pod("nginx"), strict()]) == {}                 # not in the mesh
    assert notes([ns("edge"), pod("nginx", bypass="false"), strict()]) == {}
    assert notes([ns("edge"), pod("nginx", bypass="yes"), strict()]) == {}                  # not a boolean: captured
    assert notes([ns("edge"), pod("nginx", **{"istio.io/dataplane-mode": "none"}), strict()]) == {}
    # a STRICT port-level entry counts; a mesh-wide (root namespace) policy covers every namespace
    got = notes([ns("edge"), pod("nginx"), strict(selector={"matchLabels": {"app": "nginx"}},
                                                  portLevelMtls={"8080": {"mode": "STRICT"}})])
    assert ("PeerAuthentication/edge/strict", "spec.portLevelMtls[8080].mode") in got
    assert ("PeerAuthentication/ambit-system/mesh", "spec.mtls.mode") in notes(
        [ns("edge"), pod("nginx"), strict("mesh", "ambit-system")])
    assert [name for name in (p["metadata"]["name"] for p in ingress_mode_pods(
        [ns("edge"), pod("nginx"), pod("api", bypass="1"), pod("x", bypass="0")]))] == ["nginx", "api"]


def test_analyze_reports_amb0131() -> None:
    found = [f for f in analyze([ns("edge"), pod("nginx"), strict()], complete=True) if f.code == "AMB0131"]
    assert {f.ref for f in found} == {"PeerAuthentication/edge/strict", "Pod/edge/nginx"}
    assert all(f.severity == "Warning" for f in found)


@pytest.fixture
def lab_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "lab"
    monkeypatch.setenv("AMBIT_LAB_DIR", str(d))
    return d


def test_ambit_apply_warns_of_the_policy(lab_dir: Path) -> None:
    args = build_parser().parse_args(["apply", "--dry-run", "-f", "-"])
    out, err = io.StringIO(), io.StringIO()
    args.stdout, args.stderr = out, err
    args.stdin = io.StringIO(yaml.safe_dump_all([ns("edge"), pod("nginx"), strict()]))
    assert args.func(args) == 0, err.getvalue()
    assert "Warning: PeerAuthentication/edge/strict: spec.mtls.mode: does not apply to the plaintext inbound of " \
           "edge/nginx" in err.getvalue()


WORLD = [ns("edge"), ns("legacy", ambient=False), pod("nginx", ip="10.1.0.9"), pod("api", bypass=None, ip="10.1.0.10"),
         pod("client", "legacy", bypass=None, ip="10.1.0.11"), strict()]


def test_authz_check_lets_plaintext_into_the_ingress_mode_pod_only() -> None:
    r = authzcheck.check(WORLD, "legacy/client", "edge/nginx:8080")
    assert r.allowed and BYPASS in r.paths[0].hops[0].reason and "ingress mode" in r.paths[0].hops[0].where
    r = authzcheck.check(WORLD, "legacy/client", "edge/api:8080")
    assert not r.allowed and r.paths[0].hops[0].policy == "PeerAuthentication edge/strict"


def test_describe_says_mtls_covers_hbone_only_there() -> None:
    tr = translate(WORLD)
    d = describe_pod(tr, "edge", "nginx")
    assert d.facts["peer_authentication"]["mode"] == "STRICT"
    assert "inbound:    NOT captured" in format_description(d) and BYPASS in d.facts["inbound_bypass"]
    assert "inbound_bypass" not in describe_pod(tr, "edge", "api").facts
