"""L7 authorization for the waypoint, sans-IO: select the AuthorizationPolicies bound to this
waypoint (`policy_set`, once per config update) and decide each request (`authorize`).

Modules: `matching` (Istio's attribute matching), `ambit.trustdomain` (principal expansion over trust
domain aliases), `evaluate` (selection and the DENY/ALLOW/AUDIT decision)."""

from ambit.trustdomain import TrustDomains
from waypoint.authz.evaluate import PolicySet, Verdict, Waypoint, authorize, evaluate, policy_set

__all__ = ["PolicySet", "TrustDomains", "Verdict", "Waypoint", "authorize", "evaluate", "policy_set"]
