"""istiod's webhook warnings on AuthorizationPolicies, PeerAuthentications, RequestAuthentications
and Telemetries (istio/istio `pkg/config/validation/validation.go`: `validateWorkloadSelector`,
`ValidateAuthorizationPolicy`, `validateTelemetryTracing`), repeated by `ambit apply` and the
controller as advisories.

istiod accepts these objects and warns; Ambit accepts and applies them too, so it says what istiod
says and what Ambit does with the object. The conditions are istiod's own, quirks included (a DENY
rule of `when` conditions only is not warned about; `remoteIpBlocks` counts as TCP), so the same
YAML gets the same warnings. istiod's other Telemetry warning (an empty `tagOverrides` name) is a
refusal in Ambit: "" is no Prometheus label name.
"""

from __future__ import annotations

from typing import Any

from controller.kinds.security import dry_run

Obj = dict[str, Any]

# istiod's tcpRulesInFrom: source fields that, when set, give a DENY rule a part that applies to TCP
_TCP_SOURCE = ("principals", "notPrincipals", "ipBlocks", "notIpBlocks", "namespaces", "notNamespaces",
               "remoteIpBlocks", "notRemoteIpBlocks", "serviceAccounts", "notServiceAccounts")


def selector_warnings(spec: Obj) -> list[tuple[str, str]]:
    """istiod's validateWorkloadSelector: a `selector` without `matchLabels` is most likely a mistake."""
    sel = spec.get("selector")
    if sel is None or (sel or {}).get("matchLabels"):
        return []
    return [("spec.selector", "workload selector specified without labels (istiod warns too): Ambit reads it as no "
                              "selector, as Istio does: the object is namespace-wide (mesh-wide in the root "
                              "namespace)")]


def _http_only_deny(rule: Obj) -> bool:
    """istiod's condition: a rule whose `from` has no TCP source field and no `to`, or whose `to`
    has no ports, cannot be evaluated on a TCP connection (its `when` is not looked at)."""
    froms = [f.get("source") for f in rule.get("from") or [] if isinstance(f, dict) and f.get("source") is not None]
    ops = [t.get("operation") for t in rule.get("to") or [] if isinstance(t, dict) and t.get("operation") is not None]
    tcp_from = any(s.get(k) for s in froms for k in _TCP_SOURCE)      # (an empty list is nil in istiod)
    tcp_to = any(op.get("ports") or op.get("notPorts") for op in ops)
    return bool(froms and not ops and not tcp_from) or bool(ops and not tcp_to)


def authz_warnings(o: Obj) -> list[tuple[str, str]]:
    spec = o.get("spec") or {}
    out = selector_warnings(spec)
    if spec.get("action") != "DENY":
        return out
    does = ("in this dry run Ambit reports such denials (at a waypoint), never enforces them" if dry_run(o) else
            "so does Ambit: where ztunnel enforces it, and on the ports a waypoint relays as TCP, the rule "
            "applies without its HTTP attributes")
    for i, rule in enumerate(spec.get("rules") or []):
        if isinstance(rule, dict) and _http_only_deny(rule):
            out.append((f"spec.rules[{i}]", "configured AuthorizationPolicy will deny all traffic to TCP ports under "
                        "its scope due to the use of only HTTP attributes in a DENY rule; it is recommended to "
                        f"explicitly specify the port (istiod warns too): {does}; name the ports it is meant for "
                        "in to.operation.ports"))
    return out


def telemetry_warnings(spec: Obj) -> list[tuple[str, str]]:
    out = selector_warnings(spec)
    tracing = spec.get("tracing") or []
    if len(tracing) > 1:
        out.append(("spec.tracing", "multiple tracing is not currently supported (istiod warns too): Ambit applies "
                    "the entries in order, each to the side its match.mode names, a later entry's fields "
                    "overriding an earlier one's, as Istio's merge does"))
    for i, t in enumerate(tracing):
        if len((t or {}).get("providers") or []) > 1:
            out.append((f"spec.tracing[{i}].providers", "multiple providers is not currently supported (istiod warns "
                        "too: Istio sends spans to the first one only): Ambit sends each span to every tracing "
                        "provider listed"))
    return out
