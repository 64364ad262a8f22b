"""`istio.io/dry-run: "true"` on an AuthorizationPolicy (Istio's authz-dry-run task): evaluated and
reported, never enforced, through the REAL controller translation. The waypoint reports each
dry-run engine's result as Envoy's shadow rules do (DENY: "denied" when a rule matched; ALLOW:
"allowed" when one did), with Istio's rule id; ztunnel is given no dry-run policy to enforce, as in
Istio's ambient mode. istiod's validation is mirrored: a value ParseBool cannot read, an action
other than ALLOW/DENY, or the annotation on another kind is refused.
"""

from __future__ import annotations

from typing import Any

import pytest

from ambit.configclient import NodeInfo
from ambit.model import Authorization, Workload
from controller.configserver.scope import scope
from controller.validation import validate_object
from controller.waypoints.advisories import advisories
from tests.unit.waypoint.support import req
from tests.unit.waypoint.test_authz import WP, down, policies, policy, to_service
from waypoint.authz import authorize, policy_set
from ztunnel import authz as ztunnel_authz

DRY = {"istio.io/dry-run": "true"}
DENY_HEADERS = [{"to": [{"operation": {"paths": ["/headers"]}}]}]


def dry(obj: dict[str, Any], value: str = "true") -> dict[str, Any]:
    obj["metadata"]["annotations"] = {"istio.io/dry-run": value}
    return obj


def decide(ps, path: str):
    return authorize(policy_set(ps, WP), req(path, authority="myapp"), down())


def test_a_dry_run_deny_is_not_enforced_and_reports_the_rule_it_matched() -> None:
    ps = policies(dry(to_service(DENY_HEADERS, "DENY", "deny-path-headers")))
    assert ps[0].dry_run
    reply, v = decide(ps, "/headers")
    assert reply is None and v.allowed
    assert v.dry_run == (("deny", "denied", "ns[default]-policy[deny-path-headers]-rule[0]"),)
    reply, v = decide(ps, "/ip")
    assert reply is None and v.dry_run == (("deny", "allowed", ""),)
    # the same policy without the annotation (or with "false") denies
    for obj in (to_service(DENY_HEADERS, "DENY", "deny-path-headers"),
                dry(to_service(DENY_HEADERS, "DENY", "deny-path-headers"), "false")):
        reply, v = decide(policies(obj), "/headers")
        assert reply is not None and reply.status == 403 and not v.dry_run


def test_a_dry_run_allow_is_not_enforced_and_reports_what_it_would_deny() -> None:
    allow_ip = [{"to": [{"operation": {"paths": ["/ip"]}}]}]
    ps = policies(dry(to_service(allow_ip, "ALLOW", "allow-ip"), "True"))
    reply, v = decide(ps, "/headers")
    assert reply is None and v.allowed and v.dry_run == (("allow", "denied", ""),)
    reply, v = decide(ps, "/ip")
    assert reply is None and v.dry_run == (("allow", "allowed", "ns[default]-policy[allow-ip]-rule[0]"),)


def test_an_enforced_policy_still_decides_beside_a_dry_run_one() -> None:
    ps = policies(dry(to_service(DENY_HEADERS, "DENY", "dry-deny")),
                  to_service([{"to": [{"operation": {"paths": ["/ip"]}}]}], "DENY", "real-deny"))
    reply, v = decide(ps, "/ip")
    assert reply is not None and v.policy == "default/real-deny" and v.dry_run == (("deny", "allowed", ""),)


def test_ztunnel_is_given_no_dry_run_policy_to_enforce() -> None:
    """As written on the task page (a `selector`): a DENY with an HTTP path, which ztunnel would
    apply to every connection (fail safe), is not applied at all in dry-run mode."""
    obj = dry(policy({"selector": {"matchLabels": {"app": "httpbin"}}, "action": "DENY", "rules": DENY_HEADERS},
                     "deny-path-headers"))
    [p] = policies(obj)
    httpbin = Workload(uid="u", name="httpbin", namespace="default", ips=["10.244.1.9"], node="n",
                       service_account="httpbin", identity="spiffe://cluster.local/ns/default/sa/httpbin",
                       labels={"app": "httpbin"})
    conn = ztunnel_authz.ConnInfo("10.244.1.5", "spiffe://cluster.local/ns/default/sa/curl", "10.244.1.9", 8000)
    assert ztunnel_authz.evaluate([p], httpbin, conn, "istio-system").allowed
    p.dry_run = False
    assert not ztunnel_authz.evaluate([p], httpbin, conn, "istio-system").allowed


def test_the_controller_sends_dry_run_policies_to_waypoints_only() -> None:
    """As Istio's control plane: ztunnel gets none (nor is an older one made to NACK the field)."""
    ps = policies(dry(to_service(DENY_HEADERS, "DENY", "dry")),
                  dry(policy({"selector": {"matchLabels": {"app": "httpbin"}}, "action": "DENY",
                              "rules": DENY_HEADERS}, "dry-selector")),
                  policy({"selector": {"matchLabels": {"app": "httpbin"}}, "action": "DENY", "rules": DENY_HEADERS},
                         "enforced"))
    snap = {Authorization.TYPE: ps}
    assert [a.name for a in scope(NodeInfo("agent", "node1"), Authorization.TYPE, snap)] == ["enforced"]
    waypoint = scope(NodeInfo("waypoint", "wp-1", waypoint="default/waypoint"), Authorization.TYPE, snap)
    assert sorted(a.name for a in waypoint) == ["dry", "dry-selector", "enforced"]


def test_a_selector_dry_run_is_said_to_report_nothing_and_not_to_fail_closed() -> None:
    """The task page's policy as written (a `selector`): not enforced, as asked, but reported by
    nobody, which `ambit apply` says instead of ztunnel's "fails closed" (wrong for a dry run)."""
    obj = dry(policy({"selector": {"matchLabels": {"app": "httpbin"}}, "action": "DENY", "rules": DENY_HEADERS},
                     "deny-path-headers"))
    [adv] = [a for a in advisories([obj]) if "istiod warns" not in a.reason]   # (istiod's: only HTTP in a DENY)
    assert adv.path == "metadata.annotations[istio.io/dry-run]" and "reports nothing" in adv.reason, adv
    assert [str(a) for a in advisories([dry(to_service(DENY_HEADERS, "DENY"))])
            if "dry" in a.path] == []


@pytest.mark.parametrize("value", ["1", "t", "T", "TRUE", "true", "True", "0", "f", "F", "FALSE", "false", "False"])
def test_every_value_go_parsebool_reads_is_accepted(value: str) -> None:
    assert validate_object(dry(to_service(DENY_HEADERS, "DENY"), value)) == []


@pytest.mark.parametrize("obj,why", [
    (dry(to_service(DENY_HEADERS, "DENY"), "yes"), 'invalid value "yes"'),
    (dry(to_service(DENY_HEADERS, "AUDIT")), "only supports action ALLOW or DENY, found action AUDIT"),
    (dry({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
          "metadata": {"name": "v", "namespace": "default"},
          "spec": {"hosts": ["myapp"], "http": [{"route": [{"destination": {"host": "myapp"}}]}]}}),
     "unsupported annotation istio.io/dry-run on a VirtualService"),
])
def test_istiods_refusals_of_the_annotation(obj: dict[str, Any], why: str) -> None:
    [err] = validate_object(obj)
    assert err.path == "metadata.annotations[istio.io/dry-run]" and why in err.reason, err


def test_the_annotation_on_a_kind_that_is_not_the_meshs_is_left_alone() -> None:
    """A Pod (or a Gateway API route) carrying it is not refused: istiod validates its own kinds only."""
    for obj in ({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "default"},
                 "spec": {"containers": [{"name": "c", "image": "i"}]}},
                {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                 "metadata": {"name": "r", "namespace": "default"},
                 "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "myapp"}]}}):
        assert [e for e in validate_object(dry(obj, "maybe")) if "dry-run" in e.path] == []
