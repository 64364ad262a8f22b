"""The destination ztunnel's decision on inbound connections (HBONE and plaintext), without sockets."""

from __future__ import annotations

import pytest

from ambit.model import Authorization, Match, PeerAuthn, Rule
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


def test_a_forwarded_address_of_another_identity_is_refused() -> None:
    """client2 (sa other) claims to forward for client's IP: the header is a lie."""
    a = hbone(config([ECHO, CLIENT, OTHER]), peer=SA_OTHER, fwd="for=10.210.1.11", tls_peer="10.210.1.12")
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
    assert "no waypoint" in a.reason


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
