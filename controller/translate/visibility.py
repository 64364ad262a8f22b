"""`exportTo` of VirtualServices and DestinationRules: which proxies see an object, as in Istio.

Istio (pkg/config/visibility; pilot/pkg/model/push_context.go `initVirtualServices`,
`VirtualServicesForGateway`, `setDestinationRules`, `destinationRule`) scopes these objects by the
namespace of the *proxy* that would apply them (its ConfigNamespace), not of the client: in ambient
a waypoint's namespace (its Gateway's), and an ingress gateway's (where its pods run, i.e. Ambit's
ingress Gateway's namespace; not the namespace of an Istio Gateway object it serves).

- "." is the object's own namespace, "*" every namespace, any other entry that namespace;
- unset is "*" (Istio's default without MeshConfig `defaultVirtualServiceExportTo` /
  `defaultDestinationRuleExportTo`, which Ambit does not have);
- "~" (no one) is refused for these kinds by validation, as Istio refuses it
  (controller.kinds.networking); ServiceEntries have their own (controller.translate.serviceentries).
"""

from __future__ import annotations

from typing import Any

from controller.translate.index import ns_of

Obj = dict[str, Any]


def exported_to(obj: Obj) -> set[str]:
    """The namespaces `obj` is exported to ("." resolved), {"*"} for every namespace."""
    ns = ns_of(obj)
    return {ns if e == "." else e for e in (obj.get("spec") or {}).get("exportTo") or ["*"]}


def visible_to(obj: Obj, namespace: str) -> bool:
    """Does a proxy of `namespace` apply `obj`?"""
    seen = exported_to(obj)
    return "*" in seen or namespace in seen


def restricted(obj: Obj) -> bool:
    """Is `obj` hidden from some namespace (an exportTo other than "*")?"""
    return "*" not in exported_to(obj)


def export_text(obj: Obj) -> str:
    """The exportTo as written, for messages."""
    return ", ".join((obj.get("spec") or {}).get("exportTo") or ["*"])


def namespace_of(ref: str) -> str:
    """The namespace of a "ns/name" reference (a waypoint's), "" for none."""
    return ref.split("/", 1)[0] if "/" in ref else ""
