"""Gateway API BackendTLSPolicy: TLS origination to a ServiceEntry's endpoints, the Gateway API way.

Istio (pilot/pkg/config/kube/gateway/backend_policies.go) turns each policy into a DestinationRule
of its own for the target's hosts, `trafficPolicy.tls` mode SIMPLE (per port for a sectionName),
which every proxy routing there applies. Ambit does the same on the translated model: the policy
sets the TLS fields of the host's `WaypointRoutes` policies, so the waypoint serving the host (and
an ingress gateway or another waypoint that routes there, as for a DestinationRule) speaks TLS to
the endpoints while the app speaks HTTP (waypoint/origination.py):

- SNI: `validation.hostname`; the certificate must name it, or, when `subjectAltNames` is set,
  one of those (DNS names or URIs) instead.
- Trust: the PEM of each `caCertificateRefs` ConfigMap's `ca.crt` (same namespace; read by the
  controller and sent inline, `TrafficPolicy.ca_certificate_pem`), or the system's roots for
  `wellKnownCACertificates: System`. References none of which resolve, or another well-known set,
  send a bundle with no certificate: every connection fails (503), never plaintext.
- Targets: a ServiceEntry (group networking.istio.io or networking.ambit.io), all its hosts; with
  `sectionName`, its port of that name only. A Service is refused for the target (its pods are
  reached over HBONE, inside which the waypoint speaks no second TLS); other kinds are not found.
- Two policies on one target (and sectionName): the older wins (creation time, then
  namespace/name), the other is `Accepted=False Conflicted` for it (Gateway API). A policy with a
  sectionName holds its port against one on the whole entry, whatever their ages, as in Istio
  (a port-level tls against the top-level one of the DestinationRule the policies become).
- A DestinationRule whose `trafficPolicy.tls` is in force for the host (or port) wins, as in
  Istio, where the rule a user wrote overrides what a backend policy would fill in
  (pilot/pkg/model/destination_rule.go `mergeBackendPolicyTrafficPolicy`); `ambit apply` says so.

The verdict on each targetRef is returned for the policy's `status.ancestors` (one entry per
targetRef, the target itself as the ancestor, as Istio's mesh controller writes it).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ambit.model import PortPolicy, Service, TrafficPolicy, WaypointRoutes
from controller.translate.blame import blame
from controller.translate.index import Index, name_of, ns_of
from controller.translate.ingress import ca_bundle
from controller.translate.parents import Notice
from controller.translate.routes import Hosts
from controller.validation import object_ref

Obj = dict[str, Any]
Verdict = tuple[bool, str, str]     # (status, reason, message)

ENTRY_GROUPS = ("networking.istio.io", "networking.ambit.io")
NOT_APPLIED = "BackendTLSNotApplied"      # a notice's cause: a target the policy does not apply to
OVERRIDDEN = "BackendTLSOverridden"       # a DestinationRule's tls wins over it for a host
_OK: Verdict = (True, "ResolvedRefs", "resolved")
HTTP_PROTOCOLS = ("HTTP", "HTTP2", "GRPC")     # the Service port protocols the waypoint parses as HTTP


@dataclass
class Ancestor:
    """One targetRef's verdict, for `status.ancestors`."""

    ref: Obj                # the ancestorRef: the target {group, kind, name, sectionName?}
    accepted: Verdict
    resolved: Verdict


@dataclass
class BackendTLS:
    """The verdicts of every BackendTLSPolicy: policy ref -> one Ancestor per targetRef."""

    ancestors: dict[str, list[Ancestor]] = field(default_factory=dict)


@dataclass(frozen=True)
class _Tls:
    hostname: str
    sans: tuple[str, ...]
    pem: str                # "" for the system roots; without a certificate: fail every connection


def _trust(policy: Obj, configmaps: dict[str, Obj]) -> tuple[str, Verdict, Verdict | None]:
    """The policy's CA bundle, its ResolvedRefs verdict, and an Accepted=False verdict when no
    CA can be used (then the bundle is the reason, holding no certificate: connections fail)."""
    validation = (policy.get("spec") or {}).get("validation") or {}
    known = validation.get("wellKnownCACertificates") or ""
    if known == "System":
        return "", _OK, None
    if known:
        why = (f"wellKnownCACertificates {known} is not a set Ambit knows (System is): connections to the target "
               "fail rather than trust another set")
        return f"no CA: {why}", _OK, (False, "Invalid", why)
    ns, pems, bad = ns_of(policy), [], []
    for ref in validation.get("caCertificateRefs") or []:
        kind, name = ref.get("kind", ""), f"{ns}/{ref.get('name', '')}"
        if ref.get("group", "") not in ("", "core") or kind != "ConfigMap":
            bad.append(("InvalidKind", f"{kind} {name} (group {ref.get('group') or 'core'}): Ambit reads CA "
                                       "certificates from ConfigMaps (key ca.crt) only"))
            continue
        cm = configmaps.get(name)
        data = (cm or {}).get("data") or {}
        if cm is None:
            bad.append(("InvalidCACertificateRef", f"ConfigMap {name} does not exist"))
        elif not str(data.get("ca.crt", "")).strip():
            bad.append(("InvalidCACertificateRef", f"ConfigMap {name} has no key ca.crt"))
        else:
            pem, why = ca_bundle(str(data["ca.crt"]), f"ConfigMap {name}")
            if pem is None:
                bad.append(("InvalidCACertificateRef", why))
            else:
                pems.append(pem.strip() + "\n")
    if not bad:
        return "".join(pems), _OK, None
    resolved = (False, bad[0][0], "; ".join(m for _, m in bad))
    if pems:        # verified against the references that resolved (as an ingress listener's client CAs)
        return "".join(pems), resolved, None
    why = f"no valid CA certificate: {resolved[2]}; connections to the target fail (503) until one resolves"
    return f"no CA: {resolved[2]}", resolved, (False, "NoValidCACertificate", why)


def _target(policy: Obj, ref: Obj, entries: dict[tuple[str, str], Obj],
            left_out: set[tuple[str, str]]) -> tuple[Obj | None, int, Verdict | None]:
    """The ServiceEntry a targetRef names and the port of its sectionName (0: all), or why not."""
    kind, group, name, ns = ref.get("kind", ""), ref.get("group", ""), ref.get("name", ""), ns_of(policy)
    section = ref.get("sectionName") or ""
    if kind == "ServiceEntry" and group in ENTRY_GROUPS:
        se = entries.get((ns, name))
        if se is None:
            return None, 0, (False, "TargetNotFound", f"ServiceEntry {ns}/{name} does not exist")
        if (ns, name) in left_out:
            return None, 0, (False, "TargetNotFound", (
                f"ServiceEntry {ns}/{name} is not applied (a host or address of it is another Service's: see its "
                "errors)"))
        if not section:
            return se, 0, None
        port = next((p for p in (se.get("spec") or {}).get("ports") or [] if p.get("name") == section), None)
        if port is None:
            return None, 0, (False, "TargetNotFound", f'ServiceEntry {ns}/{name} has no port named "{section}"')
        return se, int(port["number"]), None
    if kind == "Service" and group in ("", "core"):
        return None, 0, (False, "Invalid", (
            f"Service {ns}/{name}: Ambit originates TLS to ServiceEntry endpoints only; a Service's pods are "
            "reached over HBONE mutual TLS, inside which the waypoint speaks no second TLS, so the policy is not "
            "applied to it (target a ServiceEntry for a backend outside the mesh)"))
    return None, 0, (False, "TargetNotFound", (
        f"{kind} {ns}/{name} (group {group or 'core'}): Ambit applies BackendTLSPolicy to ServiceEntry targets "
        "(group networking.istio.io) only"))


def _with_tls(base: TrafficPolicy | None, tls: _Tls) -> TrafficPolicy:
    return dataclasses.replace(base or TrafficPolicy(), tls_mode="SIMPLE", sni=tls.hostname,
                               subject_alt_names=list(tls.sans), ca_certificates="", client_certificate="",
                               private_key="", insecure_skip_verify=False, ca_crl="", ca_certificate_pem=tls.pem)


def _fill(pps: list[PortPolicy], port: int, base: TrafficPolicy | None, tls: _Tls, over_base: bool = False) -> bool:
    """Port `port`'s TLS in `pps` (a port policy over `base` when it has none); False when TLS
    is already set there (a DestinationRule's, which wins). `over_base`: a TLS `base` does not
    count (the host's own port: Istio makes the policy that port's port-level tls, which replaces
    the rule's top-level one for the port; a port-level tls of the rule's still wins)."""
    pp = next((p for p in pps if p.port == port), None)
    current = pp.policy if pp is not None else (None if over_base else base)
    if current is not None and current.tls_mode:
        return False
    if pp is None:
        pps.append(PortPolicy(port=port, policy=_with_tls(base, tls)))
    else:
        pp.policy = _with_tls(pp.policy, tls)
    return True


def _apply(wr: WaypointRoutes, port: int, tls: _Tls) -> bool:
    """Originate `tls` for `wr`'s host (`port`: that port only) wherever no DestinationRule set
    TLS already; False when a DestinationRule's TLS is in force for the host (or port) itself."""
    if port:
        applied = _fill(wr.port_policies, port, wr.policy, tls, over_base=True)
        for s in wr.subsets:        # a subset without TLS of its own takes the port's, as in Istio's merge
            _fill(s.port_policies, port, s.policy, tls)
        return applied
    applied = wr.policy is None or not wr.policy.tls_mode
    if applied:
        wr.policy = _with_tls(wr.policy, tls)
    for pp in wr.port_policies:
        if not pp.policy.tls_mode:
            pp.policy = _with_tls(pp.policy, tls)
    for s in wr.subsets:
        if s.policy is not None and not s.policy.tls_mode:
            s.policy = _with_tls(s.policy, tls)
        for pp in s.port_policies:
            if not pp.policy.tls_mode:
                pp.policy = _with_tls(pp.policy, tls)
    return applied


def _partly(svc: Service, port: int) -> list[str]:
    """What of an entry the waypoint does not originate TLS to, although the policy targets it."""
    out = []
    opaque = [p.port for p in svc.ports if (not port or p.port == port) and p.protocol not in HTTP_PROTOCOLS]
    if opaque:
        out.append(f"port {', '.join(map(str, opaque))} is not HTTP: the waypoint forwards it as TCP and originates "
                   "no TLS on it (TLS origination is for HTTP ports, as the app speaks plain HTTP to them)")
    if svc.location == "MESH_EXTERNAL" and any(ep.workload_uid for ep in svc.endpoints):
        out.append("the entry's workloadSelector selects mesh pods: they are reached over HBONE mutual TLS, with no "
                   "TLS originated inside it")
    elif svc.location == "MESH_INTERNAL":
        out.append("the entry is MESH_INTERNAL: its endpoints that are mesh pods are reached over HBONE mutual TLS, "
                   "with no TLS originated inside it; only endpoints outside the mesh get the policy's TLS")
    return out


def _key(policy: Obj, ref: Obj) -> tuple[str, str, str, str, str]:
    group = ref.get("group", "")
    group = ENTRY_GROUPS[0] if group in ENTRY_GROUPS else ("" if group == "core" else group)
    return (ns_of(policy), group, ref.get("kind", ""), ref.get("name", ""), ref.get("sectionName") or "")


def apply_backend_tls(idx: Index, hosts: Hosts, routes: list[WaypointRoutes], notices: list[Notice],
                      applied: set[tuple[str, str]] | None = None) -> tuple[list[WaypointRoutes], BackendTLS]:
    """`routes` (translate_routes', DestinationRules applied) with each policy's TLS applied to
    its targets' hosts, hosts with no routes of their own added; and every policy's verdicts.
    What is not applied (a target refused, a conflict, a DestinationRule's TLS winning) is also
    added to `notices`, for `ambit apply` and `ambit analyze`. `applied`: the ServiceEntries the
    translation applied (None: all); a policy targeting another one is not applied."""
    policies = idx.kind("BackendTLSPolicy")         # oldest first (Index): the order conflicts are won in
    if not policies:
        return routes, BackendTLS()
    run = _Run(idx, hosts, routes, notices, applied)
    # targetRefs with a sectionName first: a port's policy holds its port against a whole-entry
    # policy, whatever their ages, as Istio's port-level tls does against the top-level one
    for sectioned in (True, False):
        for policy in policies:
            with blame(policy):     # a bug here names the policy (the previous config stays in force)
                run.policy(policy, sectioned)
    for ref, slots in run.slots.items():
        run.out.ancestors[ref] = [slots[i] for i in sorted(slots)]
    return [run.by_host[k] for k in sorted(run.by_host)], run.out


class _Run:
    """One translation's policies, oldest first: what each target's owner is so far (conflicts),
    the hosts' routes, the verdicts and notices."""

    def __init__(self, idx: Index, hosts: Hosts, routes: list[WaypointRoutes], notices: list[Notice],
                 applied: set[tuple[str, str]] | None = None) -> None:
        self.hosts, self.notices, self.out = hosts, notices, BackendTLS()
        self.by_host = {wr.hostname: wr for wr in routes}
        self.configmaps = {f"{ns_of(c)}/{name_of(c)}": c for c in idx.kind("ConfigMap")}
        self.entries = {(ns_of(se), name_of(se)): se for se in idx.kind("ServiceEntry")}
        self.left_out = set() if applied is None else set(self.entries) - applied
        self.owner: dict[tuple[str, str, str, str, str], str] = {}
        self.slots: dict[str, dict[int, Ancestor]] = {}     # policy ref -> targetRef index -> verdict

    def entry(self, host: str) -> WaypointRoutes:
        if host not in self.by_host:
            self.by_host[host] = self.hosts.routes(host)
        return self.by_host[host]

    def policy(self, policy: Obj, sectioned: bool) -> None:
        """One policy's targetRefs with (`sectioned`) or without a sectionName: the verdict of
        each, and its TLS applied where it wins."""
        ref, spec = object_ref(policy), policy.get("spec") or {}
        validation = spec.get("validation") or {}
        pem, resolved, refused = _trust(policy, self.configmaps)
        tls = _Tls(validation.get("hostname", ""), tuple(s.get("hostname") or s.get("uri") or ""
                                                         for s in validation.get("subjectAltNames") or []), pem)
        verdicts = self.slots.setdefault(ref, {})
        for i, t in enumerate(spec.get("targetRefs") or []):
            if bool(t.get("sectionName")) != sectioned:
                continue
            ancestor = {k: t[k] for k in ("group", "kind", "name", "sectionName") if t.get(k) is not None}
            path = f"spec.targetRefs[{i}]"
            se, port, why = _target(policy, t, self.entries, self.left_out)
            if why is None and _key(policy, t) in self.owner:
                why = (False, "Conflicted", f"conflicts with BackendTLSPolicy {self.owner[_key(policy, t)]}, which "
                                            "targets the same backend and is older (Gateway API: the oldest policy wins)")
            if why is not None or se is None:
                verdicts[i] = Ancestor(ancestor, why or (False, "TargetNotFound", ""), resolved)
                self.notices.append(Notice(ref, path, f"not applied: {why[2] if why else ''}", NOT_APPLIED))
                continue
            self.owner[_key(policy, t)] = ref
            message = self.target(ref, path, ns_of(policy), se, port, tls)
            verdicts[i] = Ancestor(ancestor, refused or (True, "Accepted", message), resolved)

    def target(self, ref: str, path: str, ns: str, se: Obj, port: int, tls: _Tls) -> str:
        """Apply `tls` to the entry's hosts (`port`: that port only); the Accepted message."""
        served, overridden = [], []
        for host in (se.get("spec") or {}).get("hosts") or []:
            svc = self.hosts.by_host.get(host)
            if svc is None or svc.kind != "ServiceEntry" or svc.namespace != ns:
                # the registry's host is another namespace's entry (or none: the entry was not
                # translated): a policy changes only its own namespace's entries' TLS
                held = f"the {svc.kind} of namespace {svc.namespace}" if svc else "not registered (see the ServiceEntry)"
                self.notices.append(Notice(ref, path, f"not applied to {host}: the mesh's {host} is {held}, not this "
                                                      "namespace's", NOT_APPLIED))
                continue
            self.notices.extend(Notice(ref, path, f"on {host}: {why}", NOT_APPLIED) for why in _partly(svc, port))
            wr = self.entry(host)
            if ref not in wr.sources:
                wr.sources.append(ref)
            (served if _apply(wr, port, tls) else overridden).append(wr)
        for wr in overridden:
            rules = ", ".join(s for s in wr.sources if s.startswith("DestinationRule/")) or "for the host"
            self.notices.append(Notice(ref, path, (
                f"not applied to {wr.hostname}{f' port {port}' if port else ''}: a DestinationRule in force there "
                f"({rules}) sets trafficPolicy.tls, which takes precedence, as in Istio"), OVERRIDDEN))
        return _accepted(served, overridden)


def _accepted(served: list[WaypointRoutes], overridden: list[WaypointRoutes]) -> str:
    waypoints = sorted({wr.waypoint for wr in served if wr.waypoint})
    unserved = sorted(wr.hostname for wr in served if not wr.waypoint)
    parts = []
    if waypoints:
        parts.append(f"TLS originated by waypoint {', '.join(waypoints)}")
    if unserved:
        parts.append(f"no waypoint serves {', '.join(unserved)}: nothing originates TLS to it until one does")
    if overridden:
        parts.append(f"a DestinationRule's tls takes precedence for {', '.join(wr.hostname for wr in overridden)}")
    return "accepted" + (f"; {'; '.join(parts)}" if parts else "")
