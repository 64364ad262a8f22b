"""Ambit's schemas track the released upstream CRDs (issue 14).

`../shared/upstream/` holds Istio's and Gateway API's published CRDs. This walks every field of every
served version of every kind Ambit accepts under an upstream group: each field must be honoured by
Ambit's schema (controller/kinds/*.py) or refused by name, with a reason that says it is not
supported (never a bare "unknown field"). The failure message lists every field that is neither.
Every other upstream kind must be refused with its reason too, not as an unknown kind.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.kinds import KINDS, UNSUPPORTED_KINDS, KindSpec
from controller.kinds.schema import AnyValue, Arr, IntOrStr, Map, Obj, Schema
from controller.validation import validate_object

REPO = Path(__file__).resolve().parents[3]
UPSTREAM = REPO.parent / "shared" / "upstream"
if not UPSTREAM.is_dir():
    UPSTREAM = Path("/work/shared/upstream")


def upstream_crds() -> list[dict[str, Any]]:
    files = [UPSTREAM / "istio" / "crd-all.gen.yaml", *sorted((UPSTREAM / "gateway-api").glob("*.yaml"))]
    crds = [d for f in files if f.exists() for d in yaml.safe_load_all(f.read_text())
            if isinstance(d, dict) and d.get("kind") == "CustomResourceDefinition"]
    assert len(crds) >= 20, f"upstream CRDs missing under {UPSTREAM}: shared/ must sit beside the clone"
    return crds


CRDS = upstream_crds()


def served(crd: dict[str, Any]) -> list[dict[str, Any]]:
    return [v for v in crd["spec"]["versions"] if v.get("served")]


def accepted_versions() -> list[tuple[KindSpec, str, str, dict[str, Any]]]:
    """(Ambit's kind, group, version, upstream spec schema) for every served upstream version of a kind
    Ambit accepts under that group."""
    out = []
    for spec in KINDS:
        for group, _ in spec.groups:
            for crd in CRDS:
                if crd["spec"]["group"] == group and crd["spec"]["names"]["kind"] == spec.kind:
                    for v in served(crd):
                        out.append((spec, group, v["name"], v["schema"]["openAPIV3Schema"]["properties"]["spec"]))
    return out


CASES = accepted_versions()


def dotted(path: list[str]) -> str:
    return ".".join(path).replace(".[]", "[]").replace(".{}", "{}")


def walk(up: dict[str, Any], ours: Schema, path: list[str], found: dict[str, list[Any]]) -> None:
    """Sort every upstream field below `up` into honoured / refused / neither."""
    if isinstance(ours, AnyValue):
        return                                    # kept verbatim (and documented as such)
    if "items" in up:
        if not isinstance(ours, Arr):
            found["neither"].append((dotted(path), f"upstream is a list, Ambit's schema is {type(ours).__name__}"))
            return
        walk(up["items"], ours.items, [*path, "[]"], found)
        return
    if isinstance(up.get("additionalProperties"), dict):
        if not isinstance(ours, Map):
            found["neither"].append((dotted(path), f"upstream is a map, Ambit's schema is {type(ours).__name__}"))
            return
        walk(up["additionalProperties"], ours.values, [*path, "{}"], found)
        return
    props = up.get("properties") or {}
    if props and not isinstance(ours, Obj):
        if not isinstance(ours, IntOrStr):
            found["neither"].append((dotted(path), f"upstream is an object, Ambit's schema is {type(ours).__name__}"))
        return
    for name, sub in props.items():
        if isinstance(ours, Obj) and name in ours.fields:
            found["honoured"].append([*path, name])
            walk(sub, ours.fields[name], [*path, name], found)
        elif isinstance(ours, Obj) and name in ours.unsupported:
            found["refused"].append([*path, name])
        else:
            found["neither"].append((dotted([*path, name]), "unknown to Ambit's schema"))


def build(segments: list[str], leaf: Any) -> tuple[Any, str]:
    """An object setting only the field at `segments` (under spec), and its path in error messages."""
    value, shown = leaf, ""
    for seg in reversed(segments):
        if seg == "[]":
            value = [value]
        elif seg == "{}":
            value = {"k": value}
        else:
            value = {seg: value}
    for seg in segments:
        shown += "[0]" if seg == "[]" else "[k]" if seg == "{}" else f".{seg}"
    return value, "spec" + shown


@pytest.mark.parametrize("spec,group,version,schema", CASES,
                         ids=[f"{s.kind}-{g}-{v}" for s, g, v, _ in CASES])
def test_every_upstream_field_is_honoured_or_refused_by_name(spec: KindSpec, group: str, version: str,
                                                             schema: dict[str, Any]) -> None:
    found: dict[str, list[Any]] = {"honoured": [], "refused": [], "neither": []}
    walk(schema, spec.spec_schema, [], found)
    assert not found["neither"], (
        f"{spec.kind} {group}/{version}: {len(found['neither'])} upstream field(s) neither honoured nor refused "
        "by name:\n" + "\n".join(f"  spec.{p}: {why}" for p, why in found["neither"]))
    assert found["honoured"], "the walk found nothing: the upstream schema changed shape"
    for segments in found["refused"]:
        body, path = build(segments, {})
        obj = {"apiVersion": f"{group}/{version}", "kind": spec.kind,
               "metadata": {"name": "x", "namespace": "default"}, "spec": body}
        reasons = [e.reason for e in validate_object(obj) if e.path == path]
        assert reasons, f"{path}: setting it raised no error at that path"
        assert any("not supported" in r for r in reasons), f"{path}: refused without saying why: {reasons}"


def test_the_walk_covers_every_upstream_group_ambit_accepts() -> None:
    seen = {(s.kind, g) for s, g, _, _ in CASES}
    assert {("AuthorizationPolicy", "security.istio.io"), ("PeerAuthentication", "security.istio.io"),
            ("VirtualService", "networking.istio.io"), ("DestinationRule", "networking.istio.io"),
            ("Telemetry", "telemetry.istio.io"), ("HTTPRoute", "gateway.networking.k8s.io"),
            ("GRPCRoute", "gateway.networking.k8s.io"), ("Gateway", "gateway.networking.k8s.io")} <= seen


@pytest.mark.parametrize("crd", CRDS, ids=[c["metadata"]["name"] for c in CRDS])
def test_every_other_upstream_kind_is_refused_with_its_reason(crd: dict[str, Any]) -> None:
    group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
    if any(kind == s.kind and group in dict(s.groups) for s in KINDS):
        return
    assert (group, kind) in UNSUPPORTED_KINDS, f"{kind}.{group} would be refused as an unknown kind"
    for v in served(crd):
        errs = validate_object({"apiVersion": f"{group}/{v['name']}", "kind": kind,
                                "metadata": {"name": "x", "namespace": "default"}, "spec": {}})
        assert [(e.path, "not" in e.reason) for e in errs] == [("kind", True)], errs


def test_istio_gateway_is_validated_as_istio_gateway_not_told_to_change_its_api_version() -> None:
    """Both groups name a kind `Gateway`: Istio's is checked against Istio's schema (servers), not
    Gateway API's (listeners), and not refused with advice to change its apiVersion."""
    errs = validate_object({"apiVersion": "networking.istio.io/v1", "kind": "Gateway",
                            "metadata": {"name": "ingress", "namespace": "istio-system"},
                            "spec": {"selector": {"istio": "ingressgateway"}, "servers": []}})
    assert [(e.path, e.reason) for e in errs] == [("spec.servers", "must have at least 1 item(s)")]


def test_upstream_trust_domain_values_are_accepted_and_enforced() -> None:
    """Istio's own valid example (pkg/config/validation/testdata/crds/authz-valid.yaml) passes, and its
    fields reach the model instead of being refused as "not supported yet"."""
    from controller.translate import translate
    obj = {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
           "metadata": {"name": "p", "namespace": "demo"},
           "spec": {"rules": [{"from": [{"source": {
               "trustDomains": ["cluster.local"],
               "notTrustDomains": ["not-cluster.local", "not-cluster-prefix-*", "*-not-suffix-cluster", "*"]}}],
               "when": [{"key": "source.trustDomain", "values": ["td.example"]}]}]}}
    assert validate_object(obj) == []
    [a] = translate([obj]).authorizations
    [[src], [cond]] = a.rules[0].clauses
    assert (src.trust_domains, src.not_trust_domains, cond.trust_domains) == (
        ["cluster.local"], ["not-cluster.local", "not-cluster-prefix-*", "*-not-suffix-cluster", "*"], ["td.example"])


def test_http2_keepalive_is_accepted_and_checked() -> None:
    def dr(keepalive: Any) -> list[Any]:
        return validate_object({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
                                "metadata": {"name": "d", "namespace": "demo"},
                                "spec": {"host": "h", "trafficPolicy": {"connectionPool": {"http": {
                                    "http2KeepAlive": keepalive}}}}})
    assert dr({"interval": "30s", "timeout": "5s"}) == []
    assert [e.path for e in dr({"interval": "soon"})] == [
        "spec.trafficPolicy.connectionPool.http.http2KeepAlive.interval"]


def test_gateway_allowed_listeners_accepted_and_tls_refused_by_name() -> None:
    gw = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
          "metadata": {"name": "waypoint", "namespace": "demo"},
          "spec": {"gatewayClassName": "ambit-waypoint", "listeners": [{"name": "mesh", "port": 15008,
                                                                        "protocol": "HBONE"}],
                   "allowedListeners": {"namespaces": {"from": "None"}}}}
    assert validate_object(gw) == []
    gw["spec"]["allowedListeners"]["namespaces"]["from"] = "All"
    errs = validate_object(gw)
    assert [e.path for e in errs] == ["spec.allowedListeners.namespaces.from"] and "not supported" in errs[0].reason
    gw["spec"]["allowedListeners"]["namespaces"]["from"] = "None"
    gw["spec"]["tls"] = {"frontend": {"default": {"validation": {
        "caCertificateRefs": [{"group": "", "kind": "ConfigMap", "name": "ca"}]}}}}
    errs = validate_object(gw)
    assert [e.path for e in errs] == ["spec.tls"] and "not supported by Ambit on a waypoint" in errs[0].reason


def test_refused_fields_stay_in_the_crds_so_the_api_server_does_not_prune_them() -> None:
    from controller.kinds import BY_KIND
    from controller.kinds.crds import crd
    schema = crd(BY_KIND["RequestAuthentication"])["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    rule = schema["properties"]["spec"]["properties"]["jwtRules"]["items"]["properties"]
    assert rule["presence"]["x-kubernetes-preserve-unknown-fields"] is True
    assert "not supported" in rule["presence"]["description"]


def test_http2_keepalive_is_honoured_and_a_timeout_without_interval_is_refused() -> None:
    """http2KeepAlive with an interval is applied by the waypoint (PINGs on h2 upstreams,
    waypoint/traffic/lifetime.py): no warning. A timeout alone would send no PING (Envoy sends
    interval PINGs only): refused, as istiod refuses it ("http2 keepalive interval is required"),
    where it used to be accepted with a warning."""
    from controller.validation import validate_object
    from controller.waypoints.advisories import advisories

    def dr(keepalive: Any) -> Any:
        return {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
                "metadata": {"name": "d", "namespace": "demo"},
                "spec": {"host": "h", "trafficPolicy": {"connectionPool": {"http": {"http2KeepAlive": keepalive}}}}}
    field = "spec.trafficPolicy.connectionPool.http.http2KeepAlive"
    assert not [a for a in advisories([dr({"interval": "30s", "timeout": "5s"})]) if a.path.startswith(field)]
    assert [(e.path, "interval is required" in e.reason) for e in validate_object(dr({"timeout": "5s"}))] == [
        (f"{field}.interval", True)]
