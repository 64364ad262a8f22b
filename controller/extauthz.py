"""MeshConfig `extensionProviders` of kinds `envoyExtAuthzHttp` and `envoyExtAuthzGrpc`: the
external authorizers an AuthorizationPolicy with `action: CUSTOM` names (`provider.name`).

    extensionProviders:
    - name: opa
      envoyExtAuthzGrpc: {service: opa.authz.svc.cluster.local, port: 9191, timeout: 1s}
    - name: oauth2-proxy
      envoyExtAuthzHttp:
        service: oauth2-proxy.auth.svc.cluster.local
        port: 4180
        includeRequestHeadersInCheck: [authorization, cookie]
        headersToUpstreamOnAllow: [x-auth-request-user, "x-auth-request-*"]
        headersToDownstreamOnDeny: [set-cookie, content-type]

Checked as Istio checks them (pkg/config/validation/agent/extensionprovider.go and
pilot/pkg/security/authz/builder/extauthz.go): a DNS-label name, a port, a host for `service`,
`statusOnError` an HTTP status Envoy's `StatusCode` enum knows, `pathPrefix` starting with "/",
no single "*" among the header patterns (Istio refuses it: use a prefix or suffix), a duration for
`timeout` (default 600 s). Istio reports a bad provider only in istiod's log and then denies the
requests its CUSTOM policies match; Ambit refuses the whole file instead (the last good one stays
in force), so the mistake is seen where it is made. Fields Ambit does not know are refused.

Each becomes an `ambit.model.ExtAuthzProvider` in `MeshSettings.ext_authz`; the waypoints and
ingress gateways that enforce CUSTOM policies call the authorizer (waypoint/authz).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from ambit.duration import parse_go_duration
from ambit.model import Authorization, ExtAuthzBody, ExtAuthzProvider
from controller.kinds.common import header_name_reason, header_value_reason

KINDS = {"envoyExtAuthzHttp": "http", "envoyExtAuthzGrpc": "grpc"}
DEFAULT_TIMEOUT = 600.0             # Istio's timeoutOrDefault
_BODY_FIELDS = ("maxRequestBytes", "allowPartialMessage", "packAsBytes")
_COMMON = ("service", "port", "timeout", "failOpen", "statusOnError", "includeRequestBodyInCheck")
FIELDS = {
    "envoyExtAuthzGrpc": _COMMON,
    "envoyExtAuthzHttp": _COMMON + ("pathPrefix", "includeRequestHeadersInCheck", "includeHeadersInCheck",
                                    "includeAdditionalHeadersInCheck", "headersToUpstreamOnAllow",
                                    "headersToDownstreamOnAllow", "headersToDownstreamOnDeny"),
}
_HEADER_LISTS = {"includeRequestHeadersInCheck": "include_request_headers",
                 "headersToUpstreamOnAllow": "headers_to_upstream_on_allow",
                 "headersToDownstreamOnAllow": "headers_to_downstream_on_allow",
                 "headersToDownstreamOnDeny": "headers_to_downstream_on_deny"}
# envoy/type/v3/http_status.proto StatusCode (what Istio's parseStatusOnError accepts), less Empty (0)
ENVOY_STATUS_CODES = frozenset((
    100, 200, 201, 202, 203, 204, 205, 206, 207, 208, 226, 300, 301, 302, 303, 304, 305, 307, 308,
    400, 401, 402, 403, 404, 405, 406, 407, 408, 409, 410, 411, 412, 413, 414, 415, 416, 417, 421, 422, 423,
    424, 426, 428, 429, 431, 500, 501, 502, 503, 504, 505, 506, 507, 508, 510, 511))
_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_NOT_IN_HOST = frozenset("?#@ \t\r\n")
_COMMAND_OPERATOR = re.compile(r"%[A-Z][A-Z0-9_]*(\([^)]*\))?(:[0-9]+)?%")   # Envoy's %DOWNSTREAM_REMOTE_ADDRESS%


def is_ext_authz(entry: Any) -> bool:
    """Is this `extensionProviders` entry an external authorizer (of either kind)?"""
    return isinstance(entry, dict) and any(k in KINDS for k in entry)


def parse_provider(name: str, kind: str, spec: Any, where: str) -> ExtAuthzProvider:
    """One entry (`where` names it) -> ExtAuthzProvider; ValueError names the field and the reason."""
    if not _NAME.fullmatch(name):
        raise ValueError(f"{where}: name: {name!r} must be a DNS label (lowercase letters, digits and '-', at most "
                         "63, not starting or ending with '-'), as Istio requires of external authorizers")
    spec = spec or {}
    if not isinstance(spec, dict):
        raise ValueError(f"{where}: {kind}: expected a mapping")
    at = f"{where}: {kind}"
    unknown = sorted(set(spec) - set(FIELDS[kind]))
    if unknown:
        raise ValueError(f"{at}: {', '.join(unknown)}: not supported by Ambit (supported: {', '.join(FIELDS[kind])})")
    service = str(spec.get("service") or "")
    if not service or any(c in service for c in _NOT_IN_HOST) or service.count("/") > 1:
        raise ValueError(f"{at}.service: required: the authorizer's Service, \"[<namespace>/]<hostname>\" "
                         f"(e.g. ext-authz.foo.svc.cluster.local), got {service!r}")
    port = spec.get("port")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ValueError(f"{at}.port: required: a port number (1-65535), got {port!r}")
    out: dict[str, Any] = {"name": name, "kind": KINDS[kind], "service": service, "port": port,
                           "timeout": _timeout(spec.get("timeout"), at),
                           "fail_open": _bool(spec, "failOpen", at),
                           "status_on_error": _status(spec.get("statusOnError"), at),
                           "include_body": _body(spec.get("includeRequestBodyInCheck"), at, kind)}
    if kind == "envoyExtAuthzHttp":
        prefix = spec.get("pathPrefix")
        if prefix is not None:
            prefix = str(prefix)
            if prefix and (not prefix.startswith("/") or any(c in prefix for c in " \t\r\n?#")):
                raise ValueError(f"{at}.pathPrefix: must be a URL path starting with '/', got {prefix!r}")
            out["path_prefix"] = prefix
        lists = dict(spec)
        if lists.get("includeRequestHeadersInCheck") is None and lists.get("includeHeadersInCheck") is not None:
            lists["includeRequestHeadersInCheck"] = lists["includeHeadersInCheck"]   # the deprecated name, as Istio
        for field, attr in _HEADER_LISTS.items():
            out[attr] = _patterns(lists.get(field), f"{at}.{field}")
        out["include_additional_headers"] = _additional(spec.get("includeAdditionalHeadersInCheck"), at)
    return ExtAuthzProvider(**out)


def _timeout(value: Any, at: str) -> float:
    if value is None:
        return DEFAULT_TIMEOUT
    try:
        seconds = parse_go_duration(str(value))
    except ValueError:
        raise ValueError(f'{at}.timeout: must be a duration such as "1s" or "500ms", got {value!r}') from None
    if seconds < 0.001:
        raise ValueError(f"{at}.timeout: must be at least 1ms, got {value!r}")
    return seconds


def _bool(spec: dict[str, Any], key: str, at: str) -> bool:
    v = spec.get(key, False)
    if not isinstance(v, bool):
        raise ValueError(f"{at}.{key}: expected true or false, got {v!r}")
    return v


def _status(value: Any, at: str) -> int:
    """Istio's statusOnError is a string ("403"); a YAML number is read the same."""
    if value is None or value == "":
        return 403
    try:
        code = int(str(value))
    except ValueError:
        raise ValueError(f"{at}.statusOnError: must be an HTTP status such as \"403\", got {value!r}") from None
    if code not in ENVOY_STATUS_CODES:
        raise ValueError(f"{at}.statusOnError: {code} is not a status Envoy's StatusCode knows "
                         f"(one of {', '.join(map(str, sorted(ENVOY_STATUS_CODES)))})")
    return code


def _patterns(value: Any, at: str) -> list[str]:
    """Header patterns: "name" (exact), "prefix*" or "*suffix", matched case-insensitively."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValueError(f"{at}: expected a list of header names or patterns")
    out = []
    for i, p in enumerate(value):
        p = str(p)
        if p == "*":
            raise ValueError(f'{at}[{i}]: a single wildcard ("*") is not supported, use a prefix ("x-*") or '
                             'suffix ("*-id") match (as Istio)')
        name = p[1:] if p.startswith("*") else p[:-1] if p.endswith("*") else p
        if not name or header_name_reason(name) or "*" in name:
            raise ValueError(f"{at}[{i}]: {p!r} is not a header name, or a header-name prefix or suffix with one '*'")
        out.append(p.lower())
    return out


def _additional(value: Any, at: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{at}.includeAdditionalHeadersInCheck: expected a mapping of header name -> value")
    out = {}
    for k, v in value.items():
        why = header_name_reason(str(k)) or header_value_reason(str(v))
        if why:
            raise ValueError(f"{at}.includeAdditionalHeadersInCheck.{k}: {why}")
        if _COMMAND_OPERATOR.search(str(v)):
            raise ValueError(f"{at}.includeAdditionalHeadersInCheck.{k}: {v!r}: Envoy command operators (%...%) are "
                             "not expanded by Ambit, so the value would be sent as written; use a fixed value")
        out[str(k).lower()] = str(v)
    return out


def _body(value: Any, at: str, kind: str) -> ExtAuthzBody | None:
    if value is None:
        return None
    where = f"{at}.includeRequestBodyInCheck"
    if not isinstance(value, dict):
        raise ValueError(f"{where}: expected a mapping ({', '.join(_BODY_FIELDS)})")
    unknown = sorted(set(value) - set(_BODY_FIELDS))
    if unknown:
        raise ValueError(f"{where}: {', '.join(unknown)}: not supported (supported: {', '.join(_BODY_FIELDS)})")
    size = value.get("maxRequestBytes", 0)
    if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= 0xFFFFFFFF:
        raise ValueError(f"{where}.maxRequestBytes: expected a byte count (0 to 4294967295), got {size!r}")
    pack = _bool(value, "packAsBytes", where)
    if pack and kind == "envoyExtAuthzHttp":
        raise ValueError(f"{where}.packAsBytes: only applies to envoyExtAuthzGrpc (the gRPC check's raw_body); "
                         "an HTTP check carries the body as it is")
    return ExtAuthzBody(max_request_bytes=size, allow_partial_message=_bool(value, "allowPartialMessage", where),
                        pack_as_bytes=pack)


def bind_providers(authorizations: Iterable[Authorization], providers: Iterable[ExtAuthzProvider]) -> list[str]:
    """Turn each CUSTOM policy whose provider the mesh config does not define into a DENY of the
    same rules, as Istio does (its builder's "-deny-due-to-bad-CUSTOM-action" policy): a check that
    cannot be made must not let the requests it guards through. Returns "ns/name" of each one
    changed (the controller warns about them: `controller.waypoints.advisories`)."""
    names = {p.name for p in providers}
    changed = []
    for a in authorizations:
        if a.action == "CUSTOM" and a.provider not in names:
            a.action = "DENY"
            changed.append(a.resource_name)
    return changed
