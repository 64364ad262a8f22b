"""`ambit analyze`: find configuration that is valid but wrong, as `istioctl analyze` does.

Pure: `analyze(objects, ...)` takes a snapshot of Kubernetes-shaped objects (the lab's store, files,
or both) and optional traffic facts, and returns `Finding`s, each with a code, a severity, the object
(`Kind/namespace/name`), the field and a message. It reuses what the controller already knows rather
than restating it:

- `controller.validation` (every object is validated first: AMB0001),
- `controller.translate` (hosts, Services, endpoints, the DestinationRules in force for each host,
  merged, and the waypoint each Service uses, resolved exactly as the data plane will get them),
- `controller.waypoints.advisories` (what is accepted but not enforced: fail-closed L7 policy,
  policies whose target is missing, routes no waypoint serves, fields not applied yet, what a
  younger DestinationRule loses when merged with an older one: AMB0107).

**What is known.** Analysing files alone (`-f` with no lab) must not call a reference broken just
because its target lives elsewhere. A reference to a kind is therefore checked only when the state
is complete (the lab's store, or `--assume-complete`) or the files contain objects of that kind:
a VirtualService alone is not reported for a missing Service; with Services in the files, a route
to a host that is not one of them is.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from ambit.gatewayclasses import INGRESS_CLASSES
from controller.ingress_mode import INBOUND_BYPASSED
from controller.translate import translate
from controller.translate.backendtls import NOT_APPLIED as BTLS_NOT_APPLIED
from controller.translate.backendtls import OVERRIDDEN as BTLS_OVERRIDDEN
from controller.translate.credentials import INVALID_CREDENTIAL
from controller.translate.index import age_key, labels_of, name_of, ns_of, selector_matches, waypoint_ref
from controller.translate.routes import NOT_EXPORTED, OUTSIDE_WAYPOINT_SCOPE, Hosts
from controller.validation import Validated, object_ref, split_valid
from controller.waypoints.advisories import (
    DR_MERGED,
    ISTIO_WARNING,
    NOT_ENFORCED,
    SELECTS_WAYPOINT,
    WAYPOINT_ACCEPTED,
    ZTUNNEL_ACCEPTED,
    advisories,
)
from controller.waypoints.claim_routes import CLAIMS_NOT_VERIFIED
from controller.waypoints.class_check import problems as class_problems
from controller.waypoints.class_defaults import DEFAULTS_FOR_CLASS_LABEL
from controller.waypoints.gateway_hosts import HOST_NOT_IN_GATEWAY
from controller.waypoints.gateways import WAYPOINT_CLASSES
from controller.waypoints.never_match import NEVER_MATCHES
from controller.waypoints.params import MISSING, Parameters, check, parameters_ref
from controller.waypoints.port_refs import PORT_NOT_FOUND
from controller.waypoints.unenrolled import NOT_ENROLLED
from controller.waypoints.unknown_keys import UNKNOWN_KEY
from controller.waypoints.unreachable import UNREACHABLE

Obj = dict[str, Any]

ERROR, WARNING, INFO = "Error", "Warning", "Info"
SEVERITIES = (ERROR, WARNING, INFO)                  # most severe first


@dataclass(frozen=True)
class Code:
    code: str
    severity: str
    name: str
    what: str


CODES: dict[str, Code] = {c.code: c for c in (
    Code("AMB0001", ERROR, "InvalidConfiguration", "the object is refused by validation (apply would refuse it)"),
    Code("AMB0002", ERROR, "TranslationError", "the object validates but cannot be translated as it is"),
    Code("AMB0101", ERROR, "ReferencedHostNotFound", "a route sends traffic to a host that is no Service"),
    Code("AMB0102", ERROR, "ReferencedSubsetNotFound",
         "a route names a subset the DestinationRules in force for its host do not define"),
    Code("AMB0103", WARNING, "SubsetSelectsNoPods", "a DestinationRule subset's labels match none of the host's pods"),
    Code("AMB0104", WARNING, "PolicySelectsNothing",
         "a policy's selector matches no pod, or its targetRefs name nothing that exists"),
    Code("AMB0105", WARNING, "L7PolicyWithoutWaypoint",
         "a policy needs HTTP attributes where no waypoint enforces them: it fails closed"),
    Code("AMB0106", WARNING, "ConflictingRoutes", "several route objects configure one host"),
    Code("AMB0107", WARNING, "ConflictingDestinationRules",
         "several DestinationRules name one host and are merged: a younger one's subset or trafficPolicy is dropped"),
    Code("AMB0108", ERROR, "WaypointNotFound", "a use-waypoint label names a Gateway that is not a waypoint"),
    Code("AMB0109", ERROR, "WeightNotHonoured",
         "a weighted destination cannot take its share: those requests fail"),
    Code("AMB0110", WARNING, "StrictWithPlaintextClients",
         "mTLS is STRICT where ztunnel has seen plaintext clients, which STRICT refuses"),
    Code("AMB0111", WARNING, "RouteNotServed", "routes or a DestinationRule for a host no waypoint serves"),
    Code("AMB0112", INFO, "NotEnforced", "a field is accepted but not enforced (yet)"),
    # Gateway API references (controller.translate.parents)
    Code("AMB0120", WARNING, "ParentNotFound",
         "a route's parentRef or a VirtualService's gateways name a Gateway that does not exist: it attaches nowhere there"),
    Code("AMB0121", WARNING, "RouteNotAccepted",
         "a route's parent does not accept it (the listener's allowedRoutes, or a sectionName/port it does not have)"),
    Code("AMB0122", ERROR, "RefNotPermitted",
         "a route's backend is in another namespace and no ReferenceGrant there permits it: its requests get 500"),
    # VirtualService delegation (controller.translate.delegates)
    Code("AMB0123", WARNING, "DelegateNotApplied",
         "a VirtualService route's delegate, or a delegate's route, is left out; or a delegate no root uses"),
    # exportTo (controller.translate.visibility)
    Code("AMB0124", WARNING, "NotExported",
         "a VirtualService or DestinationRule is not exported to the namespace of a proxy that would apply it "
         "(the waypoint serving its host, an ingress gateway): not applied there; or a DestinationRule applied "
         "by a proxy of a namespace it is not exported to"),
    # BackendTLSPolicy (controller.translate.backendtls)
    Code("AMB0125", WARNING, "BackendTLSPolicyNotApplied",
         "a BackendTLSPolicy is not applied to a target: a kind Ambit does not originate TLS to, a target or port "
         "that does not exist, an older policy on the same target, or a DestinationRule's tls that takes precedence"),
    Code("AMB0126", WARNING, "OutsideWaypointScope",
         "a VirtualService for a Service of another namespace, served by a waypoint of a third namespace: "
         "not applied (a waypoint takes routes only from the Service's namespace and its own, as in Istio)"),
    Code("AMB0127", ERROR, "InvalidParameters",
         "a waypoint or ingress Gateway's infrastructure.parametersRef is invalid: the controller applies none "
         "of its overlays and reports the Gateway Accepted=False (InvalidParameters)"),
    Code("AMB0128", ERROR, "InvalidClassDefaults",
         "a Gateway class's defaults ConfigMap (gateway.istio.io/defaults-for-class) is invalid: the controller "
         "applies no parameters to any Gateway of the class and reports each Accepted=False (InvalidParameters)"),
    Code("AMB0129", WARNING, "ClassDefaultsIgnored",
         "a ConfigMap labelled gateway.istio.io/defaults-for-class applies to no Gateway: not in the root "
         "namespace, for a class Ambit does not deploy, or another, older one holds that class's defaults"),
    Code("AMB0130", ERROR, "InvalidCredential",
         "a DestinationRule's tls.credentialName cannot be used by a waypoint that originates TLS with it: the "
         "Secret is missing from the waypoint's namespace, lacks what the mode needs, or does not parse; those "
         "connections fail (503 UF)"),
    Code("AMB0131", WARNING, "IngressModeBypassesPolicy",
         "a STRICT PeerAuthentication or an AuthorizationPolicy ztunnel enforces selects a pod in ingress mode "
         "(ambient.istio.io/bypass-inbound-capture): it does not apply to that pod's plaintext inbound"),
    Code("AMB0132", WARNING, "ClaimsNotVerified",
         "a VirtualService matches a JWT claim (@request.auth.claims), or an AuthorizationPolicy a waypoint enforces "
         "reads the JWT (requestPrincipals, request.auth.*), where the waypoint verifies no token (no "
         "RequestAuthentication applies): it never matches (a DENY denies nothing; withoutHeaders: always holds)"),
    Code("AMB0133", WARNING, "NeverMatches",
         "an AuthorizationPolicy or VirtualService matches a method in lower case or a path without its leading "
         "\"/\": no request a client sends matches it (a DENY denies nothing, an ALLOW admits nothing)"),
    Code("AMB0134", WARNING, "UnreachableRule",
         "a VirtualService http rule after a rule without match, or a match (a rule) that an earlier rule's "
         "identical match always takes first: it is never used (Istio's VirtualServiceUnreachableRule)"),
    Code("AMB0135", WARNING, "HostNotInGateway",
         "a VirtualService bound to an Istio Gateway (spec.gateways) names no host that one of that Gateway's servers "
         "names: its routes are served nowhere at that Gateway (Istio's VirtualServiceHostNotFoundInGateway)"),
    Code("AMB0136", WARNING, "PortNotFound",
         "a port that matches nothing: a VirtualService match or route destination port, a DestinationRule "
         "portLevelSettings port or a targetRefs AuthorizationPolicy port that is not a port of the Service (a "
         "targetPort written for the Service port a waypoint compares), or a selector AuthorizationPolicy port or "
         "PeerAuthentication portLevelMtls key that is a Service port, not the pods' (ztunnel compares the pod's)"),
    Code("AMB0137", WARNING, "PodsNotInMesh",
         "a PeerAuthentication or an AuthorizationPolicy ztunnel enforces selects only pods that are not enrolled in "
         "the mesh: ztunnel never sees their traffic, so it is enforced nowhere (Istio: IST0102 NamespaceNotInjected)"),
    Code("AMB0138", WARNING, "UnknownAmbitKey",
         "an ambit.io/ label or annotation of a Namespace, Pod or Service that Ambit does not read there (a typo, "
         "an annotation where Ambit reads a label, or a key of another kind): it is ignored"),
    Code("AMB0139", ERROR, "InvalidKind",
         "a route's backend is of a group or kind other than Service (Gateway API's ResolvedRefs=False InvalidKind): "
         "its share of requests is answered 500"),
)}
# advisory cause -> (code, the kind that must be known to say it: what is elsewhere may exist)
_PARENT_CODES = {"ParentNotFound": ("AMB0120", "Gateway"), "NotAllowedByListeners": ("AMB0121", ""),
                 "NoMatchingParent": ("AMB0121", ""), "RefNotPermitted": ("AMB0122", "ReferenceGrant"),
                 "InvalidKind": ("AMB0139", "")}

_DELEGATE_CAUSES = ("DelegateNotFound", "DelegateNotUsed", "DelegateNotApplied")


@dataclass(frozen=True)
class Finding:
    code: str
    ref: str            # Kind/namespace/name (Kind/name for cluster-scoped kinds)
    path: str           # the field, e.g. spec.http[0].route[1].destination.subset ("" for the object)
    message: str

    @property
    def severity(self) -> str:
        return CODES[self.code].severity

    @property
    def name(self) -> str:
        return CODES[self.code].name

    @property
    def namespace(self) -> str:
        parts = self.ref.split("/")
        return parts[1] if len(parts) == 3 else parts[-1] if parts[0] == "Namespace" else ""

    def __str__(self) -> str:
        where = f"{self.ref} {self.path}".rstrip()
        return f"{self.severity} [{self.code}] ({where}) {self.message}"

    def as_dict(self) -> dict[str, str]:
        return {**asdict(self), "severity": self.severity, "name": self.name}


@dataclass(frozen=True)
class PlaintextTraffic:
    """A traffic fact from ztunnel's metrics: plaintext (non-mesh) connections into a namespace."""

    namespace: str
    workload: str
    source: str          # source workload as ztunnel reported it ("unknown" for non-mesh clients)
    connections: int


@dataclass
class _State:
    objects: list[Obj]
    complete: bool
    known: set[str] = field(default_factory=set)

    def knows(self, kind: str) -> bool:
        return self.complete or kind in self.known


def analyze(objects: Iterable[Obj], *, complete: bool, traffic: list[PlaintextTraffic] | None = None,
            cluster_domain: str = "cluster.local", root_namespace: str = "ambit-system",
            mesh: Callable[[Any], None] | None = None) -> list[Finding]:
    """Every finding for a snapshot. `complete`: the snapshot is the whole world (the lab's store).
    `mesh`: puts the mesh config's providers into the translation (the lab's file); without it
    the external authorizers are unknown here, so a CUSTOM policy's provider is not judged."""
    objs = [o for o in objects if isinstance(o, dict)]
    out: list[Finding] = []
    good, errors = split_valid(objs)
    good = Validated(good)      # known good now: the translation and the advisories do not validate it again
    out += [Finding("AMB0001", e.ref, e.path, e.reason) for e in errors]
    st = _State(good, complete, {o.get("kind", "") for o in good})
    tr = translate(good, cluster_domain=cluster_domain, root_namespace=root_namespace)
    if mesh is not None:
        mesh(tr)
    out += [Finding("AMB0002", e.ref, e.path, e.reason) for e in tr.errors]
    hosts = Hosts(tr.services, cluster_domain)
    found = _advisories(good, st, tr, cluster_domain, root_namespace)
    if mesh is None:    # the controller's mesh config is not known here: "no such authorizer" may be false
        found = [f for f in found if not (f.ref.startswith("AuthorizationPolicy/") and f.path == "spec.provider.name")]
    out += found
    out += _routes(good, st, tr, hosts)
    out += _subsets_without_pods(good, st, tr, hosts)
    out += _policies_without_pods(good, st, root_namespace)
    out += _conflicts(good, hosts)
    out += _waypoint_labels(good, st)
    out += _gateway_parameters(good, st, root_namespace)
    out += _class_defaults(good, root_namespace)
    out += _strict_with_plaintext(good, traffic or [], root_namespace)
    unattached = {f.ref for f in out if f.code == "AMB0101" and f.path.startswith("spec.parentRefs")}
    out = [f for f in out if not (f.code == "AMB0111" and f.ref in unattached)]   # said once, as AMB0101
    return _dedupe(out)


def _dedupe(found: list[Finding]) -> list[Finding]:
    seen: set[Finding] = set()
    out = []
    for f in found:
        if f not in seen:
            seen.add(f)
            out.append(f)
    return sorted(out, key=lambda f: (SEVERITIES.index(f.severity), f.ref, f.path, f.code))


# -- advisories (controller.waypoints.advisories) ------------------------------------------------------

# advisory cause -> (code, the kinds one of which must be known to say it offline: the files may not
# hold what the judgement depends on, which may well exist elsewhere)
_CAUSE_CODES: dict[str, tuple[str, tuple[str, ...]]] = {
    NOT_EXPORTED: ("AMB0124", ()),
    OUTSIDE_WAYPOINT_SCOPE: ("AMB0126", ()),
    INVALID_CREDENTIAL: ("AMB0130", ("Secret",)),
    INBOUND_BYPASSED: ("AMB0131", ()),
    CLAIMS_NOT_VERIFIED: ("AMB0132", ("RequestAuthentication",)),
    NEVER_MATCHES: ("AMB0133", ()),
    UNREACHABLE: ("AMB0134", ()),
    HOST_NOT_IN_GATEWAY: ("AMB0135", ()),
    PORT_NOT_FOUND: ("AMB0136", ("Service", "ServiceEntry")),
    NOT_ENROLLED: ("AMB0137", ("Pod",)),
    UNKNOWN_KEY: ("AMB0138", ()),
}

def _advisories(good: list[Obj], st: _State, tr: Any, cluster_domain: str, root_namespace: str) -> list[Finding]:
    out = []
    by_ref = {object_ref(o): o for o in good}
    for a in advisories(good, cluster_domain=cluster_domain, translation=tr, root_namespace=root_namespace):
        if a.condition == ZTUNNEL_ACCEPTED:
            code = "AMB0105"
        elif a.condition == WAYPOINT_ACCEPTED:
            code = "AMB0104" if a.cause == "TargetNotFound" else "AMB0105"
            target = _target_kind(by_ref.get(a.ref), a.path)
            if a.cause == "TargetNotFound" and target in ("Service", "Gateway") and not st.knows(target):
                continue            # the target may well exist outside the files
            if "which does not exist" in a.reason and not st.knows("Gateway"):
                continue            # the Service's waypoint Gateway may exist outside the files
        elif a.cause == DR_MERGED:
            code = "AMB0107"
        elif a.cause == SELECTS_WAYPOINT:
            code = "AMB0104"        # it selects pods, but none that any proxy enforces it on
        elif a.cause == "NoWaypoint":
            if not st.knows("Service"):
                continue            # "no Service named ... is known": nothing is known offline
            code = "AMB0111"
        elif a.cause in (BTLS_NOT_APPLIED, BTLS_OVERRIDDEN):
            if "does not exist" in a.reason and not st.knows("ServiceEntry"):
                continue            # the ServiceEntry may well exist outside the files
            code = "AMB0125"
        elif a.cause in _CAUSE_CODES:
            code, needed = _CAUSE_CODES[a.cause]
            if needed and not any(st.knows(k) for k in needed):
                continue            # what it depends on may well exist outside the files
        elif a.cause in _DELEGATE_CAUSES:
            if a.cause != "DelegateNotApplied" and not st.complete:
                continue            # the delegate (the root that uses it) may well be in other files
            code = "AMB0123"
        elif a.cause in _PARENT_CODES:
            code, needed = _PARENT_CODES[a.cause]
            if needed and not st.knows(needed):
                continue            # the Gateway (the ReferenceGrant) may well exist outside the files
        else:
            assert a.condition in (NOT_ENFORCED, ISTIO_WARNING)
            code = "AMB0112"
        out.append(Finding(code, a.ref, a.path, a.reason))
    return out


def _target_kind(obj: Obj | None, path: str) -> str:
    """The kind a targetRef(s) entry names, from the advisory's path (spec.targetRefs[2])."""
    spec = (obj or {}).get("spec") or {}
    if path == "spec.targetRef":
        return str((spec.get("targetRef") or {}).get("kind", ""))
    m = re.fullmatch(r"spec\.targetRefs\[(\d+)\]", path)
    refs = spec.get("targetRefs") or []
    if m and int(m.group(1)) < len(refs):
        return str(refs[int(m.group(1))].get("kind", ""))
    return ""


# -- route destinations: hosts, subsets, weights ---------------------------------------------------------

@dataclass
class _Dest:
    ref: str
    path: str                 # of the destination (host field appended by the caller)
    host_field: str
    host: str                 # FQDN
    subset: str
    weight: int
    total: int                # the route's total weight
    siblings: int             # destinations in the route
    kind: str                 # VirtualService | HTTPRoute | GRPCRoute


def _destinations(good: list[Obj], hosts: Hosts) -> list[_Dest]:
    out = []
    for o in good:
        kind, spec, ns, ref = o.get("kind"), o.get("spec") or {}, ns_of(o), object_ref(o)
        if kind == "VirtualService":
            if spec.get("gateways") and "mesh" not in spec["gateways"]:
                continue                    # ingress only: not the mesh's (the translation skips it too)
            for section in ("http", "tcp", "tls"):
                for i, r in enumerate(spec.get(section) or []):
                    route = r.get("route") or []
                    weights = [int(d.get("weight") if d.get("weight") is not None else (100 if len(route) == 1 else 0))
                               for d in route]
                    for j, d in enumerate(route):
                        dest = d.get("destination") or {}
                        out.append(_Dest(ref, f"spec.{section}[{i}].route[{j}]", "destination.host",
                                         hosts.fqdn(dest.get("host", ""), ns), dest.get("subset", ""), weights[j],
                                         sum(weights), len(route), kind))
        elif kind in ("HTTPRoute", "GRPCRoute"):
            for i, rule in enumerate(spec.get("rules") or []):
                backends = rule.get("backendRefs") or []
                weights = [int(b.get("weight", 1)) for b in backends]
                for j, b in enumerate(backends):
                    bns = b.get("namespace") or ns
                    out.append(_Dest(ref, f"spec.rules[{i}].backendRefs[{j}]", "name",
                                     f"{b.get('name', '')}.{bns}.svc.{hosts.cd}", "", weights[j], sum(weights),
                                     len(backends), kind))
    return out


def _pods_of(tr: Any, service: Any, subset_labels: dict[str, str] | None = None) -> list[Any]:
    uids = {e.workload_uid for e in service.endpoints if e.workload_uid}
    ips = {e.ip for e in service.endpoints}
    return [w for w in tr.workloads if (w.uid in uids or ips.intersection(w.ips))
            and (subset_labels is None or selector_matches(subset_labels, w.labels))]


def _subsets_in_force(tr: Any) -> dict[str, tuple[dict[str, dict[str, str]], str]]:
    """host -> ({subset: labels}, the DestinationRules in force, merged) from the translation."""
    out = {}
    for wr in tr.waypoint_routes:
        drs = [s for s in wr.sources if s.startswith("DestinationRule/")]
        if drs:
            out[wr.hostname] = ({s.name: s.labels for s in wr.subsets}, ", ".join(drs))
    return out


def _routes(good: list[Obj], st: _State, tr: Any, hosts: Hosts) -> list[Finding]:
    out = []
    subsets = _subsets_in_force(tr)
    for o in good:
        if o.get("kind") not in ("HTTPRoute", "GRPCRoute") or not st.knows("Service"):
            continue
        for i, p in enumerate((o.get("spec") or {}).get("parentRefs") or []):
            if p.get("kind") == "Service" and p.get("group", "") in ("", "core"):
                fq = f"{p.get('name', '')}.{p.get('namespace') or ns_of(o)}.svc.{hosts.cd}"
                if fq not in hosts.by_host:
                    out.append(Finding("AMB0101", object_ref(o), f"spec.parentRefs[{i}].name",
                                       f'no Service "{fq}" exists: this route attaches to nothing'))
    for o in good:                      # Gateway API: backends that all weigh 0 answer 500
        if o.get("kind") not in ("HTTPRoute", "GRPCRoute"):
            continue
        for i, rule in enumerate((o.get("spec") or {}).get("rules") or []):
            backends = rule.get("backendRefs") or []
            if backends and all(int(b.get("weight", 1)) == 0 for b in backends):
                out.append(Finding("AMB0109", object_ref(o), f"spec.rules[{i}].backendRefs",
                                   "every backend has weight 0: each request this rule matches is answered 500"))
    for d in _destinations(good, hosts):
        svc = hosts.by_host.get(d.host)
        share = (f"{100 * d.weight / d.total:.0f}% (weight {d.weight} of {d.total})"
                 if d.siblings > 1 and d.total and d.weight else "")
        if svc is None and st.knows("Service"):
            if "*" not in d.host:
                out.append(Finding("AMB0101", d.ref, f"{d.path}.{d.host_field}",
                                   f'no Service "{d.host}" exists: requests routed here fail'
                                   + (f" ({share} of this route's requests)" if share else "")))
            continue
        if d.subset:
            defined, dr = subsets.get(d.host, ({}, ""))
            if d.subset not in defined:
                if dr or st.knows("DestinationRule"):
                    why = (f"the DestinationRules in force for {d.host} ({dr}) do not define it" if dr
                           else f"no DestinationRule defines subsets for {d.host}")
                    out.append(Finding("AMB0102", d.ref, f"{d.path}.destination.subset",
                                       f'subset "{d.subset}" not found: {why}: requests routed here fail'))
                continue
            if svc is not None and share and st.knows("Pod") and not _pods_of(tr, svc, defined[d.subset]):
                out.append(Finding("AMB0109", d.ref, f"{d.path}.weight",
                                   f'{share} goes to {d.host} subset "{d.subset}", which selects no pods: '
                                   "those requests fail (no healthy upstream)"))
            continue
        if svc is not None and share and st.knows("Pod") and not svc.endpoints:
            out.append(Finding("AMB0109", d.ref, f"{d.path}.weight",
                               f"{share} goes to {d.host}, which has no endpoints: those requests fail"))
    return out


def _subsets_without_pods(good: list[Obj], st: _State, tr: Any, hosts: Hosts) -> list[Finding]:
    if not st.knows("Pod"):
        return []
    out = []
    for o in good:
        if o.get("kind") != "DestinationRule":
            continue
        spec = o.get("spec") or {}
        for fq in hosts.expand(spec.get("host", ""), ns_of(o)):
            svc = hosts.by_host.get(fq)
            if svc is None:
                continue
            for i, s in enumerate(spec.get("subsets") or []):
                labels = s.get("labels") or {}
                if not _pods_of(tr, svc, labels):
                    sel = ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "(no labels)"
                    out.append(Finding("AMB0103", object_ref(o), f"spec.subsets[{i}].labels",
                                       f'subset "{s.get("name")}" ({sel}) selects none of the '
                                       f"{len(_pods_of(tr, svc))} pod(s) of {fq}"))
    return out


# -- policies that select nothing ----------------------------------------------------------------------

_SELECTED = {"AuthorizationPolicy": "selector", "PeerAuthentication": "selector", "Telemetry": "selector",
             "DestinationRule": "workloadSelector"}


def _policies_without_pods(good: list[Obj], st: _State, root_namespace: str) -> list[Finding]:
    if not st.knows("Pod"):
        return []
    pods = [o for o in good if o.get("kind") == "Pod"]
    pods_in: dict[str, list[Obj]] = {}      # by namespace, once: not 1,000 policies x 10,000 pods
    for p in pods:
        pods_in.setdefault(ns_of(p), []).append(p)
    out = _entries_without_pods(good, pods_in)
    for o in good:
        f = _SELECTED.get(o.get("kind", ""))
        sel = ((o.get("spec") or {}).get(f) or {}).get("matchLabels") if f else None
        if not sel:
            continue
        ns = ns_of(o)
        scope = pods if ns == root_namespace else pods_in.get(ns, [])
        if not any(selector_matches(sel, labels_of(p)) for p in scope):
            where = "in the mesh" if ns == root_namespace else f"in namespace {ns}"
            out.append(Finding("AMB0104", object_ref(o), f"spec.{f}.matchLabels",
                               f"selects no pod {where} ({','.join(f'{k}={v}' for k, v in sorted(sel.items()))}): "
                               "it applies to nothing"))
    return out


def _entries_without_pods(good: list[Obj], pods_in: dict[str, list[Obj]]) -> list[Finding]:
    """A ServiceEntry `workloadSelector` that selects no pod of the entry's namespace (its only
    scope, the root namespace included), or selects by no label: Istio's ambient reads that as no
    pod at all (its validation warns it "will be applied to all services in namespace")."""
    out = []
    for o in good:
        spec = o.get("spec") or {}
        if o.get("kind") != "ServiceEntry" or spec.get("workloadSelector") is None:
            continue
        sel = (spec.get("workloadSelector") or {}).get("labels") or {}
        if not sel:
            out.append(Finding("AMB0104", object_ref(o), "spec.workloadSelector",
                               "selects by no label, so it selects no pod: the entry's hosts have no endpoint"))
        elif not any(selector_matches(sel, labels_of(p)) for p in pods_in.get(ns_of(o), [])):
            out.append(Finding("AMB0104", object_ref(o), "spec.workloadSelector.labels",
                               f"selects no pod in namespace {ns_of(o)} "
                               f"({','.join(f'{k}={v}' for k, v in sorted(sel.items()))}): the entry's hosts have "
                               "no endpoint"))
    return out


# -- conflicts -------------------------------------------------------------------------------------------

def _conflicts(good: list[Obj], hosts: Hosts) -> list[Finding]:
    out = []
    routes: dict[str, list[Obj]] = {}
    for o in good:
        kind, spec, ns = o.get("kind"), o.get("spec") or {}, ns_of(o)
        if kind == "VirtualService" and (not spec.get("gateways") or "mesh" in spec["gateways"]):
            for h in spec.get("hosts") or []:
                if "*" not in h:
                    routes.setdefault(hosts.fqdn(h, ns), []).append(o)
    for host, vss in routes.items():
        if len(vss) > 1:
            vss = sorted(vss, key=age_key)          # the translation's order: oldest routes first
            first = vss[0]
            catch_all = any(not r.get("match") for r in (first.get("spec") or {}).get("http") or [])
            for o in vss[1:]:
                tail = (f"{object_ref(first)} has a route without match, so none of this object's HTTP routes is "
                        "ever used" if catch_all else
                        f"their routes are concatenated, {object_ref(first)}'s first, and the first match wins")
                out.append(Finding("AMB0106", object_ref(o), "spec.hosts",
                                   f"host {host} is also configured by {object_ref(first)}: {tail}"))
    return out


# -- use-waypoint labels ----------------------------------------------------------------------------------

_USE_WAYPOINT = ("ambit.io/use-waypoint", "istio.io/use-waypoint")


def _gateway_parameters(good: list[Obj], st: _State, root_namespace: str) -> list[Finding]:
    """AMB0127: what the controller's `params.check` finds wrong with a Gateway's own parametersRef,
    the same function (controller/waypoints/params.py); its class's defaults are AMB0128, said once
    (`_class_defaults`). A ConfigMap missing from a partial set of files may be in the cluster, so
    that one is said only with the whole state."""
    configmaps = {(ns_of(o), name_of(o)): o for o in good if o.get("kind") == "ConfigMap"}
    out = []
    for gw in good:
        if gw.get("kind") != "Gateway" or parameters_ref(gw) is None:
            continue
        if (gw.get("spec") or {}).get("gatewayClassName") not in WAYPOINT_CLASSES + INGRESS_CLASSES:
            continue
        params = check(gw, configmaps, root_namespace=root_namespace)
        own = Parameters(layers=[params.layers[-1]]) if params is not None else None
        if own is None or not own.errors or (own.errors == [MISSING] and not st.knows("ConfigMap")):
            continue
        out.append(Finding("AMB0127", object_ref(gw), "spec.infrastructure.parametersRef", own.message()))
    return out


def _class_defaults(good: list[Obj], root_namespace: str) -> list[Finding]:
    """AMB0128/AMB0129: class defaults ConfigMaps that are invalid or apply to nothing
    (controller/waypoints/class_check.py), judged against the class's Gateways given."""
    configmaps = {(ns_of(o), name_of(o)): o for o in good if o.get("kind") == "ConfigMap"}
    return [Finding("AMB0128" if p.invalid else "AMB0129", object_ref(p.configmap),
                    "data" if p.invalid else f"metadata.labels.{DEFAULTS_FOR_CLASS_LABEL}", p.message)
            for p in class_problems(configmaps, [o for o in good if o.get("kind") == "Gateway"], root_namespace)]


def _waypoint_labels(good: list[Obj], st: _State) -> list[Finding]:
    if not st.knows("Gateway"):
        return []
    gateways = {(ns_of(g), name_of(g)): g for g in good if g.get("kind") == "Gateway"}
    out = []
    for o in good:
        if o.get("kind") not in ("Namespace", "Service", "Pod"):
            continue
        labels = labels_of(o)
        key = next((k for k in _USE_WAYPOINT if k in labels), None)
        ns = name_of(o) if o.get("kind") == "Namespace" else ns_of(o)
        ref = waypoint_ref(labels, ns)
        if key is None or not ref:
            continue
        gw = gateways.get(tuple(ref.split("/", 1)))  # type: ignore[arg-type]
        if gw is None:
            why = f'no Gateway "{ref}" exists'
        elif (gw.get("spec") or {}).get("gatewayClassName") not in WAYPOINT_CLASSES:
            why = (f'Gateway "{ref}" is of class {(gw.get("spec") or {}).get("gatewayClassName")!r}, not a waypoint '
                   f"class ({', '.join(WAYPOINT_CLASSES)})")
        else:
            continue
        out.append(Finding("AMB0108", object_ref(o), f"metadata.labels[{key}]",
                           f"{why}: ztunnel refuses the traffic that should go through it (it fails closed rather "
                           f"than bypass the L7 policy); create it with `ambit waypoint apply -n {ref.split('/')[0]} "
                           f"--name {ref.split('/')[1]}` or fix the label"))
    return out


# -- STRICT where plaintext clients were seen ------------------------------------------------------------

def _strict_with_plaintext(good: list[Obj], traffic: list[PlaintextTraffic], root_namespace: str) -> list[Finding]:
    if not traffic:
        return []
    pas = [o for o in good if o.get("kind") == "PeerAuthentication"]
    pods = {(ns_of(p), name_of(p)): p for p in good if p.get("kind") == "Pod"}
    out = []
    for pa in pas:
        spec, ns = pa.get("spec") or {}, ns_of(pa)
        if ((spec.get("mtls") or {}).get("mode")) != "STRICT":
            continue
        sel = (spec.get("selector") or {}).get("matchLabels") or {}
        seen = []
        for t in traffic:
            if ns != root_namespace and t.namespace != ns:
                continue
            pod = pods.get((t.namespace, t.workload))
            if sel and (pod is None or not selector_matches(sel, labels_of(pod))):
                continue
            if _overridden(pas, pa, t, pods, root_namespace):
                continue
            seen.append(t)
        if seen:
            n = sum(t.connections for t in seen)
            eg = ", ".join(sorted({f"{'an unidentified client' if t.source == 'unknown/unknown' else t.source} -> "
                                   f"{t.namespace}/{t.workload}" for t in seen})[:3])
            out.append(Finding("AMB0110", object_ref(pa), "spec.mtls.mode",
                               f"STRICT, but ztunnel has seen {n} plaintext connection(s) from non-mesh clients to "
                               f"the workloads it covers (e.g. {eg}): STRICT refuses them; enrol those clients "
                               "(ambit.io/dataplane-mode=ambient) or use PERMISSIVE"))
    return out


def _overridden(pas: list[Obj], pa: Obj, t: PlaintextTraffic, pods: dict[tuple[str, str], Obj],
                root_namespace: str) -> bool:
    """Is `pa` overridden for this traffic by a more specific PeerAuthentication (namespace over mesh,
    workload over namespace) that is not STRICT?"""
    rank = _rank(pa, root_namespace)
    pod = pods.get((t.namespace, t.workload))
    for other in pas:
        if other is pa or _rank(other, root_namespace) <= rank:
            continue
        ons = ns_of(other)
        if ons != t.namespace:
            continue
        sel = ((other.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
        if sel and (pod is None or not selector_matches(sel, labels_of(pod))):
            continue
        if ((other.get("spec") or {}).get("mtls") or {}).get("mode") not in (None, "UNSET", "STRICT"):
            return True
    return False


def _rank(pa: Obj, root_namespace: str) -> int:
    if ((pa.get("spec") or {}).get("selector") or {}).get("matchLabels"):
        return 2
    return 0 if ns_of(pa) == root_namespace else 1


def plaintext_from_metrics(text: str) -> list[PlaintextTraffic]:
    """Traffic facts from ztunnel's Prometheus text: connections the destination side received in
    plaintext (`connection_security_policy="none"`, `reporter="destination"`)."""
    from prometheus_client.parser import text_string_to_metric_families
    out = []
    for fam in text_string_to_metric_families(text):
        if fam.name not in ("istio_tcp_connections_opened", "istio_tcp_connections_opened_total"):
            continue
        for s in fam.samples:
            lb = s.labels
            if (s.name.endswith("_total") and lb.get("reporter") == "destination"
                    and lb.get("connection_security_policy") == "none" and s.value > 0):
                out.append(PlaintextTraffic(lb.get("destination_workload_namespace", ""),
                                            lb.get("destination_workload", ""),
                                            f"{lb.get('source_workload_namespace', 'unknown')}/"
                                            f"{lb.get('source_workload', 'unknown')}", int(s.value)))
    return out


def at_or_above(found: list[Finding], threshold: str) -> list[Finding]:
    limit = SEVERITIES.index(threshold)
    return [f for f in found if SEVERITIES.index(f.severity) <= limit]
