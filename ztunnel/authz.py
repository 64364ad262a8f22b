"""L4 authorization and peer-authentication mode, with Istio's semantics. Pure functions.

AuthorizationPolicy (`evaluate`):
1. Select the policies that apply to the destination workload: in the root namespace without a
   selector (mesh-wide), in the root namespace with a selector (matching workloads of every
   namespace), in the workload's namespace without a selector, or with a matching selector there.
   Policies bound to waypoints (`scope == "waypoint"`) and CUSTOM are not ztunnel's to enforce.
2. AUDIT policies never decide; the ones that match are reported in `Verdict.audit`.
3. Any matching DENY denies.
4. If at least one ALLOW applies, the connection must match one; otherwise it is allowed.

Matching: a policy matches if any rule matches; a rule if all its clauses match (a rule without
clauses matches everything; a policy without rules matches nothing); a clause if any of its
`Match`es does; a `Match` if every non-empty positive field matches and no `not_*` field does.
Principals and namespaces use Istio's string match (exact, `prefix*`, `*suffix`, `*` = present)
against the source identity without its `spiffe://` scheme; trust domains (`trustDomains`,
`source.trustDomain`) the same match against the identity's trust domain (`policymatch.any_trust_domain`).
A connection without identity (plaintext) never matches a positive principal/namespace/trust
domain, and never trips a negative one.

L7 rules: without a waypoint ztunnel cannot see HTTP. Rules carrying HTTP attributes are skipped
in ALLOW policies (so an ALLOW made only of L7 rules allows nothing: fail closed) and are applied
by their L4 part in DENY policies (so they deny more, never less). If a policy says `has_l7` but
its L7 rules' L4 parts are not in the model, a DENY matches every connection.

Trust domains (`trust_domains`, see `ambit.trustdomain`): given the mesh's trust domain and
aliases, a source identity from any other trust domain is denied before any policy is looked at
(the HBONE admission refuses it earlier still; this is the second lock), and policy principals and
trust-domain values are expanded over the trust domain and its aliases before they are compared,
as Istio does.

Source addresses (`ConnInfo.src_ip_verified`): an address is evidence only when the network vouches
for it. When it does not (plaintext that claims a mesh workload's address, see
`ztunnel.sourcecheck`), `ipBlocks`/`notIpBlocks` are treated like L7 attributes: they can never
prove an ALLOW, and a DENY that uses them applies whatever the address (deny more, never less).

PeerAuthentication (`peer_authn`): the workload-selector policy beats the namespace policy,
which beats the mesh (root namespace) policy; UNSET inherits from the next level; a port-level
mode of the workload policy overrides for that port; the default is PERMISSIVE.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache

from ambit import identity as ident
from ambit.model import Authorization, Match, PeerAuthn, Rule, Workload
from ambit.policymatch import any_trust_domain, in_blocks, string_match
from ambit.policyselect import authz_selects, peer_authn_selects
from ambit.trustdomain import TrustDomains

ALLOW, DENY, AUDIT = "ALLOW", "DENY", "AUDIT"
STRICT, PERMISSIVE, DISABLE, UNSET = "STRICT", "PERMISSIVE", "DISABLE", "UNSET"
# Whether or not the destination has a waypoint: a selector (or namespace) policy is ztunnel's, and
# ztunnel cannot see HTTP; only a policy bound with targetRefs is the waypoint's.
L7_REASON = ("policy has L7 rules, which ztunnel cannot evaluate (a waypoint enforces only targetRefs policies); "
             "failing safe")


@dataclass(frozen=True, slots=True)
class ConnInfo:
    """What ztunnel knows about a connection at L4."""

    src_ip: str
    src_identity: str | None      # verified SPIFFE id (mTLS), None for plaintext
    dst_ip: str
    dst_port: int
    src_namespace: str | None = None  # default: the namespace in src_identity
    src_ip_verified: bool = True      # False: src_ip is a claim, not evidence (see the module docstring)


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    policy: str | None            # "ns/name" of the deciding policy (the applicable ALLOWs, comma-separated,
                                  # when none matched); None for the default allow
    action: str                   # ALLOW | DENY: what decided (the default allow reports ALLOW)
    reason: str
    audit: tuple[str, ...] = field(default=())


# --- selection -----------------------------------------------------------------------------------

def applies(policy: Authorization, workload: Workload, root_namespace: str) -> bool:
    """Does `policy` select `workload` (for ztunnel enforcement)? Never a dry-run one: Istio's
    control plane gives its ztunnel no dry-run policy (it reports nothing of them either)."""
    if policy.scope == "waypoint" or policy.dry_run:
        return False
    mesh_wide = policy.namespace == root_namespace or policy.scope == "global"
    return authz_selects(policy.namespace, policy.selector, mesh_wide, workload.namespace, workload.labels)


# --- matching --------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _Source:
    principal: str | None    # schemeless, e.g. cluster.local/ns/demo/sa/client
    namespace: str | None
    trust_domains: TrustDomains | None = None     # the mesh's, to expand policy values over
    trust_domain: str | None = None               # the source identity's, e.g. cluster.local


def _source(conn: ConnInfo, trust_domains: TrustDomains | None = None) -> _Source:
    if not conn.src_identity:
        return _Source(None, None, trust_domains)
    principal = ident.to_principal(conn.src_identity)
    ns = conn.src_namespace
    if ns is None:
        ns = _namespace_of(conn.src_identity)
    return _Source(principal, ns, trust_domains, ident.trust_domain_of(principal))


@lru_cache(maxsize=4096)
def _namespace_of(identity: str) -> str | None:
    """The namespace an identity names (None if it is no workload SPIFFE id). Cached: every
    inbound tunnel parses its peer's identity, the same few per node (issue 17, round 9)."""
    try:
        return ident.parse(identity, allow_schemeless=True).namespace
    except ident.InvalidSpiffeId:
        return None


def foreign_trust_domain(identity: str | None, trust_domains: TrustDomains | None) -> str | None:
    """The trust domain of `identity` if it is not the mesh's nor an alias (None: fine, or no
    identity, or nothing configured to check against)."""
    if not identity or trust_domains is None:
        return None
    td = ident.trust_domain_of(identity)
    return None if trust_domains.admits(td) else td


def _any_str(patterns: list[str], value: str | None) -> bool:
    if value is None:
        return False
    return any(string_match(p, value) for p in patterns)


def _any_principal(patterns: list[str], src: _Source) -> bool:
    if src.principal is None:
        return False
    tds = src.trust_domains
    for p in patterns:
        p = ident.to_principal(p)
        for q in (tds.expand_principal(p) if tds is not None else (p,)):
            if string_match(q, src.principal):
                return True
    return False


def match_matches(m: Match, conn: ConnInfo, src: _Source, *, deny: bool = False) -> bool:
    """Does `m` match? `deny` says the answer decides a DENY (or AUDIT): then attributes that
    cannot be proven (an unverified source address) count as matching, so the DENY applies.
    `unsupported` is set in an L4 rule only by a field this version does not know (a newer
    controller's, ambit.model): it never proves an ALLOW and counts as matched in a DENY."""
    if m.unsupported and not deny:
        return False
    if m.principals and not _any_principal(m.principals, src):
        return False
    if m.not_principals and _any_principal(m.not_principals, src):
        return False
    if m.namespaces and not _any_str(m.namespaces, src.namespace):
        return False
    if m.not_namespaces and _any_str(m.not_namespaces, src.namespace):
        return False
    if m.trust_domains and not any_trust_domain(m.trust_domains, src.trust_domain, src.trust_domains):
        return False
    if m.not_trust_domains and any_trust_domain(m.not_trust_domains, src.trust_domain, src.trust_domains):
        return False
    if not conn.src_ip_verified:
        if (m.ip_blocks or m.not_ip_blocks) and not deny:
            return False
    else:
        if m.ip_blocks and not in_blocks(conn.src_ip, m.ip_blocks):
            return False
        if m.not_ip_blocks and in_blocks(conn.src_ip, m.not_ip_blocks):
            return False
    if m.ports and conn.dst_port not in m.ports:
        return False
    if m.not_ports and conn.dst_port in m.not_ports:
        return False
    dst_ips = getattr(m, "destination_ips", None) or []
    not_dst_ips = getattr(m, "not_destination_ips", None) or []
    if dst_ips and not in_blocks(conn.dst_ip, dst_ips):
        return False
    if not_dst_ips and in_blocks(conn.dst_ip, not_dst_ips):
        return False
    return True


def rule_matches(rule: Rule, conn: ConnInfo, src: _Source | None = None, *, deny: bool = False) -> bool:
    src = src or _source(conn)
    return all(any(match_matches(m, conn, src, deny=deny) for m in clause) for clause in rule.clauses)


def _l7_unrepresented(p: Authorization) -> bool:
    """has_l7 but none of the L7 rules' L4 parts made it into `rules`."""
    return p.has_l7 and not any(getattr(r, "has_l7", False) for r in p.rules)


# --- decision ------------------------------------------------------------------------------------------

def evaluate(
    policies: Iterable[Authorization], dest_workload: Workload, conn: ConnInfo, root_namespace: str,
    trust_domains: TrustDomains | None = None,
) -> Verdict:
    """Decide one connection to `dest_workload`; see the module docstring for the semantics.

    Without `trust_domains` identities are not checked against a trust domain and principals are
    compared as written (the behaviour of a mesh with one trust domain and no aliases)."""
    foreign = foreign_trust_domain(conn.src_identity, trust_domains)
    if foreign is not None:
        assert trust_domains is not None
        return Verdict(False, None, DENY, f"source identity {conn.src_identity} is in trust domain {foreign!r}, "
                                          f"not the mesh's {trust_domains.describe()}")
    src = _source(conn, trust_domains)
    applicable = sorted(
        (p for p in policies if applies(p, dest_workload, root_namespace)),
        key=lambda p: (p.namespace, p.name),
    )
    audit = tuple(
        p.resource_name for p in applicable
        if p.action == AUDIT and (_l7_unrepresented(p) or any(rule_matches(r, conn, src, deny=True) for r in p.rules))
    )

    for p in applicable:
        if p.action != DENY:
            continue
        if _l7_unrepresented(p):
            return Verdict(False, p.resource_name, DENY, f"denied by {p.resource_name}: {L7_REASON}", audit)
        for r in p.rules:
            if rule_matches(r, conn, src, deny=True):
                why = L7_REASON if getattr(r, "has_l7", False) else "a rule matched"
                return Verdict(False, p.resource_name, DENY, f"denied by {p.resource_name}: {why}", audit)

    allows = [p for p in applicable if p.action == ALLOW]
    if not allows:
        return Verdict(True, None, ALLOW, "no ALLOW policy applies", audit)
    for p in allows:
        for r in p.rules:
            if getattr(r, "has_l7", False):
                continue  # an L7 rule can never be proven at L4
            if rule_matches(r, conn, src):
                return Verdict(True, p.resource_name, ALLOW, f"allowed by {p.resource_name}", audit)
    l7 = [p for p in allows if p.has_l7]
    if l7:
        return Verdict(False, l7[0].resource_name, ALLOW,
                       f"no ALLOW rule matched; {l7[0].resource_name}: {L7_REASON}", audit)
    names = ", ".join(p.resource_name for p in allows)
    # No single policy decided: the ALLOW policies that apply did, together, by not matching.
    return Verdict(False, names, ALLOW, f"no rule of the ALLOW policies ({names}) matched", audit)


# --- PeerAuthentication ---------------------------------------------------------------------------------

_MODES = {STRICT, PERMISSIVE, DISABLE, UNSET}


def _mode(value: str) -> str:
    v = (value or UNSET).upper()
    return v if v in _MODES else UNSET


@dataclass(frozen=True, slots=True)
class PeerAuthnDecision:
    mode: str                     # STRICT | PERMISSIVE | DISABLE
    policy: str | None            # "ns/name" of the PeerAuthentication that set it (None: the default)


def peer_authn(pas: Iterable[PeerAuthn], workload: Workload, port: int, root_namespace: str) -> PeerAuthnDecision:
    """Effective mTLS mode for inbound traffic to `workload` on (container) `port`, and the
    PeerAuthentication that decided it (so a refusal can name it).

    Several policies at one level: Istio takes the oldest; the model carries no creation time, so
    we take the first by name, which is at least deterministic.
    """
    mesh: list[PeerAuthn] = []
    namespace: list[PeerAuthn] = []
    selected: list[PeerAuthn] = []
    for p in pas:
        if p.selector:
            if peer_authn_selects(p.namespace, p.selector, root_namespace, workload.namespace, workload.labels):
                selected.append(p)
        elif p.root or p.namespace == root_namespace:
            mesh.append(p)
            if p.namespace == workload.namespace:
                namespace.append(p)
        elif p.namespace == workload.namespace:
            namespace.append(p)

    def first(ps: list[PeerAuthn]) -> PeerAuthn | None:
        return min(ps, key=lambda p: p.name) if ps else None

    mode, by = PERMISSIVE, None
    for level in (first(mesh), first(namespace)):
        if level is not None and _mode(level.mode) != UNSET:
            mode, by = _mode(level.mode), level.resource_name
    wl = first(selected)
    if wl is not None:
        if _mode(wl.mode) != UNSET:
            mode, by = _mode(wl.mode), wl.resource_name
        # JSON (the config stream) turns the int keys into strings: accept both.
        port_mode = _mode(wl.port_modes.get(port) or wl.port_modes.get(str(port), UNSET))  # type: ignore[call-overload]
        if port_mode != UNSET:
            mode, by = port_mode, wl.resource_name
    return PeerAuthnDecision(mode, by)
