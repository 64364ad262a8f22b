"""The waypoint's L4 view of its policies, for tunnels that carry no HTTP (the opaque path).

A TCP tunnel has a source identity, namespace and address and a destination port, but no method,
path, host or header. Rules that need those are treated as Istio treats them for TCP traffic:

- in an ALLOW policy, a rule that names an HTTP attribute anywhere (in any of its `from`, `to` or
  `when` entries) is dropped whole, so it admits no TCP tunnel: an ALLOW for `GET /api/*` does not
  open the port to raw TCP, and neither does `to: [{methods: [GET]}, {ports: ["9000"]}]` open port
  9000 (Istio's builder skips the whole rule on a TCP filter chain when one of its permissions or
  principals is HTTP only: pilot/pkg/security/authz/model/model.go `Generate`, testdata
  action-allow-HTTP-for-TCP-filter);
- in a DENY (or AUDIT) policy, the HTTP attributes are removed and the rest still applies: a DENY
  for `POST` from some principal denies that principal's TCP tunnels outright (more restrictive,
  fail safe), as ztunnel does with L7 rules it cannot evaluate.

CUSTOM policies (external authorization) get the same L4 view as a DENY's (Istio's builder compiles
a CUSTOM policy's rules as DENY rules, for TCP too), kept apart in `l4_custom_set`: a tunnel it
matches is checked by the policy's gRPC provider, or refused (an HTTP provider, which cannot check
a connection; a bad provider), before the DENY and ALLOW policies apply, as Istio installs the
network ext_authz filter before the RBAC filters (waypoint/authz/extauthz_tcp.py).

`l4_policy_set(pset)` and `l4_custom_set(custom)` derive the views once per config update; `authorize` then runs on it with a
head that has an empty method and path.
"""

from __future__ import annotations

import dataclasses

from ambit.model import Authorization, Match, Rule
from waypoint.authz.custom import CustomSet
from waypoint.authz.evaluate import ALLOW, PolicySet

HTTP_FIELDS = ("methods", "not_methods", "paths", "not_paths", "hosts", "not_hosts", "request_headers",
               "not_request_headers", "request_principals", "not_request_principals", "auth", "not_auth")


def _http(m: Match) -> bool:
    return any(getattr(m, f) for f in HTTP_FIELDS)


def _strip(m: Match) -> Match:
    return dataclasses.replace(m, **{f: type(getattr(m, f))() for f in HTTP_FIELDS})


def _rule(rule: Rule, allow: bool) -> Rule:
    """The rule's L4 view. An ALLOW rule that needs HTTP anywhere becomes one that matches nothing
    (a clause with no alternative), kept in its place so `spec.rules[i]` still names it."""
    if allow:
        if any(_http(m) for clause in rule.clauses for m in clause):
            return Rule(clauses=[[]], has_l7=rule.has_l7)
        return rule
    return Rule(clauses=[[_strip(m) for m in clause] for clause in rule.clauses], has_l7=rule.has_l7)


def l4_policy(p: Authorization) -> Authorization:
    return dataclasses.replace(p, http_rules=[_rule(r, p.action == ALLOW) for r in p.http_rules])


def l4_policy_set(pset: PolicySet) -> PolicySet:
    return PolicySet(tuple(l4_policy(p) for p in pset.gateway),
                     {k: tuple(l4_policy(p) for p in v) for k, v in pset.by_service.items()})


def l4_custom_set(custom: CustomSet) -> CustomSet:
    """The CUSTOM policies' L4 views (HTTP attributes removed, as a DENY's), with the same
    providers and Services: `CustomSet.for_request` on a head with no method or path then says
    which policy, and which provider, a tunnel meets."""
    return CustomSet(tuple(l4_policy(p) for p in custom.gateway),
                     {k: tuple(l4_policy(p) for p in ps) for k, ps in custom.by_service.items()},
                     custom.providers, custom.services)
