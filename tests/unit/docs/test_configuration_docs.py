"""docs/configuration.md names every field of every configuration kind Ambit accepts, and every kind
it refuses: the project's rule is that each field is honoured or refused with its reason, and a user
can only rely on that if the document says which. The schemas (`controller.kinds.KINDS`) are the
truth; a field added to a schema without a word in its kind's section fails here, listing every
missing name at once.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from controller.kinds import KINDS, UNSUPPORTED_KINDS, KindSpec
from controller.kinds.schema import Arr, Map, Obj, Schema
from tests.unit.docs.mdtext import code_names, read, section

# The section of configuration.md that describes each kind, by (first group, kind).
SECTIONS: dict[tuple[str, str], str] = {
    ("security.istio.io", "AuthorizationPolicy"): "AuthorizationPolicy",
    ("security.istio.io", "PeerAuthentication"): "PeerAuthentication",
    ("security.istio.io", "RequestAuthentication"): "RequestAuthentication",
    ("networking.istio.io", "VirtualService"): "VirtualService",
    ("networking.istio.io", "DestinationRule"): "DestinationRule",
    ("networking.istio.io", "ServiceEntry"): "ServiceEntry",
    ("telemetry.istio.io", "Telemetry"): "Telemetry",
    ("gateway.networking.k8s.io", "HTTPRoute"): "HTTPRoute and GRPCRoute (Gateway API, GAMMA)",
    ("gateway.networking.k8s.io", "GRPCRoute"): "HTTPRoute and GRPCRoute (Gateway API, GAMMA)",
    ("gateway.networking.k8s.io", "Gateway"): "Gateway (waypoints and ingress gateways)",
    ("gateway.networking.k8s.io", "TLSRoute"): "TLSRoute and TCPRoute",
    ("gateway.networking.k8s.io", "TCPRoute"): "TLSRoute and TCPRoute",
    ("gateway.networking.k8s.io", "ReferenceGrant"): "ReferenceGrant (Gateway API)",
    ("gateway.networking.k8s.io", "BackendTLSPolicy"): "BackendTLSPolicy (Gateway API)",
    ("gateway.networking.k8s.io", "GatewayClass"): "GatewayClass (Gateway API)",
    ("networking.istio.io", "Gateway"): "Gateway (Istio, `networking.istio.io`)",
    ("", "Namespace"): "Core kinds",
    ("", "Pod"): "Core kinds",
    ("", "Service"): "Core kinds",
    ("discovery.k8s.io", "EndpointSlice"): "Core kinds",
    ("", "ServiceAccount"): "Core kinds",
    ("", "Node"): "Core kinds",
    ("", "Secret"): "Core kinds",
    ("", "ConfigMap"): "Core kinds",
}

# How deep honoured fields must be named: spec.a (1) and spec.a.b (2); list items and map values do
# not count as a level. Refused fields must be named at any depth.
DEPTH = 2


def _inner(node: Schema) -> Schema:
    while isinstance(node, Arr | Map):
        node = node.items if isinstance(node, Arr) else node.values
    return node


def _fields(node: Schema, path: str, depth: int) -> Iterator[tuple[str, str, bool]]:
    """(path, name, refused) for the honoured fields down to DEPTH and every refused field."""
    node = _inner(node)
    if not isinstance(node, Obj):
        return
    for name in node.unsupported:
        if name not in node.fields:
            yield f"{path}.{name}", name, True
    for name, sub in node.fields.items():
        if depth <= DEPTH:
            yield f"{path}.{name}", name, False
        yield from _fields(sub, f"{path}.{name}", depth + 1)


def _kind_fields(spec: KindSpec) -> Iterator[tuple[str, str, bool]]:
    """A mesh kind's fields under `spec`; a core kind's (no spec for some) under its body, minus
    `metadata` and `status` bookkeeping that the section describes in prose."""
    if spec.mesh:
        yield from _fields(spec.spec_schema, "spec", 1)
        return
    for name, sub in spec.body.fields.items():
        if name != "metadata":
            yield name, name, False
            yield from _fields(sub, name, 1)


def _key(spec: KindSpec) -> tuple[str, str]:
    return (spec.groups[0][0], spec.kind)


def missing_fields(doc: str) -> list[str]:
    missing = []
    for spec in KINDS:
        heading = SECTIONS.get(_key(spec))
        if heading is None:
            missing.append(f"{spec.kind} ({spec.groups[0][0] or 'core'}): no section mapped in SECTIONS")
            continue
        named = code_names(section(doc, heading))
        for path, name, refused in _kind_fields(spec):
            if name not in named:
                what = "refused field" if refused else "field"
                missing.append(f"{spec.kind}: {what} {path} (section {heading!r})")
    return sorted(set(missing))


def test_every_accepted_kind_has_a_section() -> None:
    assert {_key(k) for k in KINDS} <= set(SECTIONS), "map each new kind to its section"


def test_every_field_of_every_kind_is_documented() -> None:
    missing = missing_fields(read("configuration.md"))
    assert not missing, ("docs/configuration.md does not name these fields in their kind's section "
                         "(in backticks):\n  " + "\n  ".join(missing))


def test_every_unsupported_kind_is_named() -> None:
    doc = read("configuration.md")
    missing = [f"{group}/{kind}" for group, kind in UNSUPPORTED_KINDS
               if not re.search(rf"(?<![A-Za-z]){kind}(?![A-Za-z])", doc)]
    assert not missing, "docs/configuration.md does not name these refused kinds:\n  " + "\n  ".join(missing)


def test_every_short_name_is_listed() -> None:
    """`ambit get KIND` takes every short name a kind has; the list in the document is complete."""
    listed = code_names(section(read("configuration.md"), "Applying, listing and deleting in the lab"))
    missing = sorted({n for k in KINDS for n in k.short_names} - listed)
    assert not missing, f"docs/configuration.md does not list these short names: {', '.join(missing)}"


def test_the_check_sees_a_missing_field() -> None:
    """The walk is not vacuous: removing one field's mention from its section is reported."""
    doc = read("configuration.md")
    pa = section(doc, "PeerAuthentication")
    broken = doc.replace(pa, pa.replace("`portLevelMtls`", "port-level modes"))
    assert any("spec.portLevelMtls" in m for m in missing_fields(broken))
