"""Rules of istiod's validating webhook for a DestinationRule (istio/istio
`pkg/config/validation/validation.go`: validateTrafficPolicy, validateConnectionPool,
validateOutlierDetection, validateLoadBalancer, validateLocalities), which Istio's CRDs do not carry.

Without istiod in front, each of these was accepted and then did nothing, or something else: an
empty traffic policy configured nothing, `useClientProtocol` beside `h2UpgradePolicy: UPGRADE`
had one of them silently lose, a warmup `aggression` of 0 was silently applied as 1.0 (the
waypoint's slow start, as Envoy, reads an invalid one so), two overlapping `distribute` localities had one rule silently shadow the other.
"""

from __future__ import annotations

from typing import Any

from controller.kinds.hostnames import host_reason, is_ip
from controller.kinds.schema import Errors, join

# The fields of a TrafficPolicy istiod counts ("traffic policy must have at least one field"); a
# port-level one has the first four only.
POLICY_FIELDS = ("outlierDetection", "connectionPool", "loadBalancer", "tls", "portLevelSettings", "tunnel",
                 "proxyProtocol", "retryBudget")
PORT_POLICY_FIELDS = ("outlierDetection", "connectionPool", "loadBalancer", "tls")


def check_traffic_policy(value: dict[str, Any], path: str, errs: Errors) -> None:
    """istiod's validateTrafficPolicy: at least one field (an empty policy configures nothing, so
    it was surely not what was meant), and not both `tunnel` and `proxyProtocol`."""
    if not any(value.get(f) is not None for f in POLICY_FIELDS):
        errs.append((path, "traffic policy must have at least one field (Istio refuses an empty one too)"))
    if value.get("tunnel") is not None and value.get("proxyProtocol") is not None:
        errs.append((path, "tunnel and proxyProtocol must not be set together (Istio refuses this too)"))


def check_port_policy(value: dict[str, Any], path: str, errs: Errors) -> None:
    """istiod's validatePortTrafficPolicies: a port-level policy sets more than its port."""
    if not any(value.get(f) is not None for f in PORT_POLICY_FIELDS):
        errs.append((path, "port traffic policy must have at least one field besides port (Istio refuses this too): "
                     "as written it configures nothing"))


def check_connection_pool(value: dict[str, Any], path: str, errs: Errors) -> None:
    """istiod's validateConnectionPool: `http` or `tcp`; `useClientProtocol` not with
    `h2UpgradePolicy: UPGRADE` (one of them would silently lose); an `http2KeepAlive` names its
    interval (PINGs are sent at that interval only)."""
    if value.get("http") is None and value.get("tcp") is None:
        errs.append((path, "connection pool must have at least one field (Istio refuses an empty one too)"))
    http = value.get("http")
    if not isinstance(http, dict):
        return
    if http.get("useClientProtocol") is True and http.get("h2UpgradePolicy") == "UPGRADE":
        errs.append((join(path, "http.useClientProtocol"), "use client protocol must not be true when H2UpgradePolicy "
                     "is UPGRADE (Istio refuses this too)"))
    ka = http.get("http2KeepAlive")
    if isinstance(ka, dict) and ka.get("interval") is None:
        # istiod wants a timeout too; Ambit takes an interval alone with a timeout of 20 s (Envoy's
        # requirement, gRPC's default: docs/resilience/connection-pools.md), as it always has
        errs.append((join(path, "http.http2KeepAlive.interval"), "http2 keepalive interval is required (Istio refuses "
                     "this too): without it no PING is ever sent, so the timeout never applies"))


def check_outlier(value: dict[str, Any], path: str, errs: Errors) -> None:
    """istiod's validateOutlierDetection: local-origin failures are counted apart only with
    `splitExternalLocalOriginErrors: true`; without it the threshold would never apply."""
    if value.get("splitExternalLocalOriginErrors") is not True and (value.get("consecutiveLocalOriginFailures") or 0) > 0:
        errs.append((join(path, "consecutiveLocalOriginFailures"), "outlier detection consecutive local origin failures "
                     "is specified, but split external local origin errors is set to false (Istio refuses this too): "
                     "set splitExternalLocalOriginErrors: true"))


def check_cookie_attributes(value: dict[str, Any], path: str, errs: Errors) -> None:
    """istiod's validateLoadBalancer: a cookie attribute is named once (Set-Cookie would carry
    both, and a browser keeps one of them)."""
    seen: set[str] = set()
    for i, a in enumerate(value.get("attributes") or []):
        name = a.get("name") if isinstance(a, dict) else None
        if isinstance(name, str) and name:
            if name in seen:
                errs.append((f"{join(path, 'attributes')}[{i}].name", f"duplicate cookie attribute name: {name} (Istio "
                             "refuses it too)"))
            seen.add(name)


def check_warmup(value: dict[str, Any], path: str, errs: Errors) -> None:
    """istiod's validateLoadBalancer: a warmup `aggression` above 0 (the weight curve raises time
    to 1/aggression: 0 has no meaning, and the waypoint applied it as 1.0 without a word)."""
    ag = value.get("aggression")
    if isinstance(ag, (int, float)) and not isinstance(ag, bool) and ag <= 0:
        errs.append((join(path, "aggression"), f"aggression should be greater than 0 (Istio refuses it too), got {ag}"))


def tunnel_protocol_reason(text: str) -> str | None:
    if text not in ("", "CONNECT", "POST"):
        return f'tunnel protocol must be "CONNECT" or "POST" (Istio refuses it too), got "{text}"'
    return None


def tunnel_host_reason(text: str) -> str | None:
    """istiod's validateTunnelSettings: a DNS name or an IP address (no wildcard)."""
    if is_ip(text):
        return None
    if "*" in text or host_reason(text):
        return f'tunnel target host must be valid FQDN or IP address (Istio refuses it too), got "{text}"'
    return None


def _overlap(localities: list[str]) -> str | None:
    """istiod's validateLocalities: no two localities of one list overlap (`a` and `a/b`, `a/*`
    and `a/b/c`, or one twice): the rule for the wider one would shadow the other."""
    seen: list[list[str]] = []
    for loc in localities:
        if not isinstance(loc, str) or not loc:
            continue
        parts = [p for p in loc.split("/") if p != "*"] if loc != "*" else []
        for other in seen:
            short, long_ = (parts, other) if len(parts) <= len(other) else (other, parts)
            if long_[:len(short)] == short:
                return f"locality {loc} overlap with previous specified ones (Istio refuses it too)"
        seen.append(parts)
    return None


def check_locality_overlap(value: dict[str, Any], path: str, errs: Errors) -> None:
    distribute = [d for d in value.get("distribute") or [] if isinstance(d, dict)]
    why = _overlap([d.get("from") for d in distribute])
    if why:
        errs.append((join(path, "distribute"), why))
    for i, d in enumerate(distribute):
        why = _overlap(list(d.get("to") or {})) if isinstance(d.get("to"), dict) else None
        if why:
            errs.append((f"{join(path, 'distribute')}[{i}].to", why))
