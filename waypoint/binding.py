"""Which policies a waypoint enforces, by their `targetRefs` (istio/api type/v1beta1/selector.proto
`PolicyTargetReference`), shared by AuthorizationPolicy (waypoint/authz) and RequestAuthentication
(waypoint/authn) so both bind alike.

A policy with scope "waypoint" applies to every request through this waypoint when it names its
`Gateway`, or its `GatewayClass` from the root namespace; to requests for one Service when it
names that `Service`, in the policy's own namespace (Istio refuses cross-namespace targetRefs).
`selector` and namespace-wide policies are the destination ztunnel's, not the waypoint's.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

P = TypeVar("P", bound=Any)         # a model resource with name, namespace, scope and target_refs


@dataclass(frozen=True, slots=True)
class Waypoint:
    """This waypoint, as policies name it."""

    namespace: str
    name: str
    gateway_class: str = "ambit-waypoint"
    root_namespace: str = "ambit-system"


@dataclass(frozen=True, slots=True)
class Bound(Generic[P]):
    """`gateway` policies apply to every request; `by_service` ones to requests for that Service."""

    gateway: tuple[P, ...]
    by_service: dict[str, tuple[P, ...]]


def bind(policies: Iterable[P], waypoint: Waypoint) -> Bound[P]:
    """The policies (ordered by namespace/name) that name this waypoint or a Service."""
    gateway: list[P] = []
    by_service: dict[str, list[P]] = {}
    for p in sorted(policies, key=lambda p: (p.namespace, p.name)):
        if p.scope != "waypoint":
            continue
        for ref in p.target_refs:
            kind, name, ns = ref.get("kind", ""), ref.get("name", ""), p.namespace
            if ref.get("namespace") not in (None, "", ns):
                continue        # another namespace's target: refused by validation, never bound (as Istio)
            if kind == "Gateway" and (ns, name) == (waypoint.namespace, waypoint.name):
                gateway.append(p)
                break
            if (kind == "GatewayClass" and p.namespace == waypoint.root_namespace
                    and name == waypoint.gateway_class):
                gateway.append(p)
                break
            if kind == "Service":
                by_service.setdefault(f"{ns}/{name}", []).append(p)
    return Bound(tuple(gateway), {k: tuple(v) for k, v in by_service.items()})
