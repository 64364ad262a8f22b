"""End-user authentication (RequestAuthentication) for the waypoint's L7 engine, sans-IO.

Modules: `jwt` (token extraction and verification with PyJWT, Envoy jwt_authn's semantics),
`policy` (which RequestAuthentications apply at this waypoint, compiled once per config update).
The engine calls `AuthnSet.authenticate` before authorization; the `EndUser` it yields is what
AuthorizationPolicy's `requestPrincipals` and `request.auth.*` conditions read.
"""

from waypoint.authn.jwt import Outcome, authenticate
from waypoint.authn.policy import AuthnSet, authn_set

__all__ = ["AuthnSet", "Outcome", "authenticate", "authn_set"]
