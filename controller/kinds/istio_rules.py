"""Rules of istiod's validating webhook (istio/istio `pkg/config/validation`) for the networking
kinds, which Istio's CRDs do not carry.

Ambit has no istiod in front of it, so a value istiod refuses reached the translation: a route
with both a redirect and a direct response answered with the redirect and dropped the response, a
fault beside a redirect was never injected, a gateway name such as `ns/Bad_Name` or a subset name
such as `v 1` named nothing, and an SNI host outside the VirtualService's hosts made a route that
Istio refuses (Ambit's waypoint routed it; YAML that applies here must apply in Istio). Each is
refused here, at its field, with istiod's reason (its wording kept where it is clear).
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from controller.kinds.common import header_value_reason
from controller.kinds.hostnames import host_reason, host_subset_of, is_ip
from controller.kinds.schema import Errors, join

# istio pkg/config/labels IsDNS1123Label: a DNS label of at most 63 characters, upper case allowed
# (Kubernetes' own label check is lowercase: a Service port or namespace name is stricter there)
_ISTIO_LABEL = re.compile(r"[a-zA-Z0-9](?:[-a-zA-Z0-9]*[a-zA-Z0-9])?")


def check_label(text: str) -> str | None:
    """Why `text` is no DNS-1123 label as istiod checks one (IsDNS1123Label), or None."""
    if len(text) > 63 or not _ISTIO_LABEL.fullmatch(text):
        return f'must be a DNS-1123 label (letters, digits, "-"; at most 63 characters), got "{text}"'
    return None


# istiod's validateHTTPDirectResponse: a body of more than 1 MB is refused (it would sit in every
# waypoint's configuration, and in every update the controller sends them).
MAX_DIRECT_BODY = 1024 * 1024


def subset_name_reason(text: str) -> str | None:
    """istiod's validateSubsetName: a DNS-1123 label. A DestinationRule subset and a route's
    `destination.subset` are compared as written, and Istio refuses any other name on both
    sides, so one valid here is valid there."""
    if text == "":
        return "subset name cannot be empty (Istio refuses it too): leave subset unset for every endpoint"
    why = check_label(text)
    return f"subset name is invalid: {text} (Istio refuses it too): {why}" if why else None


def port_name_reason(text: str) -> str | None:
    """istiod's ValidatePortName (a ServiceEntry's and a Gateway server's port): a DNS-1123 label.
    The name keys an endpoint's `ports` and prefixes the protocol Ambit sniffs."""
    why = check_label(text)
    return f"invalid port name: {text} (Istio refuses it too): {why}" if why else None


def namespace_match_reason(text: str) -> str | None:
    """istiod's validateHTTPRouteMatchRequest on `sourceNamespace`: a namespace name (a DNS-1123
    label); another value names no namespace, so the match could never hold."""
    why = check_label(text)
    return f"sourceNamespace match {text} is invalid (Istio refuses it too): {why}" if why else None


def header_value_reason_istio(text: str) -> str | None:
    """A VirtualService header value, as istiod's ValidateHTTPHeaderValue reads it and more: a `%`
    is Envoy's command-operator syntax (`%HOSTNAME%`, `%%` for a percent sign), which Istio hands
    to Envoy to expand. Ambit's waypoint sends a value as written, so a value with `%` would mean
    something else there than under Istio (and a lone `%` Istio refuses outright)."""
    why = header_value_reason(text)
    if why:
        return why
    if "%" in text:
        return ('a "%" is Envoy\'s command-operator syntax (%VARIABLE%, "%%" for a percent sign), which Ambit\'s '
                "waypoint does not expand: the value would be sent as written, not as Istio sends it (and Istio "
                "refuses an un-escaped %)")
    return None


def redirect_scheme_reason(text: str) -> str | None:
    """istiod's validateHTTPRedirect: the scheme of a Location is http or https (a control
    character is named as such first: it would have ended the Location line)."""
    why = header_value_reason(text)
    if why:
        return why
    if text not in ("http", "https"):
        return f'invalid redirect scheme, must be "http" or "https" (Istio refuses it too), got "{text}"'
    return None


def direct_body_reason(text: str, encoded: bool = False) -> str | None:
    """istiod's validateHTTPDirectResponse: at most 1 MB of body (`encoded`: base64, as
    `body.bytes` is written; its decoded size counts)."""
    size = len(text.encode())
    if encoded:
        try:
            size = len(base64.b64decode(text, validate=True))
        except (binascii.Error, ValueError):
            return None     # the base64 check says so
    if size > MAX_DIRECT_BODY:
        return (f"large direct_responses may impact control plane performance, must be less than 1MB (Istio refuses "
                f"it too), got {size} bytes")
    return None


def check_route_conflicts(value: dict[str, Any], path: str, errs: Errors) -> None:
    """istiod's validateHTTPRouteConflict: a fault is injected into requests that are forwarded,
    so beside a redirect or a direct response (answered by the proxy) it would never apply."""
    if value.get("fault") is None:
        return
    for f, name in (("redirect", "redirect"), ("directResponse", "direct_response")):
        if value.get(f):
            errs.append((join(path, "fault"), f"HTTP route cannot contain both fault and {name} (Istio refuses it "
                         "too): a request answered by the proxy is never forwarded, so no fault is injected"))


def _is_authority(name: Any) -> bool:
    return isinstance(name, str) and name.lower() in ("host", ":authority")


def check_authority_once(value: dict[str, Any], path: str, errs: Errors) -> None:
    """istiod's validateAuthorityRewrite: the authority is rewritten once, by `rewrite.authority`
    or by setting `host` (or `:authority`) on the request; with two, which one won would be a
    guess."""
    rewrite = value.get("rewrite")
    current = rewrite.get("authority") if isinstance(rewrite, dict) else None
    request = ((value.get("headers") or {}).get("request") or {}) if isinstance(value.get("headers"), dict) else {}
    for op in ("set", "add"):
        items = request.get(op) if isinstance(request, dict) else None
        if not isinstance(items, dict):
            continue
        for k, v in items.items():
            if not _is_authority(k):
                continue
            if current:
                errs.append((f"{join(path, f'headers.request.{op}')}[{k}]", f'authority header cannot be set multiple '
                             f'times: have "{current}", attempting to set "{v}" (Istio refuses it too)'))
                return
            current = v


def check_fault(value: dict[str, Any], path: str, errs: Errors) -> None:
    """istiod's validateHTTPFaultInjection: a fault needs a delay or an abort (else it injects
    nothing); a percentage is 0 or in 0.0001..100 (Envoy's resolution: a smaller one is 0).
    istiod also refuses `exponentialDelay`; Ambit applies it as a fixed delay and warns
    (docs/resilience/faults-and-mirroring.md: refusing it would drop such a VirtualService at the
    next controller start)."""
    if value.get("delay") is None and value.get("abort") is None:
        errs.append((path, "HTTP fault injection must have an abort and/or a delay (Istio refuses it too): as "
                     "written it injects nothing"))
    for part in ("delay", "abort"):
        p = value.get(part)
        pct = p.get("percentage") if isinstance(p, dict) else None
        v = pct.get("value") if isinstance(pct, dict) else None
        if isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 0.0001:
            errs.append((join(path, f"{part}.percentage.value"), f"percentage {v} is neither 0.0, nor in range "
                         "[0.0001, 100.0] (Istio refuses it too)"))


def gateway_name_reason(name: str) -> str | None:
    """istiod's validateGatewayNames: `namespace/name` (both DNS-1123 labels), or a name without
    "/" that is a DNS name (`mesh`, `gw`, the legacy `gw.ns.svc.cluster.local`). Another value
    names no Gateway, so the routes would bind nothing."""
    if "/" not in name:
        why = host_reason(name)
        if why or "*" in name:
            return f'invalid gateway name "{name}" (Istio refuses it too): write namespace/name or mesh'
        return None
    ns, _, gw = name.partition("/")
    if not ns or not gw:
        return f'config namespace and gateway name cannot be empty, got "{name}" (Istio refuses it too)'
    for what, part in (("namespace", ns), ("gateway name", gw)):
        if check_label(part):
            return f'invalid value for {what}: "{part}" (Istio refuses it too): a DNS-1123 label'
    return None


def resolve_gateway_name(name: str, vs_ns: str) -> str:
    """A `gateways` entry as "ns/name" (or "mesh"), as Istio's resolveGatewayName reads it: a short
    name is in the VirtualService's namespace, and the legacy `name.ns[.svc.cluster.local]` form
    is `ns/name` (Istio honours it, with a warning; it used to bind nothing here)."""
    if name == "mesh" or "/" in name:
        return name
    if "." not in name:
        return f"{vs_ns}/{name}"
    gw, _, rest = name.partition(".")
    return f"{rest.partition('.')[0]}/{gw}"


def check_gateway_names(names: Any, path: str, errs: Errors) -> None:
    if not isinstance(names, list):
        return
    for i, n in enumerate(names):
        if isinstance(n, str):
            why = gateway_name_reason(n)
            if why:
                errs.append((f"{path}[{i}]", why))


def check_sni_hosts(value: dict[str, Any], path: str, errs: Errors) -> None:
    """istiod's validateSniHost: each `tls[].match[].sniHosts` entry is within one of the
    VirtualService's hosts. Ambit's waypoint would route another name too (it matches the SNI of
    connections to those hosts), but Istio refuses the object, and YAML that applies here must
    apply in Istio. An IP address is left alone (Istio only warns that no client sends one)."""
    hosts = [h for h in value.get("hosts") or [] if isinstance(h, str)]
    if not hosts:
        return      # a delegate (or invalid): its tls routes are refused on their own
    for i, route in enumerate(value.get("tls") or []):
        for j, m in enumerate((route or {}).get("match") or [] if isinstance(route, dict) else []):
            for k, sni in enumerate((m or {}).get("sniHosts") or [] if isinstance(m, dict) else []):
                if not isinstance(sni, str) or is_ip(sni) or host_reason(sni, ip=True):
                    continue
                if not any(host_subset_of(sni, h) for h in hosts):
                    errs.append((f"{join(path, 'tls')}[{i}].match[{j}].sniHosts[{k}]",
                                 f'SNI host "{sni}" is not a compatible subset of any of the virtual service hosts: '
                                 f"[{', '.join(hosts)}] (Istio refuses it too)"))
