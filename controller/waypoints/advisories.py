"""Configuration that is accepted but not (yet) enforced, said out loud.

Ambit's rule is "no silent no-op": anything it accepts is honoured, refused, or warned about. The
validator refuses what can never work; this module finds what is valid but does nothing *now*:

- `ZtunnelAccepted` (AuthorizationPolicy bound by `selector` or namespace-wide, with rules that
  need HTTP: methods, paths, hosts, request principals, remote IPs, `request.*` conditions).
  ztunnel cannot see HTTP, so it fails closed: in an ALLOW policy those rules allow nothing, in a
  DENY policy their L4 part denies everything it matches. Istio reports the same situation as the
  condition `ZtunnelAccepted=False`, reason `UnsupportedValue`; so does Ambit.
- `WaypointAccepted` (AuthorizationPolicy bound by `targetRefs`): enforced only by the waypoint
  of its target. A target that does not exist (`TargetNotFound`), a Service that uses no waypoint,
  or whose waypoint Gateway does not exist or does not serve Service traffic (`AncestorNotBound`),
  means the policy is enforced by nobody: ztunnel leaves targetRefs policies to waypoints.
- RequestAuthentication: the same for its targetRefs; bound by `selector` or namespace-wide it is
  enforced by nobody (JWTs are checked by waypoints only), and says so.
- Routes (VirtualService, HTTPRoute, GRPCRoute) and DestinationRules for a host that no waypoint
  serves: the waypoint is what applies them, so until one serves the host they change nothing.
- Namespaces, Pods and Services whose Ambit labels or balancing fields do nothing as written
  (`controller.waypoints.label_advisories`).
- STRICT PeerAuthentications and ztunnel-enforced AuthorizationPolicies selecting pods in ingress
  mode (`ambient.istio.io/bypass-inbound-capture`), whose plaintext inbound they do not cover, and
  those pods (`controller.ingress_mode`).
- Fields the waypoint accepts but does not apply (session persistence's idleTimeout, locality failover
  without outlier detection, TLS origination, PROXY protocol), fields it applies
  differently from Istio (a fault without a percentage, `exponentialDelay`, a mirror to a host that
  is no mesh Service), `match.statPrefix`
  and the `retryOn` values Istio accepts that the waypoint does not apply (ambit.resilience).
- VirtualService delegation left out (controller.translate.delegates): a delegate that does not
  exist, has hosts or is not exported to the root's namespace, a delegate route whose matches fit
  none of its root's, a delegate no root uses.
- What a younger DestinationRule loses when it is merged with older ones for its host
  (controller.translate.destinationrules): a subset name already defined, a second trafficPolicy.
- exportTo (`NotExported`): a VirtualService or DestinationRule not exported to the namespace of
  the waypoint serving a host, or a VirtualService not exported to an ingress gateway's namespace,
  is not applied there (honoured, as in Istio, and said since it is rarely meant); a DestinationRule
  that an ingress gateway or another waypoint applies although it is not exported to its namespace
  (Ambit chooses a host's rules once, for its waypoint's namespace).

Pure: `advisories(objects)` takes a snapshot (Kubernetes-shaped objects) and returns `Advisory`s
that name the object, the field and the reason. `ambit apply` prints them as warnings; the
controller writes the AuthorizationPolicy ones as status conditions (`policy_conditions`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ambit.resilience import RETRY_ON_NOT_APPLIED, retry_on_parts
from ambit.telemetry import ACCESS_LOG_KINDS, GATEWAY_LABEL, TRACING_KINDS, providers_of
from controller.ingress_mode import INBOUND_BYPASSED, ingress_mode_notes
from controller.kinds.security import DRY_RUN, L4_CONDITION_KEYS, dry_run
from controller.translate import translate
from controller.translate.credentials import INVALID_CREDENTIAL
from controller.translate.delegates import Delegation
from controller.translate.destinationrules import rules_by_host, rules_in_force
from controller.translate.index import age_key, ns_of, waypoint_ref
from controller.translate.policy import target_refs
from controller.translate.routes import NOT_EXPORTED, VS_REDIRECT_CODES, Hosts, port_parts_not_inherited
from controller.translate.visibility import export_text, restricted, visible_to
from controller.translate.waypoints import SERVES_SERVICES
from controller.validation import object_ref, split_valid
from controller.waypoints.claim_routes import (
    CLAIMS_NOT_VERIFIED,
    unverified_claim_matches,
    unverified_policies,
)
from controller.waypoints.gateway_hosts import HOST_NOT_IN_GATEWAY, hosts_not_in_gateway
from controller.waypoints.gatewayclasses import PARAMETERS_NOTE, is_class
from controller.waypoints.gatewayclasses import accepted as class_accepted
from controller.waypoints.gateways import (
    STATUS_GROUP_SUFFIXES,
    WAYPOINT_CLASSES,
    is_waypoint,
    merge_conditions,
    waypoint_for,
)
from controller.waypoints.istio_warnings import istio_warnings
from controller.waypoints.label_advisories import label_notes
from controller.waypoints.never_match import NEVER_MATCHES, never_matching
from controller.waypoints.port_refs import PORT_NOT_FOUND, port_mismatches
from controller.waypoints.through_subsets import through_subsets
from controller.waypoints.unenrolled import NOT_ENROLLED, unenrolled_policies
from controller.waypoints.unknown_keys import UNKNOWN_KEY, unknown_keys
from controller.waypoints.unreachable import UNREACHABLE, unreachable_rules

Obj = dict[str, Any]

ZTUNNEL_ACCEPTED = "ZtunnelAccepted"
WAYPOINT_ACCEPTED = "WaypointAccepted"
NOT_ENFORCED = "NotEnforced"          # routes and fields: a warning only, no status condition
# istiod's webhook warnings (controller.waypoints.istio_warnings): Ambit applies the object as
# written, as Istio does, so they are no `Enforced=False`; `ambit apply`, `ambit analyze` and the
# admission webhook (kubectl's `Warning:` lines, where istiod's appear) repeat them
ISTIO_WARNING = "IstioWarning"
DR_MERGED = "Merged"                  # the cause of what a younger DestinationRule loses in a merge

_L7_SOURCE = ("requestPrincipals", "notRequestPrincipals", "remoteIpBlocks", "notRemoteIpBlocks")
_L7_OPERATION = ("hosts", "notHosts", "methods", "notMethods", "paths", "notPaths")

# Accepted by the validator, but not applied. Everything else in routes and DestinationRules is
# applied by the waypoint (docs/waypoint.md, docs/resilience/).
NOT_APPLIED_GW_RULE = {
    # Gateway API v1.1 to v1.5 (removed in v1.6: no implementation applied it, GEP-1619 "IdleTimeout")
    "sessionPersistence.idleTimeout": "accepted, not applied: sessions end only by absoluteTimeout (or when their "
                                      "endpoint goes); Gateway API removed idleTimeout in v1.6, as no implementation "
                                      "applies it (Envoy's stateful session cannot either)",
}
# Istio's own warning ("outlier detection policy must be provided for failover"): without outlier
# detection no endpoint is ever unhealthy, so Istio does not prioritise by locality at all.
LOCALITY_NEEDS_OUTLIER = ("accepted, not applied: locality failover applies only with outlierDetection in the same "
                          "trafficPolicy (without it no endpoint is ever ejected, so endpoints are not prioritised "
                          "by locality, as in Istio); distribute applies without it")
NOT_APPLIED_DR_POLICY = {
    "tls": "accepted, not applied: in-mesh traffic is always HBONE mutual TLS, so client TLS settings do not apply",
    "tunnel": "accepted, not applied: the waypoint does not tunnel to other proxies",
    "proxyProtocol": "accepted, not applied: the waypoint does not send PROXY protocol headers upstream",
}


@dataclass(frozen=True)
class Advisory:
    ref: str            # Kind/namespace/name
    path: str           # the field, e.g. spec.rules[0].to[0].operation.methods
    reason: str
    condition: str      # ZtunnelAccepted | WaypointAccepted | NotEnforced | IstioWarning
    cause: str = ""     # the condition's reason: UnsupportedValue, TargetNotFound, AncestorNotBound, ...

    def __str__(self) -> str:
        return f"{self.ref}: {self.path}: {self.reason}" if self.path else f"{self.ref}: {self.reason}"


def advisories(objects: list[Obj], cluster_domain: str = "cluster.local", translation: Any = None,
               root_namespace: str = "ambit-system") -> list[Advisory]:
    """Every advisory for the valid objects of a snapshot. `translation`: the snapshot's
    `controller.translate.Translation` when the caller has it (the controller does), else computed."""
    good, _ = split_valid(objects)     # a Validated snapshot as it is; the errors of the others are not ours
    out: list[Advisory] = []
    gateways = {(ns_of(g), (g.get("metadata") or {}).get("name", "")): g for g in good if is_waypoint(g)}
    tr = translation if translation is not None else translate(good, cluster_domain=cluster_domain)
    hosts = Hosts(list(tr.services), cluster_domain)
    # The waypoint each Service *asks for* (its label, else its namespace's): the translation keeps only
    # the effective one (none when the Gateway serves no Service traffic), which cannot say why.
    ns_labels = {(o.get("metadata") or {}).get("name", ""): (o.get("metadata") or {}).get("labels") or {}
                 for o in good if o.get("kind") == "Namespace"}
    svc_labels = {(ns_of(o), (o.get("metadata") or {}).get("name", "")): (o.get("metadata") or {}).get("labels") or {}
                  for o in good if o.get("kind") == "Service"}
    svc_waypoint: dict[tuple[str, str], str | None] = {}
    for s in tr.services:
        labels = svc_labels.get((s.namespace, s.name), {})
        svc_waypoint[(s.namespace, s.name)] = waypoint_ref(
            labels, s.namespace, fallback=waypoint_ref(ns_labels.get(s.namespace, {}), s.namespace)) or s.waypoint
    for o in good:      # ServiceEntry targets: "ServiceEntry/<name>" -> the waypoint its label asks for
        if o.get("kind") == "ServiceEntry":     # (None: the entry was left out, a host or address clash)
            meta = o.get("metadata") or {}
            svc_waypoint[(ns_of(o), f"ServiceEntry/{meta.get('name', '')}")] = waypoint_ref(
                meta.get("labels") or {}, ns_of(o), fallback=waypoint_ref(ns_labels.get(ns_of(o), {}), ns_of(o))
            ) if (ns_of(o), meta.get("name", "")) in tr.entries_applied else None
    out += [Advisory(w.ref, w.path, w.reason, "NotEnforced", NOT_EXPORTED if w.path == "spec.exportTo" else "NotServed")
            for w in tr.ingress.warnings]      # (a VirtualService not exported to an ingress gateway's namespace)
    out += [Advisory(n.ref, n.path, n.reason, NOT_ENFORCED, n.cause) for n in tr.parents.notices]  # route parents
    out += [Advisory(n.ref, n.path, n.reason, NOT_ENFORCED, INVALID_CREDENTIAL)      # credentialName Secrets
            for n in tr.credentials.notes]
    for o in good:
        kind = o.get("kind")
        out += [Advisory(object_ref(o), p, why, ISTIO_WARNING)
                for p, why in istio_warnings(o, tr.ip_autoallocate)]
        if kind == "AuthorizationPolicy":
            out += _policy(o, gateways, svc_waypoint, root_namespace)
            out += custom_advisories(o, tr.mesh_settings[0] if tr.mesh_settings else None)
        elif kind == "RequestAuthentication":
            out += _request_authn(o, gateways, svc_waypoint, root_namespace)
        elif kind == "VirtualService":
            out += _vs_fields(o, hosts)
        elif kind in ("HTTPRoute", "GRPCRoute"):
            out += _gw_fields(o)
        elif kind == "DestinationRule":
            out += _dr_fields(o, {s.hostname for s in tr.services if s.kind == "ServiceEntry"})
        elif is_class(o):
            out += _class_fields(o)
        elif kind == "Telemetry":
            out += telemetry_advisories(o, tr.mesh_settings[0] if tr.mesh_settings else None)
            out += telemetry_targets(o, gateways, svc_waypoint, root_namespace) + telemetry_sides(o, gateways)
    out += telemetry_conflicts([o for o in good if o.get("kind") == "Telemetry"], root_namespace)
    out += _unserved_hosts(good, tr, gateways)
    out += destination_rule_merges(good, hosts, {s.hostname: s.waypoint for s in tr.services})
    out += rules_elsewhere(good, tr)
    out += [Advisory(n.ref, n.path, n.reason, NOT_ENFORCED, n.cause)
            for n in Delegation(o for o in good if o.get("kind") == "VirtualService").notes()]
    out += [Advisory(ref, path, why, NOT_ENFORCED, cause) for ref, path, why, cause in
            label_notes(good, gateways, {(s.namespace, s.name): s.waypoint for s in tr.services})]
    out += [Advisory(ref, path, why, NOT_ENFORCED, "UnsupportedValue") for ref, path, why in through_subsets(good, tr)]
    out += ingress_mode_advisories(good, root_namespace)
    out += [Advisory(ref, path, why, NOT_ENFORCED, CLAIMS_NOT_VERIFIED)
            for ref, path, why in unverified_claim_matches(good, tr, root_namespace)
                                            + unverified_policies(good, tr, root_namespace)]
    out += [Advisory(ref, path, why, NOT_ENFORCED, NEVER_MATCHES) for ref, path, why in never_matching(good)]
    out += [Advisory(ref, path, why, NOT_ENFORCED, UNREACHABLE) for ref, path, why in unreachable_rules(good)]
    out += [Advisory(ref, path, why, NOT_ENFORCED, HOST_NOT_IN_GATEWAY) for ref, path, why in hosts_not_in_gateway(good, tr)]
    out += [Advisory(ref, path, why, NOT_ENFORCED, NOT_ENROLLED)
            for ref, path, why in unenrolled_policies(good, tr, root_namespace)]
    out += [Advisory(ref, path, why, NOT_ENFORCED, UNKNOWN_KEY) for ref, path, why in unknown_keys(good)]
    out += [Advisory(ref, path, why, NOT_ENFORCED, PORT_NOT_FOUND) for ref, path, why in port_mismatches(good, tr, hosts, root_namespace)]
    return out


def ingress_mode_advisories(good: list[Obj], root_namespace: str) -> list[Advisory]:
    """STRICT and ztunnel-enforced policies that do not cover the plaintext inbound of pods in
    ingress mode (ambient.istio.io/bypass-inbound-capture), and those pods (controller.ingress_mode)."""
    return [Advisory(ref, path, why, NOT_ENFORCED, INBOUND_BYPASSED)
            for ref, path, why in ingress_mode_notes(good, root_namespace)]


# -- AuthorizationPolicy CUSTOM ------------------------------------------------------------------

def custom_advisories(o: Obj, mesh: Any) -> list[Advisory]:
    """A CUSTOM policy naming an external authorizer the mesh config does not define: Istio's
    builder turns it into a DENY of its rules, and so does the controller
    (controller.extauthz.bind_providers), which is not what its author meant. `mesh`: the
    MeshSettings in force (None, as for `ambit apply` without the controller's: not checked)."""
    spec = o.get("spec") or {}
    if mesh is None or spec.get("action") != "CUSTOM":
        return []
    name = (spec.get("provider") or {}).get("name") or ""
    defined = sorted(p.name for p in mesh.ext_authz)
    if not name or name in defined:
        return []
    return [Advisory(object_ref(o), "spec.provider.name", (
        f'provider "{name}" is not an external authorizer defined in the mesh config\'s extensionProviders '
        f'(envoyExtAuthzHttp or envoyExtAuthzGrpc; defined: {", ".join(defined) or "none"}): the requests its rules '
        'match are denied until it is, as in Istio (docs/security.md "External authorization")'),
        NOT_ENFORCED, "ProviderNotFound")]


# -- Telemetry ----------------------------------------------------------------------------------

# Per section: the provider kinds that get something from it, and what a provider of another kind means.
_SECTION_KINDS = {
    "metrics": (("prometheus",), "metrics provider \"{name}\" is of kind {kind}: Ambit's proxies export metrics to "
                "Prometheus only, so it gets nothing; without a Prometheus provider in force the selected proxies "
                "report no metrics"),
    "tracing": (TRACING_KINDS, "tracing provider \"{name}\" is of kind {kind}: spans go to opentelemetry and "
                "zipkin providers only, so it gets nothing (as in Istio); name a tracing provider"),
    "accessLogging": (ACCESS_LOG_KINDS, "access-log provider \"{name}\" is of kind {kind}: access logs go to "
                      "envoyFileAccessLog providers only, so it gets nothing (as in Istio); without an access-log "
                      "provider in force the proxy writes its built-in line"),
}


def telemetry_advisories(o: Obj, mesh: Any) -> list[Advisory]:
    """A Telemetry naming a provider that the mesh config (`extensionProviders`) does not define
    and that is not built in (`envoy`, `prometheus`), or one whose kind its section cannot use (a
    log provider for tracing ...): Istio ignores such a provider, and so does Ambit, so the
    Telemetry does less than it says. `mesh`: the MeshSettings in force."""
    known = providers_of(mesh)
    spec, ref, out = o.get("spec") or {}, object_ref(o), []
    for section, (kinds, why) in _SECTION_KINDS.items():
        for i, entry in enumerate(spec.get(section) or []):
            for j, p in enumerate(entry.get("providers") or []):
                name, path = p.get("name", ""), f"spec.{section}[{i}].providers[{j}].name"
                if name not in known:
                    out.append(Advisory(ref, path, (
                        f'provider "{name}" is not defined in the mesh config\'s extensionProviders (defined: '
                        f'{", ".join(sorted(known))}): it is ignored, as in Istio; define it (docs/observability.md '
                        '"Telemetry API")'), NOT_ENFORCED, "ProviderNotFound"))
                elif known[name].kind not in kinds:
                    out.append(Advisory(ref, path, why.format(name=name, kind=known[name].kind), NOT_ENFORCED,
                                        "UnsupportedValue"))
    for i, entry in enumerate(spec.get("metrics") or []):
        if entry.get("reportingInterval"):
            out.append(Advisory(ref, f"spec.metrics[{i}].reportingInterval", (
                "reportingInterval is not supported by Ambit: ztunnel and the waypoint add an open TCP "
                "connection's bytes to istio_tcp_*_bytes_total at each scrape"), NOT_ENFORCED,
                "UnsupportedValue"))
    return out


def _class_fields(o: Obj) -> list[Advisory]:
    """An Ambit GatewayClass (another controller's is that controller's): its parametersRef is not
    read; a name other than the built-in ones serves no Gateway (its `Accepted=False` says so too)."""
    cond = class_accepted(o)
    if cond is None:
        return []
    out = []
    if cond["status"] == "False":
        out.append(Advisory(object_ref(o), "metadata.name", cond["message"], NOT_ENFORCED, "UnsupportedValue"))
    if (o.get("spec") or {}).get("parametersRef") is not None:
        out.append(Advisory(object_ref(o), "spec.parametersRef", PARAMETERS_NOTE.split(" is ", 1)[1],
                            NOT_ENFORCED, "UnsupportedValue"))
    return out


def telemetry_targets(o: Obj, gateways: dict[tuple[str, str], Obj], svc_waypoint: dict[tuple[str, str], str | None],
                      root_namespace: str) -> list[Advisory]:
    """A Telemetry's targetRefs are applied by the waypoint serving each target, and by nothing else
    (ztunnel ignores targetRefs, as Istio's): a missing or unserved target gets the advisory an
    AuthorizationPolicy gets. A GatewayClass target is accepted (Istio's validation does) but not
    applied to Telemetry by Ambit: said so instead."""
    spec, ref = o.get("spec") or {}, object_ref(o)
    targets = target_refs(spec)
    classes = {path for path, t in targets if t.get("kind") == "GatewayClass"}
    out = [Advisory(ref, path, "a GatewayClass target is accepted but not applied to a Telemetry by Ambit: no "
                    "proxy applies this binding; target the waypoint (kind Gateway) or its Services, or put a "
                    "Telemetry without selector in the root namespace for the whole mesh", NOT_ENFORCED,
                    "UnsupportedValue") for path in sorted(classes)]
    return out + [a for a in _targets(o, targets, gateways, svc_waypoint, root_namespace) if a.path not in classes]


def _selects_a_waypoint(labels: dict[str, str], ns: str, gateways: dict[tuple[str, str], Obj]) -> bool:
    """Whether a selector selects a waypoint of `ns` (a waypoint resolves Telemetry with its
    Gateway-name labels, ambit/telemetry.py `for_waypoint`)."""
    return any(gns == ns and all({GATEWAY_LABEL: name, "istio.io/gateway-name": name}.get(k) == v
                                 for k, v in labels.items()) for gns, name in gateways)


def telemetry_sides(o: Obj, gateways: dict[tuple[str, str], Obj]) -> list[Advisory]:
    """Telemetry no proxy applies, by side: ztunnel does not trace, and a waypoint is the SERVER side
    of the requests it serves; so tracing for a selected workload (unless the selector selects a
    waypoint), CLIENT-side tracing, and any CLIENT-side entry of a targetRefs Telemetry (which
    binds waypoints only) change nothing."""
    spec, ref, ns = o.get("spec") or {}, object_ref(o), ns_of(o)
    out: list[Advisory] = []
    labels = (spec.get("selector") or {}).get("matchLabels") or {}
    if spec.get("tracing") and labels and not _selects_a_waypoint(labels, ns, gateways):
        out.append(Advisory(ref, "spec.selector", (
            "tracing for the workloads a selector selects is applied by no proxy: ztunnel does not trace, and a "
            "waypoint traces the requests it serves as the SERVER side; bind the Telemetry to the waypoint with "
            "targetRefs (kind Service or Gateway) to trace requests to a Service"), NOT_ENFORCED, "UnsupportedValue"))
    bound = bool(spec.get("targetRef") or spec.get("targetRefs"))
    entries = [(f"spec.tracing[{i}]", e) for i, e in enumerate(spec.get("tracing") or [])]
    if bound:
        entries += [(f"spec.accessLogging[{i}]", e) for i, e in enumerate(spec.get("accessLogging") or [])]
        entries += [(f"spec.metrics[{i}].overrides[{j}]", e) for i, m in enumerate(spec.get("metrics") or [])
                    for j, e in enumerate(m.get("overrides") or [])]
    for path, e in entries:
        if (e.get("match") or {}).get("mode") == "CLIENT":
            what = "tracing" if path.startswith("spec.tracing") else "a targetRefs Telemetry"
            out.append(Advisory(ref, f"{path}.match.mode", (
                f"CLIENT is applied by no proxy for {what}: "
                + ("ztunnel does not trace, and " if what == "tracing" else "it binds waypoints only, and ")
                + "a waypoint is the SERVER side of the requests it serves; use SERVER or CLIENT_AND_SERVER"),
                NOT_ENFORCED, "UnsupportedValue"))
    return out


def telemetry_conflicts(telemetries: list[Obj], root_namespace: str) -> list[Advisory]:
    """Istio calls two selector-less Telemetries in one namespace invalid (which applies is not
    defined); Ambit applies them in name order, later names overriding: say so on each but the first.
    A selector in the root namespace is not mesh-wide: it selects that namespace's workloads only."""
    out, seen = [], {}
    for o in sorted(telemetries, key=lambda o: (ns_of(o), (o.get("metadata") or {}).get("name", ""))):
        spec = o.get("spec") or {}
        if spec.get("targetRef") or spec.get("targetRefs"):
            continue
        ns = ns_of(o)
        if spec.get("selector"):
            if ns == root_namespace:
                out.append(Advisory(object_ref(o), "spec.selector", (
                    f"a selector in the root namespace ({root_namespace}) is not mesh-wide, as in Istio: it selects "
                    f"workloads of {root_namespace} only"), NOT_ENFORCED, "UnsupportedValue"))
            continue
        if ns in seen:
            out.append(Advisory(object_ref(o), "", (
                f"namespace {ns} already has a Telemetry without a selector ({seen[ns]}); Istio treats two as "
                "invalid, Ambit applies them in name order (this one's fields override)"), NOT_ENFORCED, "Conflicted"))
        else:
            seen[ns] = (o.get("metadata") or {}).get("name", "")
    return out


def _serves_services(gw: Obj | None) -> bool:
    return gw is not None and waypoint_for(gw) in SERVES_SERVICES


# -- AuthorizationPolicy -------------------------------------------------------------------------

def _l7_fields(rule: Obj, base: str) -> list[str]:
    paths = []
    for i, f in enumerate(rule.get("from") or []):
        paths += [f"{base}.from[{i}].source.{k}" for k in _L7_SOURCE if (f.get("source") or {}).get(k)]
    for i, t in enumerate(rule.get("to") or []):
        paths += [f"{base}.to[{i}].operation.{k}" for k in _L7_OPERATION if (t.get("operation") or {}).get(k)]
    for i, c in enumerate(rule.get("when") or []):
        if c.get("key") not in L4_CONDITION_KEYS:
            paths.append(f"{base}.when[{i}].key")
    return paths


def _ztunnel_effect(spec: Obj) -> str:
    action = spec.get("action") or "ALLOW"
    return ("in an ALLOW policy these rules allow nothing" if action == "ALLOW"
            else f"in a {action} policy their L4 part applies to every request it matches")


SELECTS_WAYPOINT = "SelectsWaypoint"


def _selected_waypoints(o: Obj, gateways: dict[tuple[str, str], Obj], root_namespace: str) -> list[str]:
    """The waypoints ("ns/name") whose pods a selector policy selects by their Gateway-name label:
    from its namespace, or from any namespace for a root-namespace policy."""
    labels = ((o.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
    ns = ns_of(o)
    if not labels:
        return []
    return [f"{gns}/{name}" for gns, name in sorted(gateways)
            if _selects_a_waypoint(labels, gns, {(gns, name): {}}) and ns in (gns, root_namespace)]


def _policy(o: Obj, gateways: dict[tuple[str, str], Obj], svc_waypoint: dict[tuple[str, str], str | None],
            root_namespace: str) -> list[Advisory]:
    spec, ref = o.get("spec") or {}, object_ref(o)
    targets = target_refs(spec)
    if not targets:
        waypoints = _selected_waypoints(o, gateways, root_namespace)
        if waypoints:
            # Istio's pre-1.22 way to bind a policy to a waypoint; Istio now ignores it, and so does
            # every Ambit proxy: a waypoint binds targetRefs only, ztunnel does not capture its pods.
            return [Advisory(ref, "spec.selector", (
                f"selects the pods of waypoint {wp}: a waypoint enforces only policies bound with targetRefs and "
                "ztunnel does not capture a waypoint's pods, so this policy is enforced nowhere (Istio ignores it "
                f"too); bind it with targetRefs: [{{kind: Gateway, group: gateway.networking.k8s.io, "
                f"name: {wp.split('/', 1)[1]}}}]"), NOT_ENFORCED, SELECTS_WAYPOINT) for wp in waypoints]
        if dry_run(o):
            # no ztunnel gets a dry-run policy (Istio's ambient control plane gives its ztunnel none),
            # and no waypoint binds a selector one: not enforced, as asked, but not reported either
            return [Advisory(ref, f"metadata.annotations[{DRY_RUN}]", (
                "a dry-run policy bound by selector (or namespace-wide) is evaluated nowhere: ztunnel is given no "
                "dry-run policy, as in Istio's ambient mode, so this dry run reports nothing; bind it with "
                "targetRefs (kind Service or Gateway) to see its results in the waypoint's access log (dry_run)"),
                NOT_ENFORCED, "DryRunNotReported")]
        effect = _ztunnel_effect(spec)
        out = _inner_wildcards(spec, ref, at_waypoint=False)
        for i, rule in enumerate(spec.get("rules") or []):
            for path in _l7_fields(rule, f"spec.rules[{i}]"):
                out.append(Advisory(ref, path, (
                    f"ztunnel cannot enforce HTTP attributes and fails closed ({effect}); to enforce them, "
                    "bind the policy to a waypoint with targetRefs (kind Service or Gateway) "
                    "instead of a selector"), ZTUNNEL_ACCEPTED, "UnsupportedValue"))
        return out
    return (_fail_safe_attributes(spec, ref) + _inner_wildcards(spec, ref, at_waypoint=True)
            + _targets(o, targets, gateways, svc_waypoint, root_namespace))


def _request_authn(o: Obj, gateways: dict[tuple[str, str], Obj], svc_waypoint: dict[tuple[str, str], str | None],
                   root_namespace: str) -> list[Advisory]:
    """A RequestAuthentication is enforced by the waypoint of its targetRefs only: ztunnel sees no
    HTTP, so one bound by selector (or namespace-wide) checks no token anywhere."""
    spec, ref = o.get("spec") or {}, object_ref(o)
    targets = target_refs(spec)
    if not targets:
        return [Advisory(ref, "spec.selector" if spec.get("selector") else "spec", (
            "accepted, but not enforced: JWTs are checked by waypoints, and a waypoint applies only a "
            "RequestAuthentication bound to it with targetRefs (kind Service or Gateway); ztunnel does not see "
            "HTTP"), NOT_ENFORCED)]
    return _targets(o, targets, gateways, svc_waypoint, root_namespace)


def _targets(o: Obj, targets: list[tuple[str, Obj]], gateways: dict[tuple[str, str], Obj],
             svc_waypoint: dict[tuple[str, str], str | None], root_namespace: str) -> list[Advisory]:
    """targetRefs that no waypoint enforces (a missing target, a Service without a waypoint ...)."""
    ns, ref = ns_of(o), object_ref(o)
    out: list[Advisory] = []
    for path, t in targets:
        kind, name = t.get("kind", ""), t.get("name", "")
        tns = t.get("namespace") or ns
        if kind == "GatewayClass":
            if name not in WAYPOINT_CLASSES:
                out.append(Advisory(ref, path, f'GatewayClass "{name}" is not a waypoint class '
                                    f'({", ".join(WAYPOINT_CLASSES)}): nothing enforces this policy',
                                    WAYPOINT_ACCEPTED, "TargetNotFound"))
            elif ns != root_namespace:
                out.append(Advisory(ref, path, f"a GatewayClass target binds only from the root namespace "
                                    f'("{root_namespace}"), as in Istio: nothing enforces this policy',
                                    WAYPOINT_ACCEPTED, "TargetNotFound"))
        elif kind == "ServiceEntry":
            key = (tns, f"ServiceEntry/{name}")
            if svc_waypoint.get(key) is None:
                why = (f'ServiceEntry "{tns}/{name}" is not applied (a host or address of it is another Service\'s: '
                       "see its errors)" if key in svc_waypoint else f'no ServiceEntry "{tns}/{name}"')
                out.append(Advisory(ref, path, f"{why}: nothing enforces this policy",
                                    WAYPOINT_ACCEPTED, "TargetNotFound"))
                continue
            wp = svc_waypoint[(tns, f"ServiceEntry/{name}")]
            if not wp or wp.partition("/")[::2] not in gateways:
                out.append(Advisory(ref, path, f'ServiceEntry "{tns}/{name}" is bound to no waypoint that exists '
                                    f'({wp or "no istio.io/use-waypoint label"}): nothing enforces this policy',
                                    WAYPOINT_ACCEPTED, "AncestorNotBound"))
        elif kind == "Gateway":
            if (tns, name) not in gateways:
                out.append(Advisory(ref, path, f'no waypoint Gateway "{tns}/{name}": nothing enforces this policy; '
                                    f"apply one with `ambit waypoint apply -n {tns} --name {name}`",
                                    WAYPOINT_ACCEPTED, "TargetNotFound"))
        elif kind == "Service":
            if (tns, name) not in svc_waypoint:
                out.append(Advisory(ref, path, f'no Service "{tns}/{name}": nothing enforces this policy',
                                    WAYPOINT_ACCEPTED, "TargetNotFound"))
                continue
            wp = svc_waypoint[(tns, name)]
            gw = gateways.get(tuple(wp.split("/", 1))) if wp else None   # type: ignore[arg-type]
            if not wp:
                why = (f'Service "{tns}/{name}" uses no waypoint: nothing enforces this policy; apply one with '
                       f"`ambit waypoint apply -n {tns} --enroll-namespace`")
            elif gw is None:
                why = f'Service "{tns}/{name}" uses waypoint "{wp}", which does not exist: nothing enforces this policy'
            elif not _serves_services(gw):
                why = (f'waypoint "{wp}" is for {waypoint_for(gw)} traffic, not Service traffic: nothing enforces '
                       "this policy")
            else:
                continue
            out.append(Advisory(ref, path, why, WAYPOINT_ACCEPTED, "AncestorNotBound"))
    return out


def _fail_safe_attributes(spec: Obj, ref: str) -> list[Advisory]:
    """Attributes the waypoint cannot evaluate (connection.sni, experimental.*): fail safe.
    requestPrincipals and request.auth.* are evaluated (RequestAuthentication, waypoint/authn)."""
    action = spec.get("action") or "ALLOW"
    effect = ("an ALLOW rule that needs it never matches" if action == "ALLOW"
              else f"a {action} rule that needs it always matches")
    out = []
    for i, rule in enumerate(spec.get("rules") or []):
        for j, c in enumerate(rule.get("when") or []):
            key = c.get("key", "")
            if key in L4_CONDITION_KEYS or key == "remote.ip" or key.startswith("request.auth.") or (
                    key.startswith("request.headers[") and key.endswith("]")):
                continue
            out.append(Advisory(ref, f"spec.rules[{i}].when[{j}].key", f'"{key}" is not supported by the waypoint: '
                                f"{effect}", NOT_ENFORCED))
    return out


def _inner_wildcards(spec: Obj, ref: str, at_waypoint: bool) -> list[Advisory]:
    """Values with a `*` that is neither first nor last: a wildcard only in a namespace at a
    waypoint (Istio's Envoy matcher); a principal, or a namespace at ztunnel (as Istio's ztunnel),
    takes it literally, and no SPIFFE id or namespace contains a `*`: the value matches nothing."""
    fields = ("principals", "notPrincipals") if at_waypoint else (
        "principals", "notPrincipals", "namespaces", "notNamespaces")
    keys = ("source.principal",) if at_waypoint else ("source.principal", "source.namespace")
    where = "a waypoint" if at_waypoint else "ztunnel"
    found: list[tuple[str, str]] = []
    for i, rule in enumerate(spec.get("rules") or []):
        for j, f in enumerate(rule.get("from") or []):
            src = f.get("source") or {}
            found += [(f"spec.rules[{i}].from[{j}].source.{k}[{n}]", v) for k in fields
                      for n, v in enumerate(src.get(k) or []) if "*" in str(v)[1:-1]]
        for j, c in enumerate(rule.get("when") or []):
            if c.get("key") in keys:
                found += [(f"spec.rules[{i}].when[{j}].{k}[{n}]", v) for k in ("values", "notValues")
                          for n, v in enumerate(c.get(k) or []) if "*" in str(v)[1:-1]]
    return [Advisory(ref, path, (
        f'"{v}": a "*" is a wildcard only at the start or the end of a value; {where} matches this one '
        "literally, and no identity or namespace contains a \"*\", so it matches nothing (as in Istio)"),
        NOT_ENFORCED, "UnsupportedValue") for path, v in found]


ENFORCED = "Enforced"
# The condition types the controller owns on Istio and Ambit objects (`object_conditions`): a type
# that no longer applies is taken away, other writers' types are kept.
OWNED_CONDITIONS = (ZTUNNEL_ACCEPTED, WAYPOINT_ACCEPTED, ENFORCED)


def has_free_status(obj: Obj) -> bool:
    """An Istio or Ambit object: its status takes the controller's conditions. (Gateway API kinds
    have their own status shapes, written by `controller.waypoints.ingress_status` and `gateways`.)"""
    return str(obj.get("apiVersion") or "").split("/")[0].endswith(STATUS_GROUP_SUFFIXES)


def object_conditions(obj: Obj, found: list[Advisory]) -> list[Obj]:
    """The conditions an Istio or Ambit object gets from the advisories, so that a cluster user sees
    on the object what `ambit apply` prints in the lab: an AuthorizationPolicy's `ZtunnelAccepted`
    / `WaypointAccepted` (`policy_conditions`), and for any of these kinds `Enforced=False` naming
    each field accepted but not applied (absent when everything is applied). Without transition
    times (the writer adds them)."""
    out = policy_conditions(obj, found) if obj.get("kind") == "AuthorizationPolicy" else []
    kept = (NOT_ENFORCED,) if obj.get("kind") == "AuthorizationPolicy" else (NOT_ENFORCED, WAYPOINT_ACCEPTED)
    mine = [a for a in found if a.ref == object_ref(obj) and a.condition in kept]
    if mine:
        out.append({"type": ENFORCED, "status": "False", "reason": next((a.cause for a in mine if a.cause), NOT_ENFORCED),
                    "message": "; ".join(f"{a.path}: {a.reason}" if a.path else a.reason for a in mine)[:32768],
                    "observedGeneration": int((obj.get("metadata") or {}).get("generation") or 0)})
    return out


def conditions_update(obj: Obj, want: list[Obj]) -> list[Obj] | None:
    """`obj`'s conditions with `want` merged in (transition times kept where the status did not
    change) and owned types that no longer apply taken away; None when nothing would change."""
    old = list((obj.get("status") or {}).get("conditions") or [])
    mine = {c["type"] for c in want}
    merged = [c for c in merge_conditions(old, want) if c.get("type") not in OWNED_CONDITIONS or c["type"] in mine]
    untimed = [[{k: v for k, v in c.items() if k != "lastTransitionTime"} for c in cs] for cs in (merged, old)]
    return None if untimed[0] == untimed[1] else merged


def policy_conditions(obj: Obj, found: list[Advisory]) -> list[Obj]:
    """The status conditions an AuthorizationPolicy gets: `ZtunnelAccepted` for selector policies
    with HTTP rules, `WaypointAccepted` for targetRefs policies (True when a waypoint serves every
    target). Without transition times (the writer adds them)."""
    spec = obj.get("spec") or {}
    gen = int((obj.get("metadata") or {}).get("generation") or 0)
    mine = [a for a in found if a.ref == object_ref(obj)]
    if spec.get("targetRef") or spec.get("targetRefs"):
        bad = [a for a in mine if a.condition == WAYPOINT_ACCEPTED]
        if bad:
            return [{"type": WAYPOINT_ACCEPTED, "status": "False", "reason": bad[0].cause,
                     "message": "; ".join(f"{a.path}: {a.reason}" for a in bad)[:32768], "observedGeneration": gen}]
        return [{"type": WAYPOINT_ACCEPTED, "status": "True", "reason": "Accepted",
                 "message": "bound to a waypoint", "observedGeneration": gen}]
    bad = [a for a in mine if a.condition == ZTUNNEL_ACCEPTED]
    if bad:
        return [{"type": ZTUNNEL_ACCEPTED, "status": "False", "reason": "UnsupportedValue",
                 "message": ("ztunnel does not support HTTP attributes (found: "
                             + ", ".join(a.path for a in bad) + f"); it fails closed: {_ztunnel_effect(spec)}. "
                             "To enforce HTTP rules, bind the policy to a waypoint with targetRefs")[:32768],
                 "observedGeneration": gen}]
    return []


# -- routes and fields not applied yet ------------------------------------------------------------

def _fault_fields(ref: str, fault: Obj | None, base: str) -> list[Advisory]:
    out = []
    for part in ("delay", "abort"):
        f = (fault or {}).get(part)
        if not f:
            continue
        if f.get("percentage") is None and f.get("percent") is None:
            out.append(Advisory(ref, f"{base}.{part}", f"no percentage: this {part} is injected into no request, "
                                "as in Istio; set percentage.value (0-100) to say which", NOT_ENFORCED))
        if part == "delay" and f.get("exponentialDelay"):
            out.append(Advisory(ref, f"{base}.delay.exponentialDelay", "applied as a fixed delay of that duration "
                                "(Istio's validation refuses exponentialDelay: not supported yet)", NOT_ENFORCED))
    return out


def _retry_on_fields(ref: str, retries: Obj | None, base: str) -> list[Advisory]:
    """retryOn conditions Istio accepts and the waypoint does not apply (ambit.resilience); when
    nothing the waypoint applies is left, the route retries nothing: said too, never silent."""
    parts = retry_on_parts((retries or {}).get("retryOn") or "")
    idle = [p for p in parts if p in RETRY_ON_NOT_APPLIED]
    if not idle:
        return []
    out = [Advisory(ref, f"{base}.retryOn", f'"{p}" is accepted, not applied: {RETRY_ON_NOT_APPLIED[p]}',
                    NOT_ENFORCED) for p in idle]
    if len(idle) == len(parts):
        out.append(Advisory(ref, f"{base}.retryOn", "no condition the waypoint applies is left: this route retries "
                            "nothing (add e.g. connect-failure,refused-stream,unavailable, Istio's default)",
                            NOT_ENFORCED))
    return out


def _stat_prefixes(ref: str, h: Obj, i: int) -> list[Advisory]:
    return [Advisory(ref, f"spec.http[{i}].match[{j}].statPrefix", "accepted, not applied: the waypoint keeps no "
                     "per-route statistics (Envoy's route.<statPrefix>.* stats); the istio_* metrics are unaffected",
                     NOT_ENFORCED) for j, m in enumerate(h.get("match") or []) if m.get("statPrefix")]


def _vs_fields(o: Obj, hosts: Any = None) -> list[Advisory]:
    spec, ref, out = o.get("spec") or {}, object_ref(o), []
    for i, h in enumerate(spec.get("http") or []):
        out += _fault_fields(ref, h.get("fault"), f"spec.http[{i}].fault")
        out += _retry_on_fields(ref, h.get("retries"), f"spec.http[{i}].retries") + _stat_prefixes(ref, h, i)
        mirrors = ([h["mirror"]] if h.get("mirror") else []) + [m.get("destination") or {} for m in h.get("mirrors") or []]
        for j, m in enumerate(mirrors):
            fq = hosts.fqdn(m.get("host", ""), ns_of(o)) if hosts is not None else ""
            if hosts is not None and not hosts.service_ref(fq):
                where = f"spec.http[{i}].mirror" if h.get("mirror") and j == 0 else \
                    f"spec.http[{i}].mirrors[{j - (1 if h.get('mirror') else 0)}].destination.host"
                out.append(Advisory(ref, where, f"{m.get('host')} is not a Service the mesh knows: no copy is sent "
                                    "(Ambit mirrors to mesh Services only)", NOT_ENFORCED))
        code = (h.get("redirect") or {}).get("redirectCode")
        if code is not None and code not in VS_REDIRECT_CODES:
            out.append(Advisory(ref, f"spec.http[{i}].redirect.redirectCode", f"{code} is accepted, not applied: "
                                "as in Istio, a redirect code other than 301, 302, 303, 307 or 308 drops this route "
                                "(requests it matches go on to the next route)", NOT_ENFORCED))
    return out


def _at(o: Obj | None, path: str) -> Any:
    """The value at a dotted field path of `o`, None when any part is missing."""
    v: Any = o or {}
    for part in path.split("."):
        v = v.get(part) if isinstance(v, dict) else None
    return v


# backendRef filters the gateway and waypoints apply when that backend is chosen
# (controller.translate.routes.gw_backend, waypoint.routing.route)
BACKEND_FILTERS_APPLIED = ("RequestHeaderModifier", "ResponseHeaderModifier", "RequestRedirect", "URLRewrite")


def _gw_fields(o: Obj) -> list[Advisory]:
    spec, ref, out = o.get("spec") or {}, object_ref(o), []
    for i, r in enumerate(spec.get("rules") or []):
        for f, why in NOT_APPLIED_GW_RULE.items():
            if _at(r, f) is not None:
                out.append(Advisory(ref, f"spec.rules[{i}].{f}", why, NOT_ENFORCED))
        for j, b in enumerate(r.get("backendRefs") or []):
            for k, flt in enumerate(b.get("filters") or []):
                if flt.get("type") not in BACKEND_FILTERS_APPLIED:
                    out.append(Advisory(ref, f"spec.rules[{i}].backendRefs[{j}].filters[{k}]",
                                        f"{flt.get('type')} is not applied per backend (header modifiers, "
                                        "RequestRedirect and URLRewrite are); put it in the rule's filters",
                                        NOT_ENFORCED))
    return out


def _entry_tls(tls: Obj, base: str) -> list[tuple[str, str]]:
    """TLS origination to a ServiceEntry host (waypoint/origination.py): SIMPLE and MUTUAL are
    applied by its waypoint; what of them is not, and ISTIO_MUTUAL (HBONE is the mesh's), are named."""
    out = []
    if tls.get("credentialName") and tls.get("mode", "DISABLE") not in ("SIMPLE", "MUTUAL"):
        out.append((f"{base}.tls.credentialName", f"not applied with mode {tls.get('mode', 'DISABLE')}: a credential "
                    "is read for modes SIMPLE and MUTUAL only, as in Istio"))
    if tls.get("mode") == "ISTIO_MUTUAL":
        out.append((f"{base}.tls.mode", "ISTIO_MUTUAL is not applied to a ServiceEntry host: a mesh destination is "
                    "reached over HBONE mutual TLS anyway, an external one speaks no Istio mTLS"))
    return out


def _policy_fields(p: Obj | None, base: str, entry: bool = False, outlier: bool = False) -> list[tuple[str, str]]:
    """(path, reason) of every traffic-policy field that is not applied. `entry`: the host is a
    ServiceEntry's, whose waypoint originates TLS; `outlier`: the policy this one is merged over
    (the host's, for a subset or port) has outlier detection."""
    outlier = outlier or (p or {}).get("outlierDetection") is not None
    out = []
    loc = ((p or {}).get("loadBalancer") or {}).get("localityLbSetting")
    if loc is not None and loc.get("enabled") is not False and not loc.get("distribute") \
            and not outlier:
        out.append((f"{base}.loadBalancer.localityLbSetting", LOCALITY_NEEDS_OUTLIER))
    if ((p or {}).get("loadBalancer") or {}).get("simple") == "PASSTHROUGH":
        out.append((f"{base}.loadBalancer.simple", "PASSTHROUGH is not applied behind a waypoint: it balances "
                    "LEAST_REQUEST, Istio's default"))
    for f, why in NOT_APPLIED_DR_POLICY.items():
        if entry and f == "tls" and (p or {}).get(f) is not None:
            out += _entry_tls((p or {})["tls"], base)
        elif (p or {}).get(f) is not None:
            out.append((f"{base}.{f}", why))
    for i, pl in enumerate((p or {}).get("portLevelSettings") or []):
        # a port-level entry inherits nothing (Istio): its own outlierDetection decides its failover
        out += _policy_fields({k: v for k, v in pl.items() if k != "port"}, f"{base}.portLevelSettings[{i}]", entry)
        lost = port_parts_not_inherited(p or {}, pl)
        if lost:
            port = (pl.get("port") or {}).get("number")
            out.append((f"{base}.portLevelSettings[{i}]", (
                f"port {port} does not inherit {', '.join(lost)} from the trafficPolicy it is in: a port-level entry "
                "replaces that policy for its port and what it leaves out takes its default, as in Istio"
                + ("; no TLS is originated on that port" if "tls" in lost else "")
                + "; repeat them in the entry to keep them")))
    return out


def _dr_fields(o: Obj, entry_hosts: set[str] = frozenset()) -> list[Advisory]:   # type: ignore[assignment]
    spec, ref = o.get("spec") or {}, object_ref(o)
    entry = spec.get("host") in entry_hosts
    found = _policy_fields(spec.get("trafficPolicy"), "spec.trafficPolicy", entry)
    host_outlier = (spec.get("trafficPolicy") or {}).get("outlierDetection") is not None
    for i, s in enumerate(spec.get("subsets") or []):
        found += _policy_fields(s.get("trafficPolicy"), f"spec.subsets[{i}].trafficPolicy", entry, host_outlier)
    out = [Advisory(ref, p, why, NOT_ENFORCED) for p, why in found]
    if spec.get("workloadSelector"):
        out.append(Advisory(ref, "spec.workloadSelector", "not supported: a DestinationRule applies to every waypoint "
                            "that routes to its host, whichever clients it selects", NOT_ENFORCED))
    return out


def destination_rule_merges(good: list[Obj], hosts: Hosts, waypoints: dict[str, str] | None = None) -> list[Advisory]:
    """What younger DestinationRules of a host lose when they are merged with the older ones, as
    Istio merges them (controller.translate.destinationrules): a subset name already defined, a
    second top-level trafficPolicy. `waypoints`: host -> the waypoint serving it, whose namespace
    sees only the rules exported to it: a rule hidden there neither wins nor loses a merge there."""
    drs = sorted((o for o in good if o.get("kind") == "DestinationRule"), key=age_key)
    merges = rules_by_host(drs, hosts)
    if waypoints is not None and any(restricted(dr) for dr in drs):
        in_force = {id(m): m for m in rules_in_force(drs, hosts, lambda fq: waypoints.get(fq, "")).values()}
        used = {m.host for m in in_force.values()}
        merges = sorted([*in_force.values(), *(m for m in merges if m.host not in used)],
                        key=lambda m: (m.host.startswith("*"), -len(m.host), m.host))
    found = dict.fromkeys((object_ref(dr), path, why) for merged in merges for dr, path, why in merged.dropped)
    return [Advisory(ref, path, why, NOT_ENFORCED, DR_MERGED) for ref, path, why in found]


def _proxies_routing_to(tr: Any) -> list[tuple[str, str, set[str]]]:
    """(what, namespace, hosts it routes to) for every ingress gateway and waypoint: the proxies that
    apply a host's DestinationRules to the traffic they send it."""
    out = []
    for gw in tr.ingress.gateways:
        dests = {d.host for ln in gw.listeners for wr in ln.hosts for r in [*wr.http, *wr.tcp]
                 for d in [*r.destinations, *(m.destination for m in getattr(r, "mirrors", []))]}
        out.append((f"ingress gateway {gw.resource_name}", gw.namespace, dests))
    by_waypoint: dict[str, set[str]] = {}
    for wr in tr.waypoint_routes:
        if wr.waypoint:
            by_waypoint.setdefault(wr.waypoint, set()).update(
                d.host for r in [*wr.http, *wr.tcp, *wr.tls]
                for d in [*r.destinations, *(m.destination for m in getattr(r, "mirrors", []))])
    out += [(f"waypoint {wp}", wp.split("/", 1)[0], dests) for wp, dests in sorted(by_waypoint.items())]
    return out


def rules_elsewhere(good: list[Obj], tr: Any) -> list[Advisory]:
    """A DestinationRule exportTo keeps from a namespace whose proxy (an ingress gateway, another
    waypoint) still applies it to the traffic it sends the host: Ambit chooses a host's rules once,
    for the namespace of the waypoint serving it (controller.translate.destinationrules), where Istio
    chooses per proxy. Said, since exportTo is then not honoured there."""
    drs = {object_ref(o): o for o in good if o.get("kind") == "DestinationRule" and restricted(o)}
    if not drs:
        return []
    in_force = {wr.hostname: [drs[s] for s in wr.sources if s in drs] for wr in tr.waypoint_routes}
    out = []
    for what, ns, dests in _proxies_routing_to(tr):
        for host in sorted(dests):
            for dr in in_force.get(host, []):
                if not visible_to(dr, ns):
                    out.append(Advisory(object_ref(dr), "spec.exportTo", (
                        f"not exported to namespace {ns} (exportTo: {export_text(dr)}), yet applied by {what} to the "
                        f"traffic it routes to {host}: Ambit chooses a host's DestinationRules once, for the namespace "
                        "of the waypoint serving it (all rules when none does), where Istio would not apply it there"),
                        NOT_ENFORCED, NOT_EXPORTED))
    return out


def _unserved(host: str, service: str, waypoint: str, gw: Obj | None, ns: str,
              gateways: dict[tuple[str, str], Obj]) -> str:
    """Why a host's routes do nothing, and what would make them apply."""
    tail = f"accepted, but not enforced until a waypoint serves {host}"
    if not service:
        return (f"no Service named {host} is known to the mesh: {tail}; routes apply only to Services that use "
                "a waypoint")
    if waypoint and gw is None:
        return f'{host} uses waypoint "{waypoint}", which does not exist: {tail}: apply it with ' \
               f"`ambit waypoint apply -n {waypoint.split('/', 1)[0]} --name {waypoint.split('/', 1)[1]}`"
    if waypoint:
        return (f'waypoint "{waypoint}" serves {waypoint_for(gw or {})} traffic, not Service traffic: {tail}: '
                f"label it ambit.io/waypoint-for=service (or all)")
    local = sorted(name for (gns, name), g in gateways.items() if gns == ns and _serves_services(g))
    if local:
        return (f"no waypoint serves this host: {tail}: label the Service or namespace "
                f"ambit.io/use-waypoint={local[0]}, or run `ambit waypoint apply -n {ns} --name {local[0]} "
                "--enroll-namespace`")
    return f"no waypoint serves this host: {tail}: apply a waypoint with `ambit waypoint apply -n {ns} --enroll-namespace`"


def _unserved_hosts(good: list[Obj], tr: Any, gateways: dict[tuple[str, str], Obj]) -> list[Advisory]:
    """Routes and DestinationRules (the translation lists both as a host's `sources`) whose host no
    waypoint serves."""
    by_ref = {object_ref(o): o for o in good}
    out: list[Advisory] = []
    seen: set[tuple[str, str]] = set()
    for wr in tr.waypoint_routes:
        gw = gateways.get(tuple(wr.waypoint.split("/", 1))) if wr.waypoint else None  # type: ignore[arg-type]
        if _serves_services(gw):
            continue
        for src in wr.sources:
            if (src, wr.hostname) in seen:
                continue
            seen.add((src, wr.hostname))
            ns = wr.namespace or ns_of(by_ref.get(src) or {})
            out.append(Advisory(src, "", _unserved(wr.hostname, wr.service, wr.waypoint, gw, ns, gateways),
                                NOT_ENFORCED, "NoWaypoint"))
    return out
