"""L7 authorization: which policies apply to a request at this waypoint, and the decision.

Selection (istio/api security/v1beta1/authorization_policy.proto `targetRefs`): a waypoint
enforces only policies bound with `targetRefs` (waypoint/binding.py).

Decision (the proto's header comment): CUSTOM policies (external authorization) are decided first
by their authorizer (waypoint/authz/custom.py; the exchange holds the request for the check); then
any matching DENY denies; then, if any ALLOW applies, the request must match one, else it is denied;
with no ALLOW it is allowed. AUDIT never decides; the AUDIT policies that match are reported.
A policy with no rules matches nothing (so an ALLOW `spec: {}` denies everything); a rule with
no from/to/when matches everything. Within a rule: AND over from/to/when, OR within each list,
AND over the fields of one source/operation, OR over a field's values (the model's
`Rule.clauses`). End-user attributes (`requestPrincipals`, `request.auth.*`) read the `EndUser`
that waypoint/authn verified; a request without one has no request principal and no claims, so
`requestPrincipals: ["*"]` denies it and `notRequestPrincipals: ["*"]` matches it (Istio).
Likewise a request whose peer has no identity (plaintext) has no principal, namespace or trust
domain: a positive `principals`/`namespaces`/`trustDomains` never matches it, and a `not*` one never
excludes it.
Attributes Ambit cannot evaluate (`Match.unsupported`: connection.sni, experimental.*) never prove
an ALLOW and always count in a DENY or AUDIT (fail safe).

Dry run (the `istio.io/dry-run` annotation, ALLOW and DENY only): such a policy never decides.
As Envoy's shadow rules do, the dry-run DENY policies that apply form one shadow engine ("denied"
when a rule of one matches) and the dry-run ALLOW policies another ("allowed" when a rule of one
matches, else "denied"); each result, with Istio's id of the rule that matched, goes to the
request's access-log line (`dry_run`) and a debug line (`shadow denied, matched policy ...`).

A denied request gets 403 `RBAC: access denied` (Envoy rbac_filter.cc), response flag `RBAC`
(Envoy's short name for RbacAccessDenied), and gRPC status 7 PERMISSION_DENIED for gRPC.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from ambit import identity as ident
from ambit.model import Authorization, Match, Rule
from ambit.policymatch import any_trust_domain, in_blocks, string_match
from ambit.trustdomain import TrustDomains
from waypoint.authz.matching import (
    ISTIO,
    WHOLE,
    WIDE,
    any_auth,
    any_header,
    any_host,
    any_method,
    any_namespace,
    any_path,
    any_request_principal,
)
from waypoint.binding import Waypoint, bind
from waypoint.localreply import GRPC_PERMISSION_DENIED, local_reply
from waypoint.normalize import normalize_path
from waypoint.request import Downstream, EndUser, LocalReply, RequestHead

log = logging.getLogger("waypoint.rbac")

ALLOW, DENY, AUDIT, CUSTOM = "ALLOW", "DENY", "AUDIT", "CUSTOM"
DENIED_BODY = "RBAC: access denied"
RBAC_FLAG = "RBAC"
# Envoy's details of a denial by its RBAC filters (source/extensions/filters/common/rbac/utility.h
# `responseDetail`): the network filter sets them as the connection's termination details
RBAC_DENIED_DETAIL = "rbac_access_denied_matched_policy[{}]"


@dataclass(frozen=True, slots=True)
class PolicySet:
    """The policies this waypoint enforces: `gateway` ones for every request, `by_service` ones
    for requests to that Service ("ns/name"). Build with `policy_set`, once per config update."""

    gateway: tuple[Authorization, ...]
    by_service: dict[str, tuple[Authorization, ...]]
    # the dry-run (istio.io/dry-run) ALLOW and DENY policies, bound alike: evaluated, never enforced
    shadow_gateway: tuple[Authorization, ...] = ()
    shadow_by_service: dict[str, tuple[Authorization, ...]] = field(default_factory=dict)

    def for_request(self, down: Downstream) -> tuple[Authorization, ...]:
        svc = self.by_service.get(down.service)
        return self.gateway + svc if svc else self.gateway

    def shadow_for(self, down: Downstream) -> tuple[Authorization, ...]:
        svc = self.shadow_by_service.get(down.service)
        return self.shadow_gateway + svc if svc else self.shadow_gateway


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    policy: str | None           # "ns/name" that decided (the ALLOWs, comma-separated, when none matched)
    action: str                  # ALLOW | DENY
    reason: str
    audit: tuple[str, ...] = ()
    # the dry-run engines' results: (action "allow"|"deny", result "allowed"|"denied", the rule id
    # that matched or "")
    dry_run: tuple[tuple[str, str, str], ...] = ()


_NO_POLICY = Verdict(True, None, ALLOW, "no ALLOW policy applies")


def policy_set(policies: Iterable[Authorization], waypoint: Waypoint) -> PolicySet:
    """Bind the ALLOW, DENY and AUDIT policies to this waypoint (CUSTOM ones are bound by
    waypoint/authz/custom.py `custom_set`). An action it does not know (a newer controller's), or a
    CUSTOM policy naming no provider, raises ValueError naming the policy, so the update is
    rejected (NACKed) and the last good policies stay in force: skipping the policy would allow
    what it was written to deny."""
    policies = list(policies)
    for p in policies:
        if p.action == CUSTOM:
            if not p.provider:
                raise ValueError(f"Authorization {p.resource_name}: action CUSTOM names no provider; the "
                                 f"waypoint cannot enforce this policy")
            continue
        if p.action not in (ALLOW, DENY, AUDIT):
            raise ValueError(f"Authorization {p.resource_name}: action {p.action!r} is not one of "
                             f"{ALLOW}, {DENY}, {AUDIT}, {CUSTOM}; the waypoint cannot enforce this policy")
    bound = bind((p for p in policies if p.action != CUSTOM and not p.dry_run), waypoint)
    shadow = bind((p for p in policies if p.action in (ALLOW, DENY) and p.dry_run), waypoint)
    return PolicySet(bound.gateway, bound.by_service, shadow.gateway, shadow.by_service)


@dataclass(frozen=True, slots=True)
class _Request:
    head: RequestHead
    down: Downstream
    path: str
    principal: str | None
    namespace: str | None
    trust_domains: TrustDomains | None
    user: EndUser | None = None


@functools.lru_cache(maxsize=4096)
def _peer(identity: str) -> tuple[str | None, str | None]:
    """(principal, namespace) of a SPIFFE id; a connection's peer repeats, so this is cached."""
    if not identity:
        return None, None
    try:
        namespace: str | None = ident.parse(identity, allow_schemeless=True).namespace
    except ident.InvalidSpiffeId:
        namespace = None
    return ident.to_principal(identity), namespace


def _context(head: RequestHead, down: Downstream, tds: TrustDomains | None, user: EndUser | None) -> _Request:
    principal, namespace = _peer(down.source_identity)
    # Normalized here too (idempotent), so a path the engine forgot to normalize cannot dodge a rule.
    return _Request(head, down, normalize_path(head.path_only), principal, namespace, tds, user)


def _principal(patterns: list[str], r: _Request) -> bool:
    if r.principal is None:
        return False
    for p in patterns:
        p = ident.to_principal(p)
        for q in (r.trust_domains.expand_principal(p) if r.trust_domains is not None else (p,)):
            if string_match(q, r.principal):
                return True
    return False


def _headers(conds: dict[str, list[str]], r: _Request, how: str) -> bool:
    """Every named header (or request pseudo-header, as Envoy's RBAC reads `:authority` & co.)
    matches one of its values (`any_header`)."""
    return all(any_header(vals, r.head.header_or_pseudo(name), how) for name, vals in conds.items())


def _any_header(conds: dict[str, list[str]], r: _Request, how: str) -> bool:
    return any(any_header(vals, r.head.header_or_pseudo(name), how) for name, vals in conds.items())


def match_matches(m: Match, r: _Request, *, deny: bool) -> bool:
    """Every positive field set matches and no negative one does. `deny`: this decides a DENY or
    AUDIT, so unsupported attributes count as matched (fail safe); for an ALLOW they never do.
    Where Ambit reads a field more carefully than Istio, it does so only to deny more: a host
    without a port also matches the authority with one in a DENY's `hosts` and an ALLOW's
    `notHosts`; a header element matches without its spaces in a DENY's `values` and an ALLOW's
    `notValues`; a `notValues` header exclusion in a DENY needs the whole value to match (so
    `x: good` + `x: bad` is not excused by `notValues: [good]`).
    Straight-line tests, cheapest and most selective first: this runs for every request."""
    if m.unsupported and not deny:
        return False
    d, h = r.down, r.head
    if m.methods and not any_method(m.methods, h.method):
        return False
    if m.not_methods and any_method(m.not_methods, h.method):
        return False
    if m.ports and d.destination_port not in m.ports:
        return False
    if m.not_ports and d.destination_port in m.not_ports:
        return False
    if m.paths and not any_path(m.paths, r.path):
        return False
    if m.not_paths and any_path(m.not_paths, r.path):
        return False
    if m.principals and not _principal(m.principals, r):
        return False
    if m.not_principals and _principal(m.not_principals, r):
        return False
    if m.namespaces and not any_namespace(m.namespaces, r.namespace):
        return False
    if m.not_namespaces and any_namespace(m.not_namespaces, r.namespace):
        return False
    if m.trust_domains and not any_trust_domain(m.trust_domains, _peer_trust_domain(r), r.trust_domains):
        return False
    if m.not_trust_domains and any_trust_domain(m.not_trust_domains, _peer_trust_domain(r), r.trust_domains):
        return False
    if m.hosts and not any_host(m.hosts, h.authority, port_tolerant=deny):
        return False
    if m.not_hosts and any_host(m.not_hosts, h.authority, port_tolerant=not deny):
        return False
    if m.request_headers and not _headers(m.request_headers, r, WIDE if deny else ISTIO):
        return False
    if m.not_request_headers and _any_header(m.not_request_headers, r, WHOLE if deny else WIDE):
        return False
    if m.request_principals and not any_request_principal(m.request_principals, r.user, wide=deny):
        return False
    if m.not_request_principals and any_request_principal(m.not_request_principals, r.user, wide=not deny):
        return False
    if m.auth and not all(any_auth(k, vals, r.user, wide=deny) for k, vals in m.auth.items()):
        return False
    if m.not_auth and any(any_auth(k, vals, r.user, wide=not deny) for k, vals in m.not_auth.items()):
        return False
    if m.ip_blocks and not in_blocks(d.source_ip, m.ip_blocks):
        return False
    if m.not_ip_blocks and in_blocks(d.source_ip, m.not_ip_blocks):
        return False
    if m.remote_ip_blocks and not in_blocks(d.source_ip, m.remote_ip_blocks):
        return False
    if m.not_remote_ip_blocks and in_blocks(d.source_ip, m.not_remote_ip_blocks):
        return False
    if m.destination_ips and not in_blocks(d.destination_ip or d.local_ip, m.destination_ips):
        return False
    if m.not_destination_ips and in_blocks(d.destination_ip or d.local_ip, m.not_destination_ips):
        return False
    return True


def rule_matches(rule: Rule, r: _Request, *, deny: bool) -> bool:
    return all(any(match_matches(m, r, deny=deny) for m in clause) for clause in rule.clauses)


def _policy_matches(p: Authorization, r: _Request, *, deny: bool) -> bool:
    return any(rule_matches(rule, r, deny=deny) for rule in p.http_rules)


def _foreign(identity: str, tds: TrustDomains | None) -> str | None:
    if not identity or tds is None:
        return None
    td = _trust_domain(identity)
    return None if tds.admits(td) else td


@functools.lru_cache(maxsize=1024)
def _trust_domain(identity: str) -> str:
    """The trust domain of a SPIFFE identity (a pure function of it; every request asks)."""
    return ident.trust_domain_of(identity)


def _peer_trust_domain(r: _Request) -> str | None:
    """The trust domain of the request's peer; None without one (plaintext), which no
    `trustDomains` value matches and no `notTrustDomains` value excludes."""
    return _trust_domain(r.principal) if r.principal is not None else None


def rule_id(p: Authorization, head: RequestHead, down: Downstream, trust_domains: TrustDomains | None = None,
            user: EndUser | None = None) -> str:
    """Istio's name for the first rule of `p` that matches the request, read as a DENY reads it
    (pilot/pkg/security/authz/builder/builder.go `policyName`: `ns[NS]-policy[NAME]-rule[I]`, I the
    rule's index in the policy): the policy id Envoy's RBAC filters report for a denial. Asked only
    once a request or connection is denied."""
    r = _context(head, down, trust_domains, user)
    i = next((i for i, rule in enumerate(p.http_rules) if rule_matches(rule, r, deny=True)), 0)
    return f"ns[{p.namespace}]-policy[{p.name}]-rule[{i}]"


def denied_detail(policies: Iterable[Authorization], v: Verdict, head: RequestHead, down: Downstream,
                  trust_domains: TrustDomains | None = None) -> str:
    """Envoy's details for the denial `v` of the request by `policies` (those that applied to it):
    `rbac_access_denied_matched_policy[<the DENY rule that matched>]`, or `[none]` when no ALLOW
    policy matched (Envoy's ALLOW engine names no policy then; nor does a foreign trust domain,
    which Istio rejects in the TLS handshake, before any RBAC filter)."""
    p = next((p for p in policies if v.action == DENY and p.resource_name == v.policy), None)
    return RBAC_DENIED_DETAIL.format(rule_id(p, head, down, trust_domains) if p is not None else "none")


def first_match(policies: Iterable[Authorization], head: RequestHead, down: Downstream,
                trust_domains: TrustDomains | None = None, user: EndUser | None = None) -> Authorization | None:
    """The first of `policies` a rule of which matches the request, read as a DENY reads it
    (attributes Ambit cannot evaluate count as matched): CUSTOM policies, whose rules Istio
    compiles as DENY rules that trigger the check (builder.go: `b.build(customPolicies, RBAC_DENY)`)."""
    ps = list(policies)
    if not ps:
        return None
    r = _context(head, down, trust_domains, user)
    return next((p for p in ps if _policy_matches(p, r, deny=True)), None)


def evaluate(policies: Iterable[Authorization], head: RequestHead, down: Downstream,
             trust_domains: TrustDomains | None = None, user: EndUser | None = None) -> Verdict:
    """Decide one request against the policies that apply to it (see `PolicySet.for_request`)."""
    foreign = _foreign(down.source_identity, trust_domains)
    if foreign is not None:
        return Verdict(False, None, DENY, f"source identity {down.source_identity} is in the foreign trust "
                                          f"domain {foreign!r}")
    ps = list(policies)
    if not ps:      # nothing to match: skip building the request's context (path normalization)
        return _NO_POLICY
    r = _context(head, down, trust_domains, user)
    audit = tuple(p.resource_name for p in ps if p.action == AUDIT and _policy_matches(p, r, deny=True))
    for p in ps:
        if p.action == DENY and _policy_matches(p, r, deny=True):
            return Verdict(False, p.resource_name, DENY, f"denied by {p.resource_name}", audit)
    allows = [p for p in ps if p.action == ALLOW]
    if not allows:
        return Verdict(True, None, ALLOW, "no ALLOW policy applies", audit)
    for p in allows:
        if _policy_matches(p, r, deny=False):
            return Verdict(True, p.resource_name, ALLOW, f"allowed by {p.resource_name}", audit)
    names = ", ".join(p.resource_name for p in allows)
    return Verdict(False, names, ALLOW, f"no rule of the ALLOW policies ({names}) matched", audit)


def shadow(policies: Iterable[Authorization], head: RequestHead, down: Downstream,
           trust_domains: TrustDomains | None = None,
           user: EndUser | None = None) -> tuple[tuple[str, str, str], ...]:
    """What the dry-run `policies` that apply to the request would decide, engine by engine
    (Envoy's shadow rules, which Istio builds for them): DENY first, then ALLOW."""
    r = _context(head, down, trust_domains, user)
    out = []
    for action, deny in ((DENY, True), (ALLOW, False)):
        ps = [p for p in policies if p.action == action]
        if not ps:
            continue
        hit = next((f"ns[{p.namespace}]-policy[{p.name}]-rule[{i}]" for p in ps
                    for i, rule in enumerate(p.http_rules) if rule_matches(rule, r, deny=deny)), "")
        result = "denied" if bool(hit) == deny else "allowed"
        out.append((action.lower(), result, hit))
        if result == "denied":
            log.debug("shadow denied, matched policy %s", hit or "none")
    return tuple(out)


def authorize(pset: PolicySet, head: RequestHead, down: Downstream, trust_domains: TrustDomains | None = None,
              user: EndUser | None = None) -> tuple[LocalReply | None, Verdict]:
    """(None, verdict) when allowed; (the 403 to send, verdict) when denied. `user`: the verified
    JWT's end user (waypoint/authn), None when the request carried none. The dry-run policies'
    results ride on the verdict (`dry_run`), whatever it is."""
    ps = pset.for_request(down)
    dry: tuple[tuple[str, str, str], ...] = ()
    if pset.shadow_gateway or pset.shadow_by_service:   # (attributes: no call per request without dry-run policies)
        sh = pset.shadow_for(down)
        if sh:
            dry = shadow(sh, head, down, trust_domains, user)
    if not ps and trust_domains is None:
        return None, (dataclasses.replace(_NO_POLICY, dry_run=dry) if dry else _NO_POLICY)
    v = evaluate(ps, head, down, trust_domains, user)
    if dry:
        v = dataclasses.replace(v, dry_run=dry)
    if v.allowed:
        return None, v
    return local_reply(head, 403, DENIED_BODY, flags=RBAC_FLAG, reason=v.reason,
                       grpc_status=GRPC_PERMISSION_DENIED), v
