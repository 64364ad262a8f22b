"""istiod's webhook warnings (istio/istio `pkg/config/validation`: `WrapWarning`, `Warningf`) on
VirtualServices, DestinationRules and RequestAuthentications, repeated by `ambit apply` and the controller as advisories;
those on ServiceEntries, policies and Telemetries are in `istio_entry_warnings` and `istio_policy_warnings`.

istiod accepts these values and warns: a deprecated field, a legacy spelling, a value most clients
do not send. Ambit accepts and applies them too, so it says what istiod says, where the user looks
(controller.waypoints.advisories wraps each (path, reason) as a NotEnforced advisory).
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from controller.kinds.hostnames import is_ip
from controller.waypoints.istio_entry_warnings import entry_warnings
from controller.waypoints.istio_policy_warnings import authz_warnings, selector_warnings, telemetry_warnings

Obj = dict[str, Any]
LARGE_BODY = 100 * 1024      # istiod: "large direct_responses may impact control plane performance"


def _body_size(body: Obj) -> int:
    if isinstance(body.get("string"), str):
        return len(body["string"].encode())
    try:
        return len(base64.b64decode(body.get("bytes") or "", validate=True))
    except (binascii.Error, ValueError, TypeError):
        return 0


def _legacy_gateway(name: Any, where: str) -> list[tuple[str, str]]:
    if not isinstance(name, str) or "/" in name or "." not in name:
        return []
    gw, _, rest = name.partition(".")
    return [(where, f'using legacy gatewayName format "{name}"; prefer the <namespace>/<name> format: '
                    f'"{rest.partition(".")[0]}/{gw}" (istiod warns too)')]


def vs_warnings(spec: Obj) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for i, g in enumerate(spec.get("gateways") or []):
        out += _legacy_gateway(g, f"spec.gateways[{i}]")
    for i, h in enumerate(spec.get("http") or []):
        if h.get("mirrorPercent") is not None:
            out.append((f"spec.http[{i}].mirrorPercent", 'using deprecated setting "mirrorPercent", use '
                                                         '"mirrorPercentage" instead (istiod warns too)'))
        body = (h.get("directResponse") or {}).get("body")
        if isinstance(body, dict) and _body_size(body) > LARGE_BODY:
            out.append((f"spec.http[{i}].directResponse.body", "large direct_responses may impact control plane "
                        "performance (over 100 KB: it is in every update the waypoints get; istiod warns too)"))
        for j, m in enumerate(h.get("match") or []):
            for k, g in enumerate(m.get("gateways") or []):
                out += _legacy_gateway(g, f"spec.http[{i}].match[{j}].gateways[{k}]")
    for i, t in enumerate(spec.get("tls") or []):
        for j, m in enumerate(t.get("match") or []):
            for k, sni in enumerate(m.get("sniHosts") or []):
                if is_ip(sni):
                    out.append((f"spec.tls[{i}].match[{j}].sniHosts[{k}]", f'using an IP address ("{sni}") goes '
                                "against SNI spec and most clients do not support this (istiod warns too)"))
    return out


def _policy_warnings(p: Obj | None, base: str) -> list[tuple[str, str]]:
    p = p or {}
    out: list[tuple[str, str]] = []
    if (p.get("outlierDetection") or {}).get("consecutiveErrors"):
        out.append((f"{base}.outlierDetection.consecutiveErrors", "outlier detection consecutive errors is deprecated, "
                    "use consecutiveGatewayErrors or consecutive5xxErrors instead (istiod warns too)"))
    if ((p.get("loadBalancer") or {}).get("consistentHash") or {}).get("minimumRingSize"):
        out.append((f"{base}.loadBalancer.consistentHash.minimumRingSize", "consistent hash MinimumRingSize is "
                    "deprecated, use ConsistentHashLB's RingHash configuration instead (istiod warns too)"))
    for i, pl in enumerate(p.get("portLevelSettings") or []):
        out += _policy_warnings(pl, f"{base}.portLevelSettings[{i}]")
    return out


def dr_warnings(spec: Obj) -> list[tuple[str, str]]:
    out = _policy_warnings(spec.get("trafficPolicy"), "spec.trafficPolicy")
    for i, s in enumerate(spec.get("subsets") or []):
        out += _policy_warnings(s.get("trafficPolicy"), f"spec.subsets[{i}].trafficPolicy")
    return out


def _private(key: Any) -> bool:
    """A JWK with private material: "d" (RSA, EC, OKP private keys) or a symmetric ("oct") key."""
    return isinstance(key, dict) and ("d" in key or key.get("kty") == "oct")


def ra_warnings(spec: Obj) -> list[tuple[str, str]]:
    """istiod's warnPrivateJwksKeys: an inline JWKS should hold public keys only (the private part
    is never used to verify, and is now in the cluster's configuration for anyone who reads it)."""
    out: list[tuple[str, str]] = []
    for i, rule in enumerate(spec.get("jwtRules") or []):
        try:
            keys = json.loads(rule.get("jwks") or "{}").get("keys") or []
        except (ValueError, AttributeError):
            continue
        for k, key in enumerate(keys if isinstance(keys, list) else []):
            if _private(key):
                out.append((f"spec.jwtRules[{i}].jwks", f"jwks key at index {k} contains private key material; only "
                            "public keys are used for verification (istiod warns too)"))
    return out


_BY_KIND = {"VirtualService": vs_warnings, "DestinationRule": dr_warnings,
            "RequestAuthentication": lambda spec: selector_warnings(spec) + ra_warnings(spec),
            "PeerAuthentication": selector_warnings,
            "Telemetry": telemetry_warnings}


def istio_warnings(o: Obj, autoallocate: bool = True) -> list[tuple[str, str]]:
    """istiod's warnings on a valid object of these kinds, as (field path, reason). `autoallocate`:
    whether the controller auto-allocates ServiceEntry addresses (istiod's PILOT_ENABLE_IP_AUTOALLOCATE)."""
    if o.get("kind") == "ServiceEntry":
        return entry_warnings(o, autoallocate)
    if o.get("kind") == "AuthorizationPolicy":
        return authz_warnings(o)
    warn = _BY_KIND.get(o.get("kind") or "")
    return warn(o.get("spec") or {}) if warn else []
