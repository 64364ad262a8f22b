"""JSON Web Keys: what of a key a verifier reads.

Shared by the controller (which checks and inlines key sets) and the waypoint (which verifies
with them): both build keys with PyJWT, which makes a private key of a JWK that carries `d`.
"""

from __future__ import annotations

from typing import Any

# JWK members of private keys (RFC 7518 §6.2.2 EC and RFC 8037 OKP `d`; §6.3.2 RSA). A symmetric
# (`oct`) key has only its `k`: Envoy verifies HS256 with one, so it stays.
PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth"})


def public_members(key: dict[str, Any]) -> dict[str, Any]:
    """`key` without a private key's members. Envoy reads only the public ones; PyJWT builds a
    private key from a JWK with `d`, recovering an RSA key's primes from n, e and d, which took
    seconds of CPU for a crafted modulus (found by test_jwks_fuzz): in the controller's validation
    and key-set refresh, and in every waypoint applying the key set."""
    if PRIVATE_MEMBERS.isdisjoint(key):
        return key
    return {k: v for k, v in key.items() if k not in PRIVATE_MEMBERS}
