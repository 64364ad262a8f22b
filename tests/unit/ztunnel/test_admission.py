"""The destination ztunnel's decision on inbound connections (HBONE and plaintext), without sockets."""

from __future__ import annotations

import pytest

from ambit.model import Authorization, Match, MeshSettings, PeerAuthn, Rule
from ambit.zds import PodInfo
from tests.unit.ztunnel.meshcfg import config, wl
from ztunnel import admission
from ztunnel.admission import admit_hbone, admit_plaintext, forwarded_for

ECHO = wl("echo-v1", "10.210.1.10", sa="echo", labels={"app": "echo"})
CLIENT = wl("client", "10.210.1.11")
OTHER = wl("client2", "10.210.1.12", sa="other")
POD = PodInfo(uid=ECHO.uid, name="echo-v1", namespace="demo", ip="10.210.1.10", node="node1", service_account="echo",
              labels={"app": "echo"})
SA_CLIENT = "spiffe://cluster.local/ns/demo/sa/client"
SA_OTHER = "spiffe://cluster.local/ns/demo/sa/other"


def allow_client_on_8080() -> Authorization:
    return Authorization(name="allow-client", namespace="demo", action="ALLOW", selector={"app": "echo"},
                         rules=[Rule(clauses=[[Match(principals=["cluster.local/ns/demo/sa/client"])],
                                              [Match(ports=[8080])]])])


def deny(name: str = "deny-client", principals: tuple[str, ...] = ("cluster.local/ns/demo/sa/client",)
         ) -> Authorization:
    return Authorization(name=name, namespace="demo", action="DENY",
                         rules=[Rule(clauses=[[Match(principals=list(principals))]])])


def hbone(cfg, peer: str = SA_CLIENT, authority: str = "10.210.1.10:8080", fwd: str | None = "for=10.210.1.11",
          tls_peer: str = "10.210.1.11") -> admission.Admission:
    headers = {"forwarded": fwd} if fwd else {}
    return admit_hbone(cfg, POD, admission.pod_workload(cfg, POD, "cluster.local"), peer, authority, headers,
                       tls_peer)


def test_without_policy_a_tunnel_to_this_pod_is_admitted_with_the_forwarded_client_ip() -> None:
    a = hbone(config([ECHO, CLIENT]))
    assert (a.allowed, a.status, a.src_ip, a.dst_port) == (True, 200, "10.210.1.11", 8080)
    assert a.src_workload.name == "client"


def test_an_allow_policy_admits_only_its_principal_on_its_port() -> None:
    cfg = config([ECHO, CLIENT, OTHER], auths=[allow_client_on_8080()])
    assert hbone(cfg).allowed
    a = hbone(cfg, peer=SA_OTHER, fwd="for=10.210.1.12", tls_peer="10.210.1.12")
    assert (a.allowed, a.status) == (False, 403)
    assert "demo/allow-client" in a.reason
    a = hbone(cfg, authority="10.210.1.10:9090")
    assert (a.allowed, a.status) == (False, 403), "the ALLOW is for port 8080 only"


def test_a_deny_wins_over_an_allow_and_names_the_policy() -> None:
    cfg = config([ECHO, CLIENT], auths=[allow_client_on_8080(), deny()])
    a = hbone(cfg)
    assert (a.allowed, a.status, a.policy) == (False, 403, "demo/deny-client")


def test_an_authority_for_another_pod_is_refused() -> None:
    a = hbone(config([ECHO, CLIENT]), authority="10.210.1.99:8080")
    assert (a.allowed, a.status) == (False, 400)
    assert "is not pod demo/echo-v1 (10.210.1.10)" in a.reason


@pytest.mark.parametrize("authority", ["echo:8080", "10.210.1.10", "10.210.1.10:0"])
def test_a_malformed_authority_is_refused(authority: str) -> None:
    a = hbone(config([ECHO]), authority=authority)
    assert (a.allowed, a.status) == (False, 400) and authority in a.reason


def test_a_forwarded_address_from_a_peer_that_is_no_waypoint_is_ignored() -> None:
    """client2 (sa other) claims to forward for client's IP: only a waypoint may speak for others,
    so the source is client2's own address, and client's identity is not borrowed."""
    a = hbone(config([ECHO, CLIENT, OTHER]), peer=SA_OTHER, fwd="for=10.210.1.11", tls_peer="10.210.1.12")
    assert (a.allowed, a.src_ip, a.src_workload.name) == (True, "10.210.1.12", "client2")


def test_a_mesh_certificate_used_from_another_mesh_pods_address_is_refused() -> None:
    a = hbone(config([ECHO, CLIENT, OTHER]), peer=SA_OTHER, fwd=None, tls_peer="10.210.1.11")
    assert (a.allowed, a.status) == (False, 401)
    assert "10.210.1.11 belongs to spiffe://cluster.local/ns/demo/sa/client" in a.reason


def test_without_forwarded_the_tls_peer_address_is_the_source() -> None:
    a = hbone(config([ECHO, CLIENT]), fwd=None)
    assert (a.allowed, a.src_ip) == (True, "10.210.1.11")


def test_a_policy_on_ip_blocks_sees_the_forwarded_address() -> None:
    block = Authorization(name="deny-net", namespace="demo", action="DENY",
                          rules=[Rule(clauses=[[Match(ip_blocks=["10.210.1.11/32"])]])])
    cfg = config([ECHO, CLIENT], auths=[block])
    assert hbone(cfg).policy == "demo/deny-net"


def test_plaintext_is_allowed_by_default_and_refused_under_strict_naming_the_peer_authentication() -> None:
    assert admit_plaintext(config([ECHO]), POD, ECHO, "10.210.2.12", 8080).allowed
    strict = PeerAuthn(name="strict", namespace="demo", mode="STRICT")
    a = admit_plaintext(config([ECHO], pas=[strict]), POD, ECHO, "10.210.2.12", 8080)
    assert (a.allowed, a.policy) == (False, "demo/strict")
    assert "PeerAuthentication demo/strict requires mTLS (STRICT)" in a.reason


def test_a_port_level_permissive_overrides_strict_for_that_port_only() -> None:
    strict = PeerAuthn(name="strict", namespace="demo", mode="STRICT", selector={"app": "echo"},
                       port_modes={9090: "PERMISSIVE"})
    cfg = config([ECHO], pas=[strict])
    assert admit_plaintext(cfg, POD, ECHO, "10.210.2.12", 9090).allowed
    assert not admit_plaintext(cfg, POD, ECHO, "10.210.2.12", 8080).allowed


def test_plaintext_never_matches_a_principal_rule() -> None:
    cfg = config([ECHO], auths=[allow_client_on_8080()])
    a = admit_plaintext(cfg, POD, ECHO, "10.210.1.11", 8080)
    assert (a.allowed, a.status) == (False, 403)


def test_l7_only_allow_without_waypoint_fails_safe_and_says_why() -> None:
    l7 = Authorization(name="get-only", namespace="demo", action="ALLOW", has_l7=True,
                       rules=[Rule(clauses=[[Match(principals=["cluster.local/ns/demo/sa/client"])]], has_l7=True)])
    a = hbone(config([ECHO, CLIENT], auths=[l7]))
    assert (a.allowed, a.policy) == (False, "demo/get-only")
    assert "ztunnel cannot evaluate" in a.reason and "targetRefs" in a.reason


def test_a_pod_unknown_to_the_config_still_gets_its_namespace_policy() -> None:
    cfg = config([CLIENT], auths=[deny("deny-all", principals=("*",))])
    dest = admission.pod_workload(cfg, POD, "cluster.local")
    assert (dest.namespace, dest.identity) == ("demo", "spiffe://cluster.local/ns/demo/sa/echo")
    assert hbone(cfg).policy == "demo/deny-all"


@pytest.mark.parametrize("value, want", [
    ("for=10.1.2.3", "10.1.2.3"), ('for="[fd00::1]"', "fd00::1"), ("for=10.1.2.3:4711;proto=https", "10.1.2.3"),
    ("proto=https;For=10.1.2.3, for=10.9.9.9", "10.1.2.3"), ("proto=https", None), (None, None)])
def test_forwarded_for(value: str | None, want: str | None) -> None:
    assert forwarded_for(value) == want


def test_a_forwarded_for_that_is_no_address_is_refused() -> None:
    with pytest.raises(ValueError, match="_hidden"):
        forwarded_for("for=_hidden")
    assert hbone(config([ECHO]), fwd="for=unknown").status == 400


# --- trust domains ----------------------------------------------------------------------------------------

EVIL = "spiffe://evil.local/ns/demo/sa/client"
ALLOW_DEMO = Authorization(name="allow-demo", namespace="demo", action="ALLOW",
                           rules=[Rule(clauses=[[Match(namespaces=["demo"])]])])
ALLOW_CLIENT_PRINCIPAL = Authorization(name="allow-client", namespace="demo", action="ALLOW",
                                       rules=[Rule(clauses=[[Match(principals=["cluster.local/ns/demo/sa/client"])]])])


def test_a_peer_from_another_trust_domain_is_refused_before_policy() -> None:
    cfg = config([ECHO], auths=[ALLOW_DEMO], mesh=MeshSettings("cluster.local"))
    a = hbone(cfg, peer=EVIL, fwd=None, tls_peer="10.210.9.9")
    assert (a.allowed, a.status) == (False, 401)
    assert a.reason == "peer spiffe://evil.local/ns/demo/sa/client is in trust domain 'evil.local', not the mesh's 'cluster.local'"
    assert hbone(cfg, fwd=None).allowed, "the control: the same policy admits demo/client of cluster.local"


def test_without_mesh_settings_ztunnels_own_trust_domain_is_the_only_one() -> None:
    cfg = config([ECHO])          # no MeshSettings yet (cache from an older controller, or not synced)
    assert not hbone(cfg, peer=EVIL, fwd=None, tls_peer="10.210.9.9").allowed
    cfg.trust_domain = "evil.local"
    assert hbone(cfg, peer=EVIL, fwd=None, tls_peer="10.210.9.9").allowed


def test_an_alias_is_accepted_and_matches_namespaces_and_principals() -> None:
    mesh = MeshSettings("cluster.local", ["evil.local"])
    for auth in (ALLOW_DEMO, ALLOW_CLIENT_PRINCIPAL):
        a = hbone(config([ECHO], auths=[auth], mesh=mesh), peer=EVIL, fwd=None, tls_peer="10.210.9.9")
        assert (a.allowed, a.policy) == (True, auth.resource_name), a.reason
    a = hbone(config([ECHO], auths=[ALLOW_CLIENT_PRINCIPAL], mesh=mesh), peer="spiffe://evil.local/ns/demo/sa/x",
              fwd=None, tls_peer="10.210.9.9")
    assert (a.allowed, a.status) == (False, 403), "the alias widens the trust domain, not the service account"


# --- Forwarded: only the destination's waypoint may set the source address ------------------------------

WP = wl("waypoint-abc", "10.210.1.50", sa="waypoint", labels={"gateway.networking.k8s.io/gateway-name": "waypoint"})
SA_WP = "spiffe://cluster.local/ns/demo/sa/waypoint"
BEHIND = wl("echo-v1", "10.210.1.10", sa="echo", labels={"app": "echo"})
BEHIND.waypoint = "demo/waypoint"
ONLY_CLIENT_NET = Authorization(name="only-client-net", namespace="demo", action="ALLOW",
                                rules=[Rule(clauses=[[Match(ip_blocks=["10.210.1.11/32", "127.0.0.0/8"])]])])


def wp_hbone(cfg, peer: str, fwd: str, tls_peer: str) -> admission.Admission:
    return admit_hbone(cfg, POD, BEHIND, peer, "10.210.1.10:8080", {"forwarded": fwd}, tls_peer)


def test_the_destinations_waypoint_may_forward_a_client_address() -> None:
    cfg = config([BEHIND, CLIENT, WP], auths=[ONLY_CLIENT_NET])
    a = wp_hbone(cfg, SA_WP, "for=10.210.1.11", "10.210.1.50")
    assert (a.allowed, a.src_ip) == (True, "10.210.1.11")


def test_forwarded_from_anyone_else_is_ignored_for_policy_and_for_the_app() -> None:
    cfg = config([BEHIND, CLIENT, OTHER, WP], auths=[ONLY_CLIENT_NET])
    for fwd in ("for=10.210.1.11", "for=127.0.0.1"):
        a = wp_hbone(cfg, SA_OTHER, fwd, "10.210.1.12")
        assert (a.allowed, a.status, a.src_ip) == (False, 403, "10.210.1.12"), fwd
    # A waypoint identity that fronts another destination is no waypoint of this one.
    other_wp = wl("waypoint-xyz", "10.210.1.51", sa="waypoint2", labels={"gateway.networking.k8s.io/gateway-name": "w2"})
    a = wp_hbone(config([BEHIND, CLIENT, other_wp], auths=[ONLY_CLIENT_NET]),
                 "spiffe://cluster.local/ns/demo/sa/waypoint2", "for=10.210.1.11", "10.210.1.51")
    assert (a.allowed, a.src_ip) == (False, "10.210.1.51")


def test_a_services_waypoint_counts_too() -> None:
    from tests.unit.ztunnel.meshcfg import svc
    dest = wl("echo-v1", "10.210.1.10", sa="echo", labels={"app": "echo"}, services={"demo/echo": [80]})
    cfg = config([dest, CLIENT, WP], services=[svc("echo", "10.96.0.10", [dest], waypoint="demo/waypoint")],
                 auths=[ONLY_CLIENT_NET])
    a = admit_hbone(cfg, POD, dest, SA_WP, "10.210.1.10:8080", {"forwarded": "for=10.210.1.11"}, "10.210.1.50")
    assert (a.allowed, a.src_ip) == (True, "10.210.1.11")


@pytest.mark.parametrize("fwd, why", [
    ("for=127.0.0.1", "a loopback address"), ('for="[::1]"', "a loopback address"),
    ('for="[::ffff:127.0.0.1]"', "a loopback address"), ("for=0.0.0.0", "the unspecified address"),
    ("for=169.254.1.1", "a link-local address"), ("for=224.0.0.1", "a multicast address"),
    ("for=10.210.1.1", "the node's address")])
def test_even_a_waypoint_may_not_claim_loopback_unspecified_or_the_node(fwd: str, why: str) -> None:
    cfg = config([BEHIND, CLIENT, WP], auths=[ONLY_CLIENT_NET])
    pod = PodInfo(uid=ECHO.uid, name="echo-v1", namespace="demo", ip="10.210.1.10", node="node1",
                  service_account="echo", labels={"app": "echo"}, node_ip="10.210.1.1")
    a = admit_hbone(cfg, pod, BEHIND, SA_WP, "10.210.1.10:8080", {"forwarded": fwd}, "10.210.1.50")
    assert (a.allowed, a.status) == (False, 400)
    assert why in a.reason


def test_a_hairpin_through_the_waypoint_keeps_the_pods_own_address() -> None:
    """A pod calling its own Service, which the waypoint balanced back to it: the source is the
    destination itself (the waypoint verified it as its TLS peer), so it is admitted as such."""
    cfg = config([BEHIND, CLIENT, WP], auths=[ALLOW_NET])
    pod = PodInfo(uid=ECHO.uid, name="echo-v1", namespace="demo", ip="10.210.1.10", node="node1",
                  service_account="echo", labels={"app": "echo"}, node_ip="10.210.1.1")
    a = admit_hbone(cfg, pod, BEHIND, SA_WP, "10.210.1.10:8080", {"forwarded": "for=10.210.1.10"}, "10.210.1.50")
    assert (a.allowed, a.src_ip, a.src_workload) == (True, "10.210.1.10", BEHIND)
    # from anyone but the waypoint the header is ignored: the TLS peer's address stands (control)
    b = admit_hbone(cfg, pod, BEHIND, SA_CLIENT, "10.210.1.10:8080", {"forwarded": "for=10.210.1.10"}, "10.210.1.11")
    assert b.src_ip == "10.210.1.11"


# --- plaintext from a mesh workload's address ---------------------------------------------------------------

ALLOW_NET = Authorization(name="allow-net", namespace="demo", action="ALLOW",
                          rules=[Rule(clauses=[[Match(ip_blocks=["10.210.0.0/16"])]])])


def test_plaintext_from_a_mesh_workloads_address_is_refused_as_spoofed() -> None:
    legacy = wl("legacy", "10.210.2.20", ns="legacy", enrolled=False)
    cfg = config([ECHO, CLIENT, legacy], auths=[ALLOW_NET])
    a = admit_plaintext(cfg, POD, ECHO, "10.210.1.11", 8080)
    assert (a.allowed, a.status) == (False, 401)
    assert "the address of mesh workload demo/client" in a.reason and "spoofed" in a.reason
    # The control: the same ipBlocks ALLOW admits a plaintext client that is no mesh workload.
    assert admit_plaintext(cfg, POD, ECHO, "10.210.2.20", 8080).allowed
    assert admit_plaintext(cfg, POD, ECHO, "10.210.3.3", 8080).allowed     # unknown to the config


def test_plaintext_a_mesh_pod_excludes_from_capture_is_admitted_but_its_address_proves_nothing() -> None:
    ex = wl("excluded", "10.210.1.13")
    ex.annotations = {"ambit.io/exclude-outbound-ports": "8080, 5432"}
    a = admit_plaintext(config([ECHO, ex]), POD, ECHO, "10.210.1.13", 8080)
    assert a.allowed, "no policy: the excluded port works as the pod asked"
    assert not admit_plaintext(config([ECHO, ex]), POD, ECHO, "10.210.1.13", 9090).allowed, "not excluded: spoofed"
    a = admit_plaintext(config([ECHO, ex], auths=[ALLOW_NET]), POD, ECHO, "10.210.1.13", 8080)
    assert (a.allowed, a.status) == (False, 403), "ipBlocks cannot prove an ALLOW for an address anyone may claim"
    deny_net = Authorization(name="deny-not-net", namespace="demo", action="DENY",
                             rules=[Rule(clauses=[[Match(not_ip_blocks=["10.210.0.0/16"])]])])
    a = admit_plaintext(config([ECHO, ex], auths=[deny_net]), POD, ECHO, "10.210.1.13", 8080)
    assert (a.allowed, a.policy) == (False, "demo/deny-not-net"), "a DENY on addresses applies: deny more, never less"
    ex.annotations = {"ambit.io/exclude-outbound-ip-ranges": "10.210.1.0/24"}
    assert admit_plaintext(config([ECHO, ex]), POD, ECHO, "10.210.1.13", 8080).allowed


# --- waypoint enforcement -------------------------------------------------------------------------

def _waypointed():
    from tests.unit.ztunnel.meshcfg import svc
    echo = wl("echo-v1", "10.210.1.10", sa="echo", labels={"app": "echo"}, services={"demo/echo": [80]})
    wp = wl("wp-0", "10.210.1.200", sa="wp", labels={"gateway.networking.k8s.io/gateway-name": "wp"})
    return config([echo, CLIENT, wp], [svc("echo", "10.96.0.10", [echo], waypoint="demo/wp")])


def test_a_destination_bound_to_a_waypoint_refuses_a_direct_tunnel_as_a_bypass() -> None:
    a = hbone(_waypointed(), fwd=None)
    assert (a.allowed, a.status) == (False, 403) and a.reason.startswith("bypassed the waypoint")
    assert "demo/wp" in a.reason and SA_CLIENT in a.reason


def test_the_waypoint_itself_is_admitted_and_its_forwarded_source_honoured() -> None:
    a = hbone(_waypointed(), peer="spiffe://cluster.local/ns/demo/sa/wp", tls_peer="10.210.1.200")
    assert (a.allowed, a.status, a.src_ip) == (True, 200, "10.210.1.11")


def test_a_port_no_waypointed_service_exposes_stays_directly_reachable() -> None:
    a = hbone(_waypointed(), authority="10.210.1.10:9090", fwd=None)
    assert a.allowed, a.reason


def test_a_forwarded_address_is_canonical_and_a_bad_one_refused_each_time() -> None:
    """forwarded_for shares parse_addr's cached canonical_ip: the same answers on every call."""
    for _ in range(2):
        assert forwarded_for('for="[FD00:0::7]:1234"') == "fd00::7"
        with pytest.raises(ValueError, match="not an IP address"):
            forwarded_for("for=10.0.0.300")
