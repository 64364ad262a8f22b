"""L7 authorization for the waypoint, sans-IO: select the AuthorizationPolicies bound to this
waypoint (`policy_set`, once per config update) and decide each request (`authorize`).

Modules: `matching` (Istio's attribute matching), `trustdomains` (principal expansion over trust
domain aliases), `evaluate` (selection and the DENY/ALLOW/AUDIT decision)."""

from waypoint.authz.evaluate import PolicySet, Verdict, Waypoint, authorize, evaluate, policy_set
from waypoint.authz.trustdomains import TrustDomains

__all__ = ["PolicySet", "TrustDomains", "Verdict", "Waypoint", "authorize", "evaluate", "policy_set"]
