"""L4 AuthorizationPolicy and PeerAuthentication semantics (Istio's), sans-IO."""

from __future__ import annotations

import pytest

from ambit.model import Authorization, Match, PeerAuthn, Rule, Workload
from ambit.trustdomain import TrustDomains
from ztunnel.authz import (
    ALLOW,
    DENY,
    L7_REASON,
    ConnInfo,
    Verdict,
    applies,
    evaluate,
    peer_authn,
    string_match,
)

ROOT = "istio-system"
CLIENT = "spiffe://cluster.local/ns/demo/sa/client"
OTHER = "spiffe://cluster.local/ns/other/sa/batch"

SERVER = Workload(uid="u1", name="server-0", namespace="demo", ips=["10.0.1.5"], node="n1",
                  service_account="server", identity="spiffe://cluster.local/ns/demo/sa/server",
                  labels={"app": "server", "version": "v1"})


def conn(identity: str | None = CLIENT, src_ip: str = "10.0.0.7", port: int = 8080,
         dst_ip: str = "10.0.1.5") -> ConnInfo:
    return ConnInfo(src_ip=src_ip, src_identity=identity, dst_ip=dst_ip, dst_port=port)


def pol(name: str, action: str = "ALLOW", *rules: Rule, ns: str = "demo", selector: dict | None = None,
        has_l7: bool = False, scope: str = "") -> Authorization:
    sel = selector or {}
    scope = scope or ("global" if ns == ROOT else "workload" if sel else "namespace")
    return Authorization(name=name, namespace=ns, action=action, scope=scope, selector=sel,
                         rules=list(rules), has_l7=has_l7)


def rule(*clauses: list[Match], has_l7: bool = False) -> Rule:
    return Rule(clauses=list(clauses), has_l7=has_l7)


def decide(policies: list[Authorization], c: ConnInfo | None = None) -> Verdict:
    return evaluate(policies, SERVER, c or conn(), ROOT)


# --- defaults and the basic ladder ------------------------------------------------------------

def test_no_policies_allows() -> None:
    v = decide([])
    assert v.allowed and v.policy is None and v.reason == "no ALLOW policy applies"


def test_allow_with_no_rules_denies_everything_selected() -> None:
    v = decide([pol("allow-nothing")])
    assert not v.allowed and v.action == "ALLOW" and "demo/allow-nothing" in v.reason


def test_allow_all_rule_matches_everything_including_plaintext() -> None:
    p = pol("allow-all", "ALLOW", rule())
    assert decide([p]).allowed and decide([p]).policy == "demo/allow-all"
    assert decide([p], conn(identity=None)).allowed


def test_deny_wins_over_allow() -> None:
    v = decide([pol("allow-all", "ALLOW", rule()), pol("deny-client", "DENY", rule([Match(principals=[
        "cluster.local/ns/demo/sa/client"])]))])
    assert not v.allowed and v.policy == "demo/deny-client" and v.action == "DENY"


def test_deny_with_no_rules_has_no_effect() -> None:
    assert decide([pol("deny-nothing", "DENY")]).allowed


def test_connection_must_match_one_of_the_allow_policies() -> None:
    a = pol("from-other", "ALLOW", rule([Match(namespaces=["other"])]))
    b = pol("from-client", "ALLOW", rule([Match(principals=["cluster.local/ns/demo/sa/client"])]))
    v = decide([a, b])
    assert v.allowed and v.policy == "demo/from-client"
    v = decide([a])
    assert not v.allowed and v.policy == "demo/from-other" and "demo/from-other" in v.reason


# --- selection -------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("policy", "selected"),
    [
        (pol("ns-wide", ns="demo"), True),
        (pol("other-ns", ns="other"), False),
        (pol("by-label", selector={"app": "server"}), True),
        (pol("by-labels", selector={"app": "server", "version": "v1"}), True),
        (pol("label-mismatch", selector={"app": "server", "version": "v2"}), False),
        (pol("label-other-ns", ns="other", selector={"app": "server"}), False),
        (pol("mesh-wide", ns=ROOT), True),
        (pol("root-with-selector", ns=ROOT, selector={"app": "server"}), True),
        (pol("root-selector-mismatch", ns=ROOT, selector={"app": "db"}), False),
        (pol("waypoint-bound", scope="waypoint"), False),
    ],
)
def test_policy_selection(policy: Authorization, selected: bool) -> None:
    assert applies(policy, SERVER, ROOT) is selected
    # And selection really gates enforcement: an applicable allow-nothing denies.
    assert decide([policy]).allowed is (not selected)


def test_custom_action_is_not_enforced_by_ztunnel() -> None:
    assert decide([pol("ext-authz", "CUSTOM", rule())]).allowed


# --- fields ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("match", "c", "expected"),
    [
        (Match(principals=["cluster.local/ns/demo/sa/client"]), conn(), True),
        (Match(principals=["spiffe://cluster.local/ns/demo/sa/client"]), conn(), True),   # scheme tolerated
        (Match(principals=["cluster.local/ns/demo/sa/other"]), conn(), False),
        (Match(principals=["cluster.local/ns/demo/*"]), conn(), True),                  # prefix
        (Match(principals=["*/sa/client"]), conn(), True),                              # suffix
        (Match(principals=["*/sa/server"]), conn(), False),
        (Match(principals=["*"]), conn(), True),                                        # any identity
        (Match(principals=["*"]), conn(identity=None), False),                          # ...but not none
        (Match(not_principals=["*"]), conn(identity=None), True),
        (Match(not_principals=["*"]), conn(), False),
        (Match(not_principals=["cluster.local/ns/demo/sa/client"]), conn(), False),
        (Match(not_principals=["cluster.local/ns/demo/sa/client"]), conn(OTHER), True),
        (Match(namespaces=["demo"]), conn(), True),
        (Match(namespaces=["dem*"]), conn(), True),
        (Match(namespaces=["*mo"]), conn(), True),
        (Match(namespaces=["demo"]), conn(OTHER), False),
        (Match(namespaces=["demo"]), conn(identity=None), False),
        (Match(not_namespaces=["demo"]), conn(), False),
        (Match(not_namespaces=["demo"]), conn(OTHER), True),
        (Match(not_namespaces=["demo"]), conn(identity=None), True),
        (Match(ip_blocks=["10.0.0.0/24"]), conn(), True),
        (Match(ip_blocks=["10.0.0.7"]), conn(), True),                                  # bare address
        (Match(ip_blocks=["10.9.0.0/16"]), conn(), False),
        (Match(ip_blocks=["10.0.0.0/24"]), conn(identity=None), True),                  # plaintext ok
        (Match(not_ip_blocks=["10.0.0.0/24"]), conn(), False),
        (Match(not_ip_blocks=["10.9.0.0/16"]), conn(), True),
        (Match(ip_blocks=["fd00::/8"]), conn(src_ip="fd00::7"), True),
        (Match(ip_blocks=["fd00::/8"]), conn(), False),                                 # v4 never in v6
        (Match(ports=[8080, 9090]), conn(), True),
        (Match(ports=[9090]), conn(), False),
        (Match(not_ports=[8080]), conn(), False),
        (Match(not_ports=[9090]), conn(identity=None), True),
        (Match(destination_ips=["10.0.1.0/24"]), conn(), True),
        (Match(not_destination_ips=["10.0.1.5"]), conn(), False),
        # every non-empty field must match
        (Match(principals=["*"], ports=[8080], ip_blocks=["10.0.0.0/8"]), conn(), True),
        (Match(principals=["*"], ports=[9090], ip_blocks=["10.0.0.0/8"]), conn(), False),
        (Match(namespaces=["demo"], not_principals=["cluster.local/ns/demo/sa/client"]), conn(), False),
    ],
)
def test_match_fields(match: Match, c: ConnInfo, expected: bool) -> None:
    v = decide([pol("p", "ALLOW", rule([match]))], c)
    assert v.allowed is expected
    # The same match in a DENY policy has the opposite effect.
    assert decide([pol("d", "DENY", rule([match]))], c).allowed is (not expected)


def test_clauses_are_anded_and_alternatives_ored() -> None:
    # from: [ns other] OR [principal client]   AND   to: ports 8080
    r = rule([Match(namespaces=["other"]), Match(principals=["cluster.local/ns/demo/sa/client"])],
             [Match(ports=[8080])])
    p = pol("p", "ALLOW", r)
    assert decide([p], conn()).allowed
    assert decide([p], conn(OTHER)).allowed
    assert not decide([p], conn(port=9090)).allowed
    assert not decide([p], conn("spiffe://cluster.local/ns/prod/sa/x")).allowed


def test_any_rule_of_a_policy_may_match() -> None:
    p = pol("p", "ALLOW", rule([Match(ports=[1])]), rule([Match(ports=[8080])]))
    assert decide([p]).allowed and not decide([p], conn(port=2)).allowed


def test_explicit_src_namespace_overrides_identity() -> None:
    c = ConnInfo("10.0.0.7", CLIENT, "10.0.1.5", 8080, src_namespace="other")
    assert decide([pol("p", "ALLOW", rule([Match(namespaces=["other"])]))], c).allowed


def test_string_match() -> None:
    assert string_match("*", "x") and not string_match("*", "")
    assert string_match("a*", "abc") and not string_match("a*", "bac")
    assert string_match("*c", "abc") and not string_match("*c", "cab")
    assert string_match("abc", "abc") and not string_match("abc", "abcd")


# --- AUDIT ---------------------------------------------------------------------------------------------------------

def test_audit_is_reported_but_never_decides() -> None:
    audit = pol("audit-client", "AUDIT", rule([Match(principals=["*"])]))
    v = decide([audit])
    assert v.allowed and v.audit == ("demo/audit-client",)
    v = decide([audit, pol("deny-all", "DENY", rule())])
    assert not v.allowed and v.audit == ("demo/audit-client",)
    assert decide([audit], conn(identity=None)).audit == ()


# --- L7 rules without a waypoint ------------------------------------------------------------------------------

def test_allow_with_only_l7_rules_fails_closed_with_the_reason() -> None:
    p = pol("allow-get", "ALLOW", has_l7=True)           # translation dropped the L7-only rule
    v = decide([p])
    assert not v.allowed and v.policy == "demo/allow-get" and L7_REASON in v.reason


def test_l7_rule_in_allow_is_skipped_but_l4_rules_still_allow() -> None:
    p = pol("mixed", "ALLOW", rule([Match(principals=["*"])], has_l7=True), rule([Match(ports=[8080])]),
            has_l7=True)
    assert decide([p]).allowed                           # via the pure L4 rule
    v = decide([p], conn(port=9090))                     # only the L7 rule's L4 part would match
    assert not v.allowed and L7_REASON in v.reason


def test_l7_rule_in_deny_applies_by_its_l4_part() -> None:
    # DENY GET /admin from ns other -> at L4: deny everything from ns other.
    p = pol("deny-admin", "DENY", rule([Match(namespaces=["other"])], has_l7=True), has_l7=True)
    v = decide([p], conn(OTHER))
    assert not v.allowed and v.policy == "demo/deny-admin" and L7_REASON in v.reason
    assert decide([p], conn()).allowed                   # L4 part does not match: no effect


def test_deny_with_l7_rules_but_no_l4_parts_denies_everything() -> None:
    v = decide([pol("deny-post", "DENY", has_l7=True)])
    assert not v.allowed and L7_REASON in v.reason


# --- PeerAuthentication -------------------------------------------------------------------------------------

def pa(name: str, mode: str = "UNSET", ns: str = "demo", selector: dict | None = None,
       ports: dict[int, str] | None = None) -> PeerAuthn:
    return PeerAuthn(name=name, namespace=ns, mode=mode, selector=selector or {}, port_modes=ports or {},
                     root=ns == ROOT and not selector)


@pytest.mark.parametrize(
    ("pas", "port", "expected"),
    [
        ([], 8080, "PERMISSIVE"),
        ([pa("mesh", "STRICT", ns=ROOT)], 8080, "STRICT"),
        ([pa("mesh", "STRICT", ns=ROOT), pa("ns", "PERMISSIVE")], 8080, "PERMISSIVE"),
        ([pa("mesh", "STRICT", ns=ROOT), pa("ns", "UNSET")], 8080, "STRICT"),            # inherits
        ([pa("ns", "STRICT"), pa("wl", "DISABLE", selector={"app": "server"})], 8080, "DISABLE"),
        ([pa("ns", "STRICT"), pa("wl", "UNSET", selector={"app": "server"})], 8080, "STRICT"),
        ([pa("ns", "STRICT"), pa("wl", "UNSET", selector={"app": "db"})], 8080, "STRICT"),  # not selected
        ([pa("other", "STRICT", ns="other")], 8080, "PERMISSIVE"),
        ([pa("wl", "STRICT", selector={"app": "server"}, ports={8080: "DISABLE"})], 8080, "DISABLE"),
        ([pa("wl", "STRICT", selector={"app": "server"}, ports={8080: "DISABLE"})], 9090, "STRICT"),
        ([pa("wl", "UNSET", selector={"app": "server"}, ports={8080: "UNSET"}), pa("ns", "STRICT")], 8080,
         "STRICT"),
        # port-level modes only count on workload-selector policies
        ([pa("ns", "STRICT", ports={8080: "DISABLE"})], 8080, "STRICT"),
        # a selector policy in the root namespace only selects root-namespace workloads
        ([pa("root-sel", "STRICT", ns=ROOT, selector={"app": "server"})], 8080, "PERMISSIVE"),
        # two at one level: deterministic (first by name)
        ([pa("b", "STRICT"), pa("a", "DISABLE")], 8080, "DISABLE"),
    ],
)
def test_peer_authn_precedence(pas: list[PeerAuthn], port: int, expected: str) -> None:
    assert peer_authn(pas, SERVER, port, ROOT).mode == expected


# --- trust domains and aliases (Istio's ReplaceTrustDomainAliases) ---------------------------------------

TDS = TrustDomains.of("cluster.local")
TDS_ALIAS = TrustDomains.of("cluster.local", ["old.td"])
EVIL = "spiffe://evil.local/ns/demo/sa/client"


def decide_td(policies: list[Authorization], identity: str, tds: TrustDomains) -> Verdict:
    return evaluate(policies, SERVER, conn(identity), ROOT, tds)


def test_an_identity_outside_the_trust_domains_is_denied_whatever_the_policy() -> None:
    for policies in ([], [pol("ns", ALLOW, rule([Match(namespaces=["demo"])]))], [pol("all", ALLOW, rule())]):
        v = decide_td(policies, EVIL, TDS)
        assert (v.allowed, v.action) == (False, DENY), policies
        assert "trust domain 'evil.local', not the mesh's 'cluster.local'" in v.reason
    assert decide_td([pol("ns", ALLOW, rule([Match(namespaces=["demo"])]))], CLIENT, TDS).allowed, "the control"


def test_without_trust_domains_the_old_behaviour_stays() -> None:
    assert decide([pol("ns", ALLOW, rule([Match(namespaces=["demo"])]))], conn(EVIL)).allowed


@pytest.mark.parametrize("pattern, identity, allowed", [
    ("cluster.local/ns/demo/sa/client", "spiffe://old.td/ns/demo/sa/client", True),       # alias expansion
    ("old.td/ns/demo/sa/client", CLIENT, True),                                           # and back
    ("cluster.local/ns/demo/sa/client", "spiffe://old.td/ns/demo/sa/other", False),
    ("cluster.local/ns/demo/sa/*", "spiffe://old.td/ns/demo/sa/x", True),                 # suffix wildcard kept
    ("*/ns/demo/sa/client", "spiffe://old.td/ns/demo/sa/client", True),                   # td wildcard as written
    ("spiffe://cluster.local/ns/demo/sa/client", "spiffe://old.td/ns/demo/sa/client", True),  # with the scheme
    ("other.td/ns/demo/sa/client", "spiffe://old.td/ns/demo/sa/client", False),           # foreign: as written
])
def test_principals_are_expanded_over_the_trust_domain_and_its_aliases(pattern, identity, allowed) -> None:
    p = pol("p", ALLOW, rule([Match(principals=[pattern])]))
    assert decide_td([p], identity, TDS_ALIAS).allowed is allowed


def test_a_deny_on_a_principal_also_catches_its_alias() -> None:
    p = pol("d", DENY, rule([Match(principals=["cluster.local/ns/demo/sa/client"])]))
    assert not decide_td([p], "spiffe://old.td/ns/demo/sa/client", TDS_ALIAS).allowed
    p = pol("d", DENY, rule([Match(not_principals=["cluster.local/ns/demo/sa/client"])]))
    assert decide_td([p], "spiffe://old.td/ns/demo/sa/client", TDS_ALIAS).allowed, "notPrincipals expands too"


def test_cluster_local_in_a_policy_means_the_local_trust_domain_after_a_rename() -> None:
    renamed = TrustDomains.of("new.td")
    p = pol("p", ALLOW, rule([Match(principals=["cluster.local/ns/demo/sa/client"])]))
    assert decide_td([p], "spiffe://new.td/ns/demo/sa/client", renamed).allowed


# --- trustDomains / notTrustDomains / `when: source.trustDomain` ----------------------------------------

OLD_CLIENT = "spiffe://old.td/ns/demo/sa/client"


@pytest.mark.parametrize("match, identity, tds, expected", [
    (Match(trust_domains=["cluster.local"]), CLIENT, TDS, True),
    (Match(trust_domains=["other.td"]), CLIENT, TDS, False),
    (Match(trust_domains=["cluster"]), CLIENT, TDS, False),                # exact, not a prefix
    (Match(trust_domains=["*"]), CLIENT, TDS, True),                       # any trust domain...
    (Match(trust_domains=["*"]), None, TDS, False),                        # ...but plaintext has none
    (Match(trust_domains=["cluster.*"]), CLIENT, TDS, True),               # prefix
    (Match(trust_domains=["*.local"]), CLIENT, TDS, True),                 # suffix
    (Match(trust_domains=["*client"]), CLIENT, TDS, False),                # the trust domain, not the identity
    (Match(trust_domains=["other.td", "cluster.local"]), CLIENT, TDS, True),   # values ORed
    (Match(not_trust_domains=["cluster.local"]), CLIENT, TDS, False),
    (Match(not_trust_domains=["other.td"]), CLIENT, TDS, True),
    (Match(not_trust_domains=["*"]), CLIENT, TDS, False),
    (Match(not_trust_domains=["*"]), None, TDS, True),                     # as notPrincipals: "deny plaintext"
    (Match(namespaces=["demo"], trust_domains=["other.td"]), CLIENT, TDS, False),  # fields ANDed
    (Match(trust_domains=["cluster.local"]), CLIENT, None, True),          # no mesh settings: as written
    # a value naming the trust domain or an alias stands for all of them (ExpandTrustDomainAliases)
    (Match(trust_domains=["cluster.local"]), OLD_CLIENT, TDS_ALIAS, True),
    (Match(trust_domains=["old.td"]), CLIENT, TDS_ALIAS, True),
    (Match(not_trust_domains=["cluster.local"]), OLD_CLIENT, TDS_ALIAS, False),
    (Match(trust_domains=["old*"]), OLD_CLIENT, TDS_ALIAS, True),
    (Match(trust_domains=["old*"]), CLIENT, TDS_ALIAS, False),              # a wildcard is not expanded
    # unlike a principal, `cluster.local` is no name for "this mesh" after a rename (as in Istio)
    (Match(trust_domains=["cluster.local"]), "spiffe://new.td/ns/demo/sa/client", TrustDomains.of("new.td"), False),
])
def test_trust_domain_fields(match: Match, identity: str | None, tds: TrustDomains | None, expected: bool) -> None:
    assert evaluate([pol("p", ALLOW, rule([match]))], SERVER, conn(identity), ROOT, tds).allowed is expected
    # The same match in a DENY policy has the opposite effect.
    assert evaluate([pol("d", DENY, rule([match]))], SERVER, conn(identity), ROOT, tds).allowed is (not expected)


def translated_policy(action: str, rule_: dict) -> Authorization:
    from controller.translate import translate
    t = translate([{"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                    "metadata": {"name": action.lower(), "namespace": "demo"},
                    "spec": {"action": action, "rules": [rule_]}}])
    assert t.errors == [], [str(e) for e in t.errors]
    [a] = t.authorizations
    return a


@pytest.mark.parametrize("rule_, plaintext", [
    ({"from": [{"source": {"trustDomains": ["old.td"]}}]}, False),
    ({"when": [{"key": "source.trustDomain", "values": ["old.td"]}]}, False),
    ({"when": [{"key": "source.trustDomain", "notValues": ["evil*"]}]}, True),
])
def test_trust_domains_are_enforced_by_ztunnel_without_a_waypoint(rule_: dict, plaintext: bool) -> None:
    """An L4 attribute: an ALLOW on it admits a mesh client at ztunnel (it is no L7 rule, which an
    ALLOW would skip), alias expanded; plaintext has no trust domain, so only a negative admits it."""
    allow = translated_policy("ALLOW", rule_)
    assert not allow.has_l7 and not allow.rules[0].has_l7
    v = evaluate([allow], SERVER, conn(CLIENT), ROOT, TDS_ALIAS)
    assert (v.allowed, v.policy) == (True, "demo/allow")
    assert evaluate([allow], SERVER, conn(None), ROOT, TDS_ALIAS).allowed is plaintext


def test_a_deny_on_any_trust_domain_refuses_every_mesh_client_and_not_plaintext() -> None:
    deny = translated_policy("DENY", {"from": [{"source": {"trustDomains": ["*"]}}]})
    v = evaluate([deny], SERVER, conn(CLIENT), ROOT, TDS_ALIAS)
    assert (v.allowed, v.action, v.policy) == (False, DENY, "demo/deny")
    assert not evaluate([deny], SERVER, conn(OLD_CLIENT), ROOT, TDS_ALIAS).allowed
    assert evaluate([deny], SERVER, conn(None), ROOT, TDS_ALIAS).allowed


# --- unverified source addresses -------------------------------------------------------------------------

def test_an_unverified_address_never_proves_an_allow_and_never_escapes_a_deny() -> None:
    unverified = ConnInfo("10.0.0.7", None, "10.0.1.5", 8080, src_ip_verified=False)
    verified = ConnInfo("10.0.0.7", None, "10.0.1.5", 8080)
    allow = pol("a", ALLOW, rule([Match(ip_blocks=["10.0.0.0/24"])]))
    allow_not = pol("an", ALLOW, rule([Match(not_ip_blocks=["192.168.0.0/16"])]))
    deny_in = pol("d", DENY, rule([Match(ip_blocks=["192.168.0.0/16"])]))
    deny_not = pol("dn", DENY, rule([Match(not_ip_blocks=["10.0.0.0/24"])]))
    for p in (allow, allow_not):
        assert decide([p], verified).allowed and not decide([p], unverified).allowed, p.name
    for p in (deny_in, deny_not):
        assert decide([p], verified).allowed and not decide([p], unverified).allowed, p.name
    assert decide([pol("ports", ALLOW, rule([Match(ports=[8080])]))], unverified).allowed, "other attributes still work"


def test_trust_domains_refuse_bad_names_and_describe_themselves() -> None:
    assert TrustDomains.of("a.b", ["c", "a.b", "c"]).all == ("a.b", "c")
    assert TrustDomains.of("a.b", ["c"]).describe() == "'a.b' (aliases 'c')"
    for bad in ("", "UPPER", "sp ace", "a/b", "-lead"):
        with pytest.raises(ValueError, match=r"trustDomainAliases\[0\]"):
            TrustDomains.of("a.b", [bad])


@pytest.mark.parametrize(("identity", "allowed"), [(CLIENT, True), ("cluster.local/ns/demo/sa/client", True),
                                                    (OTHER, False), ("spiffe://cluster.local/ns/demo", False),
                                                    ("not an identity", False)])
def test_the_namespace_a_peer_identity_names_decides_the_same_every_time(identity: str, allowed: bool) -> None:
    """The namespace is parsed out of the identity once and cached: the second connection from the
    same peer gets the same decision, and an identity naming no namespace never matches one."""
    p = pol("from-demo", "ALLOW", rule([Match(namespaces=["demo"])]))
    for _ in range(2):
        assert evaluate([p], SERVER, conn(identity), ROOT).allowed is allowed
