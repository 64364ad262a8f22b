"""gateway.networking.k8s.io: HTTPRoute, GRPCRoute (GAMMA: attached to a Service), waypoint and ingress
Gateways, and TLSRoute/TCPRoute (ingress Gateways only: TLS passthrough by SNI, plain TCP)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from ambit.gatewayclasses import INGRESS_CLASSES, WAYPOINT_CLASSES
from ambit.httpfields import PROXY_OWNED_HEADERS
from controller.kinds.common import (
    GwDuration,
    Labels,
    Port,
    Regex,
    Strings,
    check_ingress_port,
    cookie_path_reason,
    header_name_reason,
    header_ops_checks,
    header_value_reason,
    label_key_reason,
    parse_duration,
    request_path_reason,
)
from controller.kinds.cors import HTTPCORSFilter
from controller.kinds.gwtypes import (
    DNS,
    WILD_DNS,
    AddressType,
    ControllerName,
    Group,
    Hostname,
    Kind,
    Namespace,
    ObjectName,
    SectionName,
    SniHostname,
)
from controller.kinds.schema import Arr, Check, Errors, Int, Map, Obj, Str, join

INGRESS_PROTOCOLS = ("HTTP", "HTTPS", "TLS", "TCP")
TLS_MIN_VERSION_OPTION = "ambit.io/min-tls-version"
TLS_VERSIONS = ("1.2", "1.3")
GATEWAY_GROUP = "gateway.networking.k8s.io"

# Gateway API's typed strings and bounds (gwtypes.py), as its CRDs check them: without an API server
# in front (the lab, `ambit apply`, `--dry-run`), a parent named in capitals or a group with a space
# was accepted and then bound nothing.
ParentReference = Obj({
    "group": Group, "kind": Kind, "namespace": Namespace, "name": ObjectName,
    "sectionName": SectionName, "port": Port,
}, required=("name",))
ParentReferences = Arr(ParentReference, max_items=32)

HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")


# HTTPPathMatch's CEL rules for Exact and PathPrefix (gateway.networking.k8s.io_httproutes.yaml), with
# their messages. The waypoint matches the request's path as it normalizes it (waypoint/normalize.py:
# dot segments removed, escapes of unreserved characters decoded, others upper-cased, a fragment
# refused, nothing else decoded), so a value with a dot segment, "%2f", "#", a space or text outside
# ASCII could never match: the rule was accepted and never applied.
_PATH_MATCH_FORBIDDEN = (("//", "contain"), ("/./", "contain"), ("/../", "contain"), ("%2f", "contain"),
                         ("%2F", "contain"), ("#", "contain"), ("/..", "end with"), ("/.", "end with"))
_PATH_MATCH_CHARS = re.compile(r"(?:[-A-Za-z0-9/._~!$&'()*+,;=:@]|[%][0-9a-fA-F]{2})+")
PATH_MATCH_MAX = 1024


def _check_path_match(value: dict[str, Any], path: str, errs: Errors) -> None:
    kind, v = value.get("type", "PathPrefix"), value.get("value", "/")
    where = join(path, "value")
    if len(v) > PATH_MATCH_MAX:
        errs.append((where, f"must be at most {PATH_MATCH_MAX} characters, got {len(v)}"))
    if kind == "RegularExpression":
        Regex.check(v, where, errs)
        return
    if not v.startswith("/"):
        errs.append((where, f'must start with "/", got "{v}"'))
    for text, how in _PATH_MATCH_FORBIDDEN:
        if v.endswith(text) if how == "end with" else text in v:
            errs.append((where, f"must not {how} '{text}' when type one of ['Exact', 'PathPrefix']"))
    if not _PATH_MATCH_CHARS.fullmatch(v):
        errs.append((where, f"must only contain valid characters (matching {_PATH_MATCH_CHARS.pattern.join('^$')}) "
                            "for types ['Exact', 'PathPrefix']"))


def _check_regex_value(value: dict[str, Any], path: str, errs: Errors) -> None:
    if value.get("type") == "RegularExpression":
        Regex.check(value.get("value"), join(path, "value"), errs)


HTTPPathMatch = Obj({"type": Str(enum=("Exact", "PathPrefix", "RegularExpression")), "value": Str()},
                   checks=(_check_path_match,))
# The name is Gateway API's HTTPHeaderName / HTTPQueryParamName (the CRD's pattern): a name with
# other characters could never match (it was accepted, in the lab, and the rule never matched).
HeaderMatch = Obj({"type": Str(enum=("Exact", "RegularExpression")),
                   "name": Str(min_len=1, max_len=256, valid=header_name_reason), "value": Str(max_len=4096)},
                  required=("name", "value"), checks=(_check_regex_value,))

HTTPRouteMatch = Obj({
    "path": HTTPPathMatch,
    "headers": Arr(HeaderMatch, max_items=16),
    "queryParams": Arr(HeaderMatch, max_items=16),
    "method": Str(enum=HTTP_METHODS),
})

HeaderValue = Obj({"name": Str(min_len=1, max_len=256), "value": Str(valid=header_value_reason, max_len=4096)},
                  required=("name", "value"))
_HeaderValues = Arr(HeaderValue, max_items=16)
RequestHeaderFilter = Obj({"set": _HeaderValues, "add": _HeaderValues, "remove": Arr(Str(), max_items=16)},
                          checks=(header_ops_checks(True),))
ResponseHeaderFilter = Obj({"set": _HeaderValues, "add": _HeaderValues, "remove": Arr(Str(), max_items=16)},
                           checks=(header_ops_checks(False),))

BackendObjectRef = Obj({"group": Group, "kind": Kind, "name": ObjectName, "namespace": Namespace, "port": Port},
                       required=("name",))

# A rewritten or redirected path and host go into the request line, the Host header or the
# Location header: control characters refused (with CR/LF, a route injected headers there).
def _check_path_modifier(value: dict[str, Any], path: str, errs: Errors) -> None:
    """HTTPPathModifier's CEL rules, with their messages: the replacement its `type` names must be
    the one set. A ReplaceFullPath with only `replacePrefixMatch` rewrote or redirected nothing (the
    translation reads the field its type names), the path written was silently not applied."""
    kind = value.get("type")
    for t, f in (("ReplaceFullPath", "replaceFullPath"), ("ReplacePrefixMatch", "replacePrefixMatch")):
        if kind == t and value.get(f) is None:
            errs.append((path, f"{f} must be specified when type is set to '{t}'"))
        if value.get(f) is not None and kind != t:
            errs.append((path, f"type must be '{t}' when {f} is set"))


PathModifier = Obj({"type": Str(enum=("ReplaceFullPath", "ReplacePrefixMatch")),
                    "replaceFullPath": Str(valid=request_path_reason, max_len=1024),
                    "replacePrefixMatch": Str(valid=request_path_reason, max_len=1024)}, required=("type",),
                   checks=(_check_path_modifier,))


def precise_hostname_reason(text: str) -> str | None:
    """Why `text` is not Gateway API's PreciseHostname (a redirect's or a rewrite's `hostname`: the
    CRD's pattern, 1 to 253 characters), or None. The waypoint writes it as the Location's or the
    upstream Host's host: a port in it ("a:80") took the place of the port the redirect derives,
    "a@b" or "a/b" sent the client to host "b" or to path "/b" of host "a", a space made a Host no
    server takes - what the route said was not what it did."""
    control = header_value_reason(text)     # (CR/LF named as such: they injected headers)
    if control:
        return control
    if not text:
        return "must be a hostname, got an empty string"
    if len(text) > 253:
        return f"must be at most 253 characters, got {len(text)}"
    if not DNS.fullmatch(text):
        return (f'must be a hostname (Gateway API PreciseHostname: lowercase letters, digits, "-" and "."; '
                f'no port, no wildcard), got "{text}"')
    return None

FILTER_TYPES = ("RequestHeaderModifier", "ResponseHeaderModifier", "RequestMirror", "RequestRedirect",
                "URLRewrite", "ExtensionRef", "CORS")
_FILTER_FIELD = {"RequestHeaderModifier": "requestHeaderModifier",
                 "ResponseHeaderModifier": "responseHeaderModifier",
                 "RequestMirror": "requestMirror", "RequestRedirect": "requestRedirect",
                 "URLRewrite": "urlRewrite", "ExtensionRef": "extensionRef", "CORS": "cors"}
_UNSUPPORTED_FILTERS = {"ExtensionRef": "ExtensionRef filters are not supported by Ambit"}


def _check_filter(value: dict[str, Any], path: str, errs: Errors) -> None:
    kind = value["type"]
    if kind in _UNSUPPORTED_FILTERS:
        errs.append((join(path, "type"), _UNSUPPORTED_FILTERS[kind]))
        return
    want = _FILTER_FIELD[kind]
    if value.get(want) is None:
        errs.append((join(path, want), f"required when type is {kind}"))
    for other in _FILTER_FIELD.values():
        if other != want and value.get(other) is not None:
            errs.append((join(path, other), f"must not be set when type is {kind}"))


REDIRECT_CODES = (301, 302, 303, 307, 308)


def _check_redirect_code(value: dict[str, Any], path: str, errs: Errors) -> None:
    """Gateway API's enum on `statusCode` (HTTPRequestRedirectFilter): the API server refuses any
    other 3xx, which the range check alone would let through as a reply such as 304 + Location."""
    code = value.get("statusCode")
    if code is not None and code not in REDIRECT_CODES:
        errs.append((join(path, "statusCode"), f"Unsupported value: {code}: supported values: "
                     + ", ".join(f'"{c}"' for c in REDIRECT_CODES)))


def _check_fraction(value: dict[str, Any], path: str, errs: Errors) -> None:
    """Fraction's CEL rule (a RequestMirror's share), with its message: 5/2 mirrored every request,
    a share the API server refuses as no fraction."""
    if value.get("numerator", 0) > value.get("denominator", 100):
        errs.append((path, "numerator must be less than or equal to denominator"))


def Filter(types: tuple[str, ...]) -> Obj:  # noqa: N802 - a schema constructor
    return Obj({
        "type": Str(enum=types),
        "requestHeaderModifier": RequestHeaderFilter,
        "responseHeaderModifier": ResponseHeaderFilter,
        "requestMirror": Obj({"backendRef": BackendObjectRef, "percent": Int(minimum=0, maximum=100),
                              "fraction": Obj({"numerator": Int(minimum=0), "denominator": Int(minimum=1)},
                                              required=("numerator",), checks=(_check_fraction,))},
                             required=("backendRef",), one_of=(("percent", "fraction"),)),
        "requestRedirect": Obj({"scheme": Str(enum=("http", "https")), "hostname": Str(valid=precise_hostname_reason),
                                "path": PathModifier,
                                "port": Port, "statusCode": Int(minimum=301, maximum=308)},
                               checks=(_check_redirect_code,)),
        "urlRewrite": Obj({"hostname": Str(valid=precise_hostname_reason), "path": PathModifier}),
        "extensionRef": Obj({"group": Str(), "kind": Str(), "name": Str()}),
        "cors": HTTPCORSFilter,
    }, required=("type",), checks=(_check_filter,))


HTTPFilter = Filter(FILTER_TYPES)
GRPCFilter = Filter(("RequestHeaderModifier", "ResponseHeaderModifier", "RequestMirror", "ExtensionRef"))

# Gateway API's CEL rules on a filter list (HTTPRoute: a rule's and a backendRef's; GRPCRoute: the
# header modifiers only), with its own messages: the API server refuses these in a cluster.
HTTP_UNREPEATABLE = ("CORS", "RequestHeaderModifier", "ResponseHeaderModifier", "RequestRedirect", "URLRewrite")
GRPC_UNREPEATABLE = ("RequestHeaderModifier", "ResponseHeaderModifier")


def _check_filter_list(filters: list[dict[str, Any]], path: str, errs: Errors, unrepeatable: tuple[str, ...]) -> None:
    types = [f.get("type") for f in filters]
    if "RequestRedirect" in types and "URLRewrite" in types:
        errs.append((path, "May specify either httpRouteFilterRequestRedirect or httpRouteFilterRequestRewrite, "
                           "but not both"))
    errs.extend((path, f"{t} filter cannot be repeated") for t in unrepeatable if types.count(t) > 1)


def _prefix_replaced(filters: list[dict[str, Any]], kind: str) -> bool:
    """Whether a `kind` filter (RequestRedirect, URLRewrite) replaces the matched path prefix."""
    field = _FILTER_FIELD[kind]
    return any(f.get("type") == kind and ((f.get(field) or {}).get("path") or {}).get("type") == "ReplacePrefixMatch"
               and ((f.get(field) or {}).get("path") or {}).get("replacePrefixMatch") is not None for f in filters)


def _one_prefix_match(rule: dict[str, Any]) -> bool:
    """Exactly one match, on a PathPrefix (the CRD's defaults: no `matches` is one PathPrefix "/"
    match, and a match without `path` matches PathPrefix "/")."""
    matches = rule.get("matches")
    if matches is None:
        return True
    return len(matches) == 1 and ((matches[0].get("path") or {}).get("type") or "PathPrefix") == "PathPrefix"


def _check_http_rule(rule: dict[str, Any], path: str, errs: Errors) -> None:
    """HTTPRouteRule's CEL rules (gateway.networking.k8s.io_httproutes.yaml), with their messages."""
    filters, backends = rule.get("filters") or [], rule.get("backendRefs") or []
    _check_filter_list(filters, join(path, "filters"), errs, HTTP_UNREPEATABLE)
    if backends and any(f.get("type") == "RequestRedirect" for f in filters):
        errs.append((path, "RequestRedirect filter must not be used together with backendRefs"))
    if _one_prefix_match(rule):
        return
    for kind, within in (("RequestRedirect", "Within backendRefs, when using"),
                         ("URLRewrite", "Within backendRefs, When using")):    # (upstream's capital W)
        if _prefix_replaced(filters, kind):
            errs.append((path, f"When using {kind} filter with path.replacePrefixMatch, exactly one PathPrefix "
                               "match must be specified"))
        if any(_prefix_replaced(b.get("filters") or [], kind) for b in backends):
            errs.append((path, f"{within} {kind} filter with path.replacePrefixMatch, exactly one PathPrefix match "
                               "must be specified"))


def _check_http_backend_filters(value: dict[str, Any], path: str, errs: Errors) -> None:
    _check_filter_list(value.get("filters") or [], join(path, "filters"), errs, HTTP_UNREPEATABLE)


def _check_grpc_filters(value: dict[str, Any], path: str, errs: Errors) -> None:
    """A GRPCRoute rule's or backendRef's filters."""
    _check_filter_list(value.get("filters") or [], join(path, "filters"), errs, GRPC_UNREPEATABLE)


def _check_timeouts(value: dict[str, Any], path: str, errs: Errors) -> None:
    request, backend = value.get("request"), value.get("backendRequest")
    if request and backend and parse_duration(request) != 0 and parse_duration(backend) > parse_duration(request):
        errs.append((path, "backendRequest timeout cannot be longer than request timeout"))


def _check_backend(value: dict[str, Any], path: str, errs: Errors) -> None:
    """A Service backend needs its port (Gateway API's CEL rule). A backend of another group or kind
    is valid: the translation makes it `ResolvedRefs=False InvalidKind` and answers its share of
    requests 500, as Gateway API requires (controller.translate.ingress.backend_verdicts)."""
    if is_service_backend(value) and value.get("port") is None:
        errs.append((join(path, "port"), "required when the backend is a Service"))


def is_service_backend(ref: dict[str, Any]) -> bool:
    """Whether a backendRef names a Service (the only backend kind Ambit resolves)."""
    return ref.get("kind", "Service") == "Service" and ref.get("group", "") in ("", "core")


def BackendRef(filter_schema: Obj, check_filters: Check) -> Obj:  # noqa: N802 - a schema constructor
    return BackendObjectRef.extend({"weight": Int(minimum=0, maximum=1000000), "filters": Arr(filter_schema)},
                                   checks=(_check_backend, check_filters))


def _check_parent_sections(value: dict[str, Any], path: str, errs: Errors) -> None:
    """Gateway API's CEL rules on `parentRefs` (every route kind's CRD): several references to one
    parent (group, kind, name, namespace as written) must each name a different `sectionName`."""
    by_parent: dict[tuple[str, str, str, str], list[str]] = {}
    for p in value.get("parentRefs") or []:
        key = (p.get("group", GATEWAY_GROUP), p.get("kind", "Gateway"), p.get("name", ""), p.get("namespace") or "")
        by_parent.setdefault(key, []).append(p.get("sectionName") or "")
    sections = [s for s in by_parent.values() if len(s) > 1]
    where = join(path, "parentRefs")
    if any(len({bool(x) for x in s}) > 1 for s in sections):
        errs.append((where, "sectionName must be specified when parentRefs includes 2 or more references to the "
                            "same parent"))
    if any(len(set(s)) < len(s) for s in sections):
        errs.append((where, "sectionName must be unique when parentRefs includes 2 or more references to the same "
                            "parent"))


def _check_parents(value: dict[str, Any], path: str, errs: Errors) -> None:
    _check_parent_sections(value, path, errs)
    for i, p in enumerate(value.get("parentRefs") or []):
        kind = p.get("kind", "Gateway")
        group = p.get("group", "gateway.networking.k8s.io" if kind == "Gateway" else "")
        if kind == "Service" and group in ("", "core"):
            continue
        if kind == "Gateway" and group == "gateway.networking.k8s.io":
            continue
        errs.append((f"{join(path, 'parentRefs')}[{i}]",
                     f'must name a Service (group "") or a Gateway, got {group or "core"}/{kind}'))


def _session_name(limit: int) -> Callable[[str], str | None]:
    """A session's cookie or header name: an HTTP token (Gateway API's pattern for `cookie.name`
    and `header.name`; `sessionName` has no pattern upstream, but names a cookie or a header all
    the same, which anything else would break on the wire), at most `limit` characters."""
    def valid(text: str) -> str | None:
        if not text:        # sessionName "": unset (a name is generated)
            return None
        if len(text) > limit:
            return f"must be at most {limit} characters, got {len(text)}"
        if header_name_reason(text):
            return f'must be a cookie or header name (letters, digits and !#$%&\'*+-.^_`|~), got "{text}"'
        return None
    return valid


LIFETIME_TYPES = ("Permanent", "Session")


def _check_session(value: dict[str, Any], path: str, errs: Errors) -> None:
    """SessionPersistence's CEL rules (experimental channel), for both of its shapes: the released
    one (v1.1 to v1.6: `sessionName`, `cookieConfig`, v1.5 and older also `idleTimeout`) and the
    union that replaced it (`cookie {name, path, lifetimeType}`, `header {name}`)."""
    kind = value.get("type", "Cookie")
    cookie = value.get("cookieConfig") if value.get("cookieConfig") is not None else value.get("cookie")
    if value.get("cookieConfig") is not None and kind != "Cookie":
        errs.append((path, "cookieConfig can only be set with type Cookie"))
    if value.get("cookie") is not None and kind != "Cookie":
        errs.append((path, "cookie must be nil if type is not Cookie"))
    if value.get("header") is not None and kind != "Header":
        errs.append((path, "header can only be set with type Header"))
    if (cookie or {}).get("lifetimeType") == "Permanent" and not value.get("absoluteTimeout"):
        errs.append((path, "AbsoluteTimeout must be specified when cookie lifetimeType is Permanent"))
    if value.get("cookieConfig") is not None and value.get("cookie") is not None:
        errs.append((path, "set cookieConfig (Gateway API v1.1 to v1.6) or cookie, not both"))
    name = value.get("sessionName") or (value.get("header") or {}).get("name") or ""
    if kind == "Header" and name.lower() in PROXY_OWNED_HEADERS:
        errs.append((path, f'"{name}" is a header the proxy owns (the message\'s framing or the connection\'s '
                           "options): it cannot carry a session"))
    if value.get("sessionName") and ((value.get("cookie") or {}).get("name") or (value.get("header") or {}).get("name")):
        errs.append((join(path, "sessionName"), "the name is set twice: set sessionName (Gateway API v1.1 to v1.6) or "
                                                "cookie.name / header.name, not both"))


SessionPersistence = Obj({
    "sessionName": Str(valid=_session_name(128)),
    "absoluteTimeout": GwDuration,
    "idleTimeout": GwDuration,          # Gateway API v1.1 to v1.5; warned: not applied
    "type": Str(enum=("Cookie", "Header")),
    "cookieConfig": Obj({"lifetimeType": Str(enum=LIFETIME_TYPES)}),
    "cookie": Obj({"name": Str(min_len=1, valid=_session_name(256)), "lifetimeType": Str(enum=LIFETIME_TYPES),
                   "path": Str(valid=cookie_path_reason)}),
    "header": Obj({"name": Str(min_len=1, valid=_session_name(256))}, required=("name",)),
}, checks=(_check_session,))


HTTPRouteRule = Obj({
    "name": SectionName,
    "matches": Arr(HTTPRouteMatch, max_items=64),
    "filters": Arr(HTTPFilter, max_items=16),
    "backendRefs": Arr(BackendRef(HTTPFilter, _check_http_backend_filters), max_items=16),
    "timeouts": Obj({"request": GwDuration, "backendRequest": GwDuration}, checks=(_check_timeouts,)),
    "retry": Obj({"codes": Arr(Int(minimum=400, maximum=599)), "attempts": Int(minimum=0), "backoff": GwDuration}),
    "sessionPersistence": SessionPersistence,
}, checks=(_check_http_rule,))

HTTPRouteSpec = Obj({
    "parentRefs": ParentReferences,
    "hostnames": Arr(Hostname, max_items=16),
    "rules": Arr(HTTPRouteRule, min_items=1, max_items=16),
}, checks=(_check_parents,))

GRPCMethodMatch = Obj({"type": Str(enum=("Exact", "RegularExpression")), "service": Str(max_len=1024),
                       "method": Str(max_len=1024)})


# GRPCMethodMatch's CEL rules for type Exact (gateway.networking.k8s.io_grpcroutes.yaml), with their
# messages. The translation puts an Exact service and method into the route's `:path` match, a lone
# method into a regex (`/[^/]+/<method>`): a method such as "(" made a regex RE2 refuses, and the
# waypoint left the whole route out of its table, accepted and never applied.
_GRPC_EXACT = {"service": (re.compile(r"\.?[a-z_][a-z_0-9]*(\.[a-z_][a-z_0-9]*)*", re.IGNORECASE),
                           r"^(?i)\.?[a-z_][a-z_0-9]*(\.[a-z_][a-z_0-9]*)*$"),
               "method": (re.compile(r"[A-Za-z_][A-Za-z_0-9]*"), r"^[A-Za-z_][A-Za-z_0-9]*$")}


def _check_grpc_method(value: dict[str, Any], path: str, errs: Errors) -> None:
    if not value.get("service") and not value.get("method"):
        errs.append((path, "one of service or method must be set"))
    if value.get("type") == "RegularExpression":
        for f in ("service", "method"):
            if value.get(f):
                Regex.check(value[f], join(path, f), errs)
        return
    for f, (pattern, shown) in _GRPC_EXACT.items():
        if value.get(f) is not None and not pattern.fullmatch(value[f]):
            errs.append((join(path, f), f"{f} must only contain valid characters (matching {shown})"))


GRPCRouteRule = Obj({
    "name": SectionName,
    "matches": Arr(Obj({"method": GRPCMethodMatch.extend(checks=(_check_grpc_method,)),
                        "headers": Arr(HeaderMatch, max_items=16)}), max_items=64),
    "filters": Arr(GRPCFilter, max_items=16),
    "backendRefs": Arr(BackendRef(GRPCFilter, _check_grpc_filters), max_items=16),
    "sessionPersistence": SessionPersistence,
}, checks=(_check_grpc_filters,))

GRPCRouteSpec = Obj({"parentRefs": ParentReferences, "hostnames": Arr(Hostname, max_items=16),
                     "rules": Arr(GRPCRouteRule, max_items=16)}, checks=(_check_parents,))

LabelSelector = Obj({
    "matchLabels": Labels,
    "matchExpressions": Arr(Obj({"key": Str(min_len=1), "operator": Str(enum=("In", "NotIn", "Exists", "DoesNotExist")),
                                 "values": Strings}, required=("key", "operator"))),
})

# The Gateway's own fields take Gateway API's typed strings and list bounds (controller/kinds/gwtypes.py):
# without an API server (the lab, `ambit apply`) nothing else checks them.
ListenerTLS = Obj({
    "mode": Str(enum=("Terminate", "Passthrough")),
    "certificateRefs": Arr(Obj({"group": Group, "kind": Kind, "name": ObjectName, "namespace": Namespace},
                               required=("name",)), max_items=64),
    "options": Map(Str(max_len=4096), max_entries=16),
}, unsupported={"frontendValidation": "listener-level client certificate validation (frontendValidation, an "
                                      "earlier experimental field) is not supported by Ambit: use the Gateway's "
                                      "spec.tls.frontend (default, or perPort for this listener's port)"})

Listener = Obj({
    "name": SectionName,
    "hostname": Hostname,
    "port": Port,
    "protocol": Str(min_len=1),
    "tls": ListenerTLS,
    "allowedRoutes": Obj({
        "namespaces": Obj({"from": Str(enum=("All", "Same", "Selector")), "selector": LabelSelector}),
        "kinds": Arr(Obj({"group": Group, "kind": Kind}, required=("kind",)), max_items=8),
    }),
}, required=("name", "port", "protocol"))


_SERVICE_NAME = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")     # Kubernetes' DNS-1035 label


def deployed_name_reason(name: str, body: dict[str, Any]) -> str | None:
    """Why a Gateway of a class Ambit deploys cannot be called `name`, or None. Ambit names the
    gateway's Service after it and labels its pods `gateway.networking.k8s.io/gateway-name: <name>`
    (controller/waypoints/render.py), so the name must be a Service name (a DNS-1035 label: at most
    63 characters, a lower-case letter first, no dot) as well as an object name. Another one was
    accepted, its Service refused by the API server, and the gateway never served. A Gateway of
    another class is another controller's to name."""
    spec = body.get("spec") if isinstance(body.get("spec"), dict) else {}
    if spec.get("gatewayClassName") not in (*WAYPOINT_CLASSES, *INGRESS_CLASSES):
        return None
    if len(name) <= 63 and _SERVICE_NAME.fullmatch(name):
        return None
    return (f'"{name}" cannot name a Gateway of class {spec["gatewayClassName"]}: Ambit names the gateway\'s Service '
            "and its pods' gateway-name label after it, so it must be a DNS-1035 label (at most 63 characters, "
            'lower-case letters, digits and "-", starting with a letter; Gateway API allows longer names, and '
            "the API server would refuse that Service)")


def check_deployed_name(obj: dict[str, Any], errs: Errors) -> None:
    """`deployed_name_reason` as a KindSpec object check."""
    name = (obj.get("metadata") or {}).get("name")
    if isinstance(name, str) and name:
        reason = deployed_name_reason(name, obj)
        if reason is not None:
            errs.append(("metadata.name", reason))


def _check_gateway(value: dict[str, Any], path: str, errs: Errors) -> None:
    _check_gateway_tls(value, path, errs)
    _check_addresses(value.get("addresses") or [], join(path, "addresses"), errs)
    names: set[str] = set()
    for i, listener in enumerate(value.get("listeners") or []):
        p = f"{join(path, 'listeners')}[{i}]"
        if listener["name"] in names:
            errs.append((join(p, "name"), f'duplicate listener name "{listener["name"]}"'))
        names.add(listener["name"])
        if value["gatewayClassName"] in WAYPOINT_CLASSES:
            _check_waypoint_listener(listener, p, errs)
        if value["gatewayClassName"] in INGRESS_CLASSES:
            _check_ingress_listener(listener, p, errs)
    if value["gatewayClassName"] in INGRESS_CLASSES and value.get("addresses"):
        errs.append((join(path, "addresses"), "requested addresses are not supported by Ambit's ingress gateway: "
                                              "its address is its Service's (a LoadBalancer, or the lab pod's)"))
    if value["gatewayClassName"] in WAYPOINT_CLASSES and value.get("addresses"):
        errs.append((join(path, "addresses"), "requested addresses are not supported by Ambit's waypoints: a "
                                              "waypoint's address is its Service's cluster IP, which Kubernetes "
                                              "assigns"))


def _check_addresses(addresses: list[dict[str, Any]], path: str, errs: Errors) -> None:
    """Gateway API's CEL rules on `addresses`: a Hostname's value is a DNS name, and no IPAddress or
    Hostname value twice. (Ambit's own classes refuse addresses; another class's Gateway is checked as
    its CRD would be.)"""
    seen: set[tuple[str, str]] = set()
    for i, a in enumerate(addresses):
        kind, v = a.get("type", "IPAddress"), a["value"]
        if kind == "Hostname" and not WILD_DNS.fullmatch(v):
            errs.append((f"{path}[{i}]", "Hostname value must be empty or contain only valid characters (matching "
                                         f"{WILD_DNS.pattern}), got {v!r}"))
        if kind in ("IPAddress", "Hostname") and (kind, v) in seen:
            errs.append((path, f"{kind} values must be unique, got {v!r} twice"))
        seen.add((kind, v))


# A waypoint listener's fields that have no meaning for it, refused rather than accepted and ignored.
_WAYPOINT_LISTENER_REFUSED = {
    "hostname": "not supported on a waypoint listener: a waypoint serves every Service that uses it, whatever "
                "its name; narrow a route with its own hostnames",
    "tls": "not supported on a waypoint listener: a waypoint terminates HBONE, mutual TLS with its mesh "
           "identity, and takes no certificates",
}


def _check_waypoint_listener(listener: dict[str, Any], path: str, errs: Errors) -> None:
    if listener["protocol"] not in ("HBONE", "HTTP"):
        errs.append((join(path, "protocol"),
                     f'a waypoint listener must use protocol HBONE or HTTP, got "{listener["protocol"]}"'))
    errs.extend((join(path, f), why) for f, why in _WAYPOINT_LISTENER_REFUSED.items() if listener.get(f) is not None)


def _check_ingress_listener(listener: dict[str, Any], path: str, errs: Errors) -> None:
    """An ingress listener: HTTP; HTTPS terminating TLS with certificates; TLS passing TLS through
    by SNI (TLSRoute); TCP (TCPRoute). What is not built (TLS termination on a TLS listener, UDP)
    is refused rather than accepted and ignored."""
    proto, tls = listener["protocol"], listener.get("tls")
    check_ingress_port(listener["port"], join(path, "port"), errs)
    if proto not in INGRESS_PROTOCOLS:
        errs.append((join(path, "protocol"), f'"{proto}" is not supported by Ambit\'s ingress gateway; '
                                             f'use one of {", ".join(INGRESS_PROTOCOLS)}'))
        return
    if proto in ("HTTP", "TCP"):
        if tls is not None:
            errs.append((join(path, "tls"), f"must not be set when protocol is {proto}"))
        if proto == "TCP" and listener.get("hostname"):
            errs.append((join(path, "hostname"), "must not be set when protocol is TCP: a TCP connection carries no "
                                                 "hostname to match"))
        return
    if tls is None:
        errs.append((join(path, "tls"), f"required when protocol is {proto}"))
        return
    tp = join(path, "tls")
    if proto == "TLS":
        _check_passthrough(tls, tp, errs)
        return
    if tls.get("mode", "Terminate") != "Terminate":
        errs.append((join(tp, "mode"), "an HTTPS listener terminates TLS (mode Terminate); to pass TLS through to "
                                       "the backend use protocol TLS with TLSRoutes"))
    if not tls.get("certificateRefs"):
        errs.append((join(tp, "certificateRefs"), "at least one certificate is required to terminate TLS"))
    for k, v in (tls.get("options") or {}).items():
        if k != TLS_MIN_VERSION_OPTION:
            errs.append((join(join(tp, "options"), k), f"unknown TLS option; Ambit honours {TLS_MIN_VERSION_OPTION} "
                                                       "only"))
        elif v not in TLS_VERSIONS:
            errs.append((join(join(tp, "options"), k), f'must be one of {", ".join(TLS_VERSIONS)}, got "{v}"'))


def _check_passthrough(tls: dict[str, Any], path: str, errs: Errors) -> None:
    """A TLS listener passes the client's TLS through to the backend, chosen by the ClientHello's SNI:
    the gateway holds no certificate and sees no plaintext, so nothing of the TLS session is its to set."""
    if tls.get("mode", "Terminate") != "Passthrough":
        errs.append((join(path, "mode"), "a TLS listener must use mode Passthrough: Ambit's ingress gateway does not "
                                         "terminate TLS for TLSRoutes (use protocol HTTPS to terminate TLS)"))
    if tls.get("certificateRefs"):
        errs.append((join(path, "certificateRefs"), "must not be set with mode Passthrough: the backend presents its "
                                                    "own certificate"))
    if tls.get("options"):
        errs.append((join(path, "options"), "must not be set with mode Passthrough: the gateway does not take part "
                                            "in the TLS session"))


def _check_allowed_listeners(value: dict[str, Any], path: str, errs: Errors) -> None:
    ns = value.get("namespaces") or {}
    if ns.get("from", "None") != "None":
        errs.append((join(join(path, "namespaces"), "from"),
                     f'"{ns["from"]}" is not supported by Ambit: it does not support ListenerSet, so no listener '
                     'can attach; only "None" (the default) is accepted'))


AllowedListeners = Obj({
    "namespaces": Obj({"from": Str(enum=("All", "Same", "Selector", "None")), "selector": LabelSelector}),
}, checks=(_check_allowed_listeners,),
    description='Which namespaces\' ListenerSets may attach. Ambit does not support ListenerSet, so only "None" '
                "(the default) is accepted.")

# Gateway API's client certificate validation modes: AllowValidOnly -> the ingress listener's
# client_auth "required". AllowInsecureFallback accepts a connection whose certificate fails
# verification, which the gateway's TLS (Python's ssl, OpenSSL) cannot do: its "optional" client
# auth lets a client send no certificate but refuses the handshake of one that does not verify,
# so mapping the mode to it would break the clients the mode exists for. Refused, with the reason.
def _check_frontend_validation(value: dict[str, Any], path: str, errs: Errors) -> None:
    mode = value.get("mode", "AllowValidOnly")
    if mode != "AllowValidOnly":
        errs.append((join(path, "mode"), f'"{mode}" is not supported by Ambit\'s ingress gateway: it accepts '
                                         "connections whose client certificate fails verification, and its TLS "
                                         "refuses the handshake of a certificate that does not verify (it can "
                                         "only make the certificate optional); use AllowValidOnly, or no "
                                         "validation"))


CACertificateRef = Obj({"group": Group, "kind": Kind, "name": ObjectName, "namespace": Namespace},
                       required=("kind", "name"))
FrontendValidation = Obj({
    "caCertificateRefs": Arr(CACertificateRef, min_items=1, max_items=16),
    "mode": Str(enum=("AllowValidOnly", "AllowInsecureFallback")),
}, required=("caCertificateRefs",), checks=(_check_frontend_validation,))
FrontendTLSConfig = Obj({"validation": FrontendValidation})

GatewayTLS = Obj({
    "frontend": Obj({
        "default": FrontendTLSConfig,
        "perPort": Arr(Obj({"port": Port, "tls": FrontendTLSConfig}, required=("port", "tls")), max_items=64),
    }),
}, unsupported={
    "backend": "spec.tls.backend (the gateway's client certificate towards backends) is not supported by Ambit: "
               "an ingress gateway reaches its backends over HBONE, mutual TLS with its mesh identity (a "
               "workload certificate from the mesh CA), so it presents no other certificate",
})


def _check_gateway_tls(value: dict[str, Any], path: str, errs: Errors) -> None:
    """spec.tls: client certificate validation of an ingress Gateway's HTTPS listeners. A waypoint
    has no such listeners (its clients are meshed, authenticated by HBONE). A perPort port is given
    once. (A `default` or a perPort entry that no HTTPS listener takes is valid, as Gateway API
    wants it, and leaves the other listeners alone: the translation warns that it applies to
    nothing, controller.translate.ingress.frontend_warnings.)"""
    tls, tp = value.get("tls"), join(path, "tls")
    if tls is None:
        return
    if value["gatewayClassName"] in WAYPOINT_CLASSES:
        errs.append((tp, "spec.tls is not supported by Ambit on a waypoint: its clients are meshed workloads, authenticated "
                         "by HBONE mutual TLS with their mesh identities"))
        return
    seen: set[int] = set()
    for i, pp in enumerate((tls.get("frontend") or {}).get("perPort") or []):
        if pp["port"] in seen:
            errs.append((f"{join(join(tp, 'frontend'), 'perPort')}[{i}].port",
                         f"port {pp['port']} is configured twice: each port takes one validation"))
        seen.add(pp["port"])


GatewaySpec = Obj({
    "gatewayClassName": ObjectName,
    "tls": GatewayTLS,
    "listeners": Arr(Listener, min_items=1, max_items=64),
    "allowedListeners": AllowedListeners,
    "addresses": Arr(Obj({"type": AddressType, "value": Str(min_len=1, max_len=253)}, required=("value",)),
                     max_items=16),
    # parametersRef: a ConfigMap of overlays of the rendered objects (controller/waypoints/params.py);
    # another kind, or a bad ConfigMap, is reported on the Gateway's status (InvalidParameters), as
    # Gateway API and Istio do, not refused here: the Gateway's listeners and routes still apply.
    "infrastructure": Obj({"labels": Map(Labels.values, key=Labels.key, max_entries=8),
                           "annotations": Map(Str(max_len=4096), key=label_key_reason, max_entries=16),
                           "parametersRef": Obj({"group": Group, "kind": Kind, "name": ObjectName},
                                                required=("group", "kind", "name"))}),
}, required=("gatewayClassName", "listeners"), checks=(_check_gateway,))

def _check_l4_route(value: dict[str, Any], path: str, errs: Errors) -> None:
    """TLSRoute and TCPRoute attach to ingress Gateways only, and have one rule: they match nothing
    but the listener (and, TLSRoute, the SNI), so a second rule could never be chosen."""
    _check_parent_sections(value, path, errs)
    for i, p in enumerate(value.get("parentRefs") or []):
        if p.get("kind", "Gateway") != "Gateway" or p.get("group", GATEWAY_GROUP) != GATEWAY_GROUP:
            errs.append((f"{join(path, 'parentRefs')}[{i}]",
                         "must name an ingress Gateway: Ambit does not route TLS/TCP in the mesh by Service "
                         "(GAMMA); ztunnel carries that traffic to its original destination"))
    if len(value.get("rules") or []) > 1:
        errs.append((join(path, "rules"), "Ambit supports one rule: its backendRefs receive every connection the "
                                          "route matches (there are no matches to tell rules apart)"))


# TLSRoute's and TCPRoute's references: the typed ParentReference and BackendObjectRef, as HTTPRoute's.
L4BackendRef = BackendObjectRef.extend({"weight": Int(minimum=0, maximum=1000000)}, checks=(_check_backend,))
L4RouteRule = Obj({"name": SectionName, "backendRefs": Arr(L4BackendRef, min_items=1, max_items=16)},
                  required=("backendRefs",))
TLSRouteSpec = Obj({"parentRefs": ParentReferences,
                    "hostnames": Arr(SniHostname, min_items=1, max_items=1024),
                    "rules": Arr(L4RouteRule, min_items=1)},
                   required=("rules",), checks=(_check_l4_route,))
TCPRouteSpec = Obj({"parentRefs": ParentReferences, "rules": Arr(L4RouteRule, min_items=1)},
                   required=("rules",), checks=(_check_l4_route,))

# ReferenceGrant (v1, v1beta1): lets objects of `from` (group, kind, namespace) refer to objects of
# `to` (group, kind, optionally one name) in the grant's own namespace. Ambit honours it for an
# ingress route's cross-namespace backendRefs and an ingress Gateway's cross-namespace
# certificateRefs (controller/translate/ingress.py).
ReferenceGrantSpec = Obj({
    "from": Arr(Obj({"group": Group, "kind": Kind, "namespace": Namespace},
                    required=("group", "kind", "namespace")), min_items=1, max_items=16),
    "to": Arr(Obj({"group": Group, "kind": Kind, "name": ObjectName}, required=("group", "kind")),
              min_items=1, max_items=16),
}, required=("from", "to"))

# A GatewayClass (cluster-scoped). Ambit creates its built-in classes and writes their status
# (controller/waypoints/gatewayclasses.py); the Gateways it serves are those of its built-in class
# names. `parametersRef` is accepted and not read, as in Istio (an advisory names it): a class's
# defaults are a ConfigMap in the root namespace labelled gateway.istio.io/defaults-for-class.
GatewayClassSpec = Obj({
    "controllerName": ControllerName,
    "description": Str(max_len=64),
    "parametersRef": Obj({"group": Group, "kind": Kind, "name": ObjectName,
                          "namespace": Namespace}, required=("group", "kind", "name")),
}, required=("controllerName",))
