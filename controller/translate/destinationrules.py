"""Several DestinationRules for one host, combined as Istio combines them.

Istio (istio/istio pilot/pkg/model/destination_rule.go `mergeDestinationRule`, over the rules
sorted by creation time, then namespace and name) merges the rules that name the same host:

- the unique subsets (by name) are concatenated, oldest rule first; a subset name an older rule
  already defines stays the older rule's, and the younger one's is dropped;
- the first rule's top-level `trafficPolicy` is kept; a younger rule's is used only when no older
  rule has one, and is dropped otherwise.

Rules are merged by the host as written and resolved (short names completed in the rule's
namespace), not across hosts: a Service takes the rules of its own host, else of the most specific
wildcard host that matches it (`MostSpecificHostMatch`), never a blend of the two.

What a younger rule loses is returned (`MergedRule.dropped`) so `ambit apply` can say so
(controller.waypoints.advisories) and `ambit analyze` can report it (AMB0107).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from controller.translate.index import ns_of
from controller.translate.visibility import namespace_of, visible_to
from controller.validation import object_ref

if TYPE_CHECKING:
    from controller.translate.routes import Hosts

Obj = dict[str, Any]


@dataclass
class MergedRule:
    host: str                       # the host the rules name, resolved ("*..." for a wildcard)
    spec: Obj                       # the merged spec: what the waypoint applies
    rules: list[Obj]                # the rules merged, oldest first
    dropped: list[tuple[Obj, str, str]] = field(default_factory=list)   # (rule, field path, why)


def merge_rules(rules: list[Obj], host: str) -> MergedRule:
    """Istio's mergeDestinationRule over the rules of one host, oldest first."""
    first = rules[0]
    spec = dict(first.get("spec") or {})
    subsets = list(spec.get("subsets") or [])
    owner = {s.get("name"): first for s in subsets}
    policy_of = first if spec.get("trafficPolicy") is not None else None
    out = MergedRule(host, spec, list(rules))
    for dr in rules[1:]:
        own = dr.get("spec") or {}
        for i, s in enumerate(own.get("subsets") or []):
            name = s.get("name")
            if name in owner:
                out.dropped.append((dr, f"spec.subsets[{i}]", (
                    f'not applied: {object_ref(owner[name])} is older and already defines subset "{name}" for {host}; '
                    "the older one applies (Istio merges the DestinationRules of one host the same way)")))
                continue
            owner[name] = dr
            subsets.append(s)
        if own.get("trafficPolicy") is None:
            continue
        if policy_of is None:
            spec["trafficPolicy"], policy_of = own["trafficPolicy"], dr
        else:
            out.dropped.append((dr, "spec.trafficPolicy", (
                f"not applied: {object_ref(policy_of)} is older and already sets the trafficPolicy for {host}; Istio "
                "merges the DestinationRules of one host by keeping the first trafficPolicy and adding new subsets "
                "(move this policy there, or into a subset)")))
    spec["subsets"] = subsets
    return out


def rules_by_host(rules: list[Obj], hosts: Hosts) -> list[MergedRule]:
    """The merged rules of each host the DestinationRules name (`rules` oldest first), most
    specific host first: exact hosts, then wildcards from the longest."""
    groups: dict[str, list[Obj]] = {}
    for dr in rules:
        host = (dr.get("spec") or {}).get("host", "")
        groups.setdefault(host if host.startswith("*") else hosts.fqdn(host, ns_of(dr)), []).append(dr)
    order = sorted(groups, key=lambda h: (h.startswith("*"), -len(h), h))
    return [merge_rules(groups[h], h) for h in order]


def rules_in_force(rules: list[Obj], hosts: Hosts, waypoint_of: Callable[[str], str] | None = None,
                   hidden: dict[tuple[str, str], tuple[Obj, list[str]]] | None = None) -> dict[str, MergedRule]:
    """FQDN -> the merged rule in force for it: that of its own host, else of the most specific
    wildcard host that matches it. A non-wildcard host that is no known Service keeps its rule
    too (the advisories then say that nothing serves it).

    `waypoint_of(fqdn)`: the waypoint ("ns/name") serving a host, whose namespace sees only the
    rules exported to it (controller.translate.visibility): those are merged, and a host whose own
    rules are all hidden falls back to a wildcard's, as Istio's lookup among the visible rules
    does. What is hidden goes to `hidden`: (rule ref, waypoint) -> (rule, hosts)."""
    out: dict[str, MergedRule] = {}
    for merged in rules_by_host(rules, hosts):
        for fq in hosts.expand(merged.host, "") if merged.host.startswith("*") else [merged.host]:
            if fq in out:
                continue
            wp = waypoint_of(fq) if waypoint_of is not None else ""
            seen, unseen = [], []
            for r in merged.rules:
                (seen if not wp or visible_to(r, namespace_of(wp)) else unseen).append(r)
            for r in unseen:
                if hidden is not None:
                    hidden.setdefault((object_ref(r), wp), (r, []))[1].append(fq)
            if not unseen:
                out[fq] = merged
            elif seen:
                out[fq] = merge_rules(seen, merged.host)
    return out
