"""Value types shared by the kinds: durations, regexes, ports, CIDRs, selectors, names.

Each is a schema node (see `schema.py`) plus, where translation needs it, a parser, so that the
validator and the translator agree on what a value means.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from ambit.dataplane.ports import INGRESS_POD_PORTS
from ambit.duration import parse_go_duration
from ambit.httpfields import PROXY_OWNED_HEADERS, REQUEST_PSEUDO_HEADERS
from ambit.regex import check_re2
from controller.kinds.schema import Arr, Errors, Int, Map, Num, Obj, Str, join

# -- durations -------------------------------------------------------------------------------------

GO_DURATION_PATTERN = r"^(0|([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+)$"


parse_duration = parse_go_duration     # Go/Istio durations, in seconds (ambit/duration.py)


def _check_duration(text: str) -> str | None:
    try:
        parse_duration(text)
    except ValueError:
        return f'must be a duration such as "1.5s", "300ms" or "2m", got "{text}"'
    return None


def _check_positive_duration(text: str) -> str | None:
    reason = _check_duration(text)
    if reason:
        return reason
    if parse_duration(text) < 0.001:
        return f'must be a duration of at least 1ms, got "{text}"'
    return None


def _check_off_or_positive_duration(text: str) -> str | None:
    reason = _check_duration(text)
    if reason:
        return reason
    if 0 < parse_duration(text) < 0.001:
        return f'must be 0 (none) or a duration of at least 1ms, got "{text}"'
    return None


def Duration(description: str = "", positive: bool = False, off: bool = False) -> Str:  # noqa: N802
    """A Go duration. `positive`: at least 1ms, as Istio's CRDs require (`duration(self) >=
    duration('1ms')`). `off`: 0 too, where Ambit reads 0 as "none" (a route timeout), but nothing
    between: a sub-millisecond value is below what Envoy and Istio honour."""
    check = _check_off_or_positive_duration if off else _check_positive_duration if positive else _check_duration
    return Str(valid=check, pattern=GO_DURATION_PATTERN, description=description)


# Gateway API durations (GEP-2257): up to four parts of 1-5 digits with h, m, s or ms; no fractions.
GW_DURATION_PATTERN = r"^([0-9]{1,5}(h|m|s|ms)){1,4}$"
_GW_DURATION = re.compile(GW_DURATION_PATTERN)


def _check_gw_duration(text: str) -> str | None:
    if not _GW_DURATION.fullmatch(text):
        return f'must be a Gateway API duration such as "10s", "500ms" or "1h30m", got "{text}"'
    return None


GwDuration = Str(valid=_check_gw_duration, pattern=GW_DURATION_PATTERN)


# -- regular expressions -----------------------------------------------------------------------

def check_regex(text: str) -> str | None:
    """Reason a pattern is unusable, or None. Patterns are compiled with RE2 (google-re2), as Envoy
    and Istio compile them and as the waypoint does (`ambit.regex`), so what validation accepts is
    exactly what the waypoint can run: no lookaround, backreferences, atomic groups or possessive
    quantifiers, and RE2's own syntax ([[:alpha:]], \\pL) is accepted."""
    reason = check_re2(text)
    if reason is not None:
        return f"must be a valid RE2 regular expression: {reason}"
    return None


Regex = Str(valid=check_regex)


# -- ports, addresses, names ---------------------------------------------------------------------

Port = Int(minimum=1, maximum=65535)

# Istio's int32 and uint32 counters (its CRDs' `format: int32` and `maximum: 4294967295`): a larger
# value is refused by Istio's API server and cannot be carried by its protobuf.
Int32 = Int(minimum=0, maximum=2**31 - 1)
UInt32 = Int(minimum=0, maximum=2**32 - 1)


def check_ingress_port(port: int, path: str, errs: Errors) -> None:
    """An ingress gateway listener's port must not be one its pod binds for itself: it could never be
    bound, and only the listener's status at run time (`Accepted=False PortUnavailable`) would say so.
    Istio documents these ports as its proxy's own ("Ports used by Istio") and skips a gateway server
    that conflicts with them at run time, with a log line; here the object is refused up front."""
    what = INGRESS_POD_PORTS.get(port)
    if what is not None:
        errs.append((path, f"port {port} is reserved by the ingress gateway pod for {what}; a listener there "
                           f"could never bind: use another port (reserved: "
                           f"{', '.join(map(str, sorted(INGRESS_POD_PORTS)))})"))


def _check_port_string(text: str) -> str | None:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        return f'must be a port number "1".."65535", got "{text}"'
    return None


PortString = Str(valid=_check_port_string, pattern=r"^[0-9]+$")


def port_key(k: Any) -> str | None:
    """Map keys that are ports: YAML gives ints, JSON gives strings."""
    s = str(k) if isinstance(k, int) and not isinstance(k, bool) else k
    if not isinstance(s, str) or _check_port_string(s):
        return f"must be a port number 1..65535, got {k!r}"
    return None


def _check_cidr(text: str) -> str | None:
    """An address or `address/prefix-length`, as Istio's net/netip reads them. Python's parser also
    takes forms Istio refuses and that read unlike what they seem: a netmask or a *hostmask* after
    the slash ("10.0.0.0/0.255.255.255" is a /8), a leading-zero length, an IPv6 zone ("%eth0")."""
    bad = f'must be an IP address or CIDR such as "10.0.0.0/8", got "{text}"'
    _, slash, bits = text.partition("/")
    if "%" in text:
        return f"{bad}: an IPv6 zone (%...) names an interface, not a range"
    if slash and not (bits.isdigit() and bits.isascii() and (bits == "0" or not bits.startswith("0"))):
        return f"{bad}: after the slash goes a prefix length in decimal (0..32, 0..128)"
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        return bad
    return None


Cidr = Str(valid=_check_cidr)


def _check_ip(text: str) -> str | None:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return f'must be an IP address, got "{text}"'
    if "%" in text:
        return f'must be an IP address without an IPv6 zone (%...), got "{text}"'
    return None


IP = Str(valid=_check_ip)

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def check_subdomain(text: str) -> str | None:
    if len(text) > 253 or not _DNS1123_SUBDOMAIN.fullmatch(text):
        return f'must be a lowercase RFC 1123 name (a-z, 0-9, "-", "."), got "{text}"'
    return None


def check_label(text: str) -> str | None:
    """Why `text` is not an RFC 1123 label (a namespace name, a port name), or None."""
    if len(text) > 63 or not _DNS1123_LABEL.fullmatch(text):
        return f'must be a lowercase RFC 1123 label (a-z, 0-9, "-"), got "{text}"'
    return None


# Kubernetes label keys and values (apimachinery validation.IsQualifiedName / IsValidLabelValue).
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_NAME_RULE = ('must consist of alphanumeric characters, "-", "_" or ".", and must start and end with an '
              "alphanumeric character")


def label_key_reason(key: Any) -> str | None:
    """Why `key` is not a valid Kubernetes label key (an optional DNS subdomain prefix and "/", then a
    name of at most 63 characters), or None."""
    if not isinstance(key, str):
        return f"label keys must be strings, got {key!r}"
    prefix, slash, name = key.rpartition("/")
    if slash and not prefix:
        return f'label key "{key}": the prefix before "/" must not be empty'
    if prefix and (len(prefix) > 253 or not _DNS1123_SUBDOMAIN.fullmatch(prefix)):
        return (f'label key "{key}": the prefix "{prefix}" must be a lowercase DNS subdomain '
                '(a-z, 0-9, "-", "."; at most 253 characters)')
    if not name:
        return f'label key "{key}": the name part must not be empty'
    if len(name) > 63:
        return f'label key "{key}": the name part must be no more than 63 characters'
    if not _QUALIFIED_NAME.fullmatch(name):
        return f'label key "{key}": the name part {_NAME_RULE}'
    return None


def label_value_reason(value: Any) -> str | None:
    """Why `value` is not a valid Kubernetes label value (empty, or at most 63 characters of the name
    rule), or None."""
    if not isinstance(value, str):
        return f"label values must be strings, got {value!r}"
    if len(value) > 63:
        return f'label value "{value}": must be no more than 63 characters'
    if value and not _QUALIFIED_NAME.fullmatch(value):
        return f'label value "{value}": must be empty or {_NAME_RULE.removeprefix("must ")}'
    return None


Name = Str(valid=check_subdomain)
NamespaceName = Str(valid=check_label)
Labels = Map(Str(valid=label_value_reason), key=label_key_reason)
# Istio's CRDs bound a selector's matchLabels (maxProperties 4096) and a ServiceEntry's labels (256).
SelectorLabels = Map(Str(valid=label_value_reason), key=label_key_reason, max_entries=4096)
Strings = Arr(Str())

# -- Istio building blocks -----------------------------------------------------------------------

WorkloadSelector = Obj({"matchLabels": SelectorLabels}, description="Selects pods by labels in the policy's namespace.")

# The API group of each policy target kind Istio accepts (pilot's allowedTargetRefs); a targetRef
# whose group is another binds nothing in Istio (its policy matcher compares group and kind), so it
# is refused. An empty group is read as the kind's own (Istio reads it as core: only a Service).
TARGET_GROUPS = {
    "Gateway": ("", "gateway.networking.k8s.io"),
    "Service": ("", "core"),
    "GatewayClass": ("", "gateway.networking.k8s.io"),
    "ServiceEntry": ("", "networking.istio.io", "networking.ambit.io"),
}
TARGET_KINDS = tuple(TARGET_GROUPS)


def _check_target(ref: dict[str, Any], path: str, errs: Errors) -> None:
    """One targetRef of a policy (AuthorizationPolicy, RequestAuthentication, Telemetry), as Istio
    checks it: no namespace (its CRDs refuse any value, so one namespace cannot lock down, open up
    or reconfigure another namespace's waypoint or Services), and one of the target kinds with that
    kind's group."""
    if ref.get("namespace"):
        errs.append((join(path, "namespace"), f'cross namespace referencing is not currently supported (got '
                                              f'"{ref["namespace"]}"): a policy binds targets in its own namespace '
                                              "only; leave namespace empty"))
    kind, group = ref.get("kind"), ref.get("group") or ""
    if kind not in TARGET_GROUPS:
        errs.append((join(path, "kind"), f"must be one of {', '.join(TARGET_KINDS)}, got \"{kind}\""))
    elif group not in TARGET_GROUPS[kind]:
        own = " or ".join(f'"{g}"' for g in TARGET_GROUPS[kind] if g)
        errs.append((join(path, "group"), f'a {kind} is in group {own}, got "{group}": a targetRef with another '
                                          "group binds nothing (leave group empty for the kind's own)"))


# Istio's CRD bounds the name (253, an object name: a longer one names nothing, so the policy would
# bind nothing) and the list (16).
PolicyTargetReference = Obj(
    {"group": Str(), "kind": Str(min_len=1), "name": Str(min_len=1, max_len=253), "namespace": Str()},
    required=("kind", "name"), checks=(_check_target,),
)
PolicyTargetReferences = Arr(PolicyTargetReference, max_items=16)

PortSelector = Obj({"number": Port})

Percentage = Num(minimum=0, maximum=100)
Percent = Obj({"value": Percentage}, description="A percentage 0..100.")


ISTIO_REGEX_MAX = 1024      # istiod's validateStringRegexp: Envoy's RE2 program-size bound, approximated


def istio_regex_reason(text: str) -> str | None:
    """Istio's validateStringRegexp for a VirtualService regex: not empty (it would match every
    value, where the writer meant something), at most 1024 characters, and RE2."""
    if not text:
        return "regex string match should not be empty (Istio refuses it too): it would match every value"
    if len(text) > ISTIO_REGEX_MAX:
        return (f"regex is too large, max length allowed is {ISTIO_REGEX_MAX} (Istio refuses it too), "
                f"got {len(text)} characters")
    return check_regex(text)


IstioRegex = Str(valid=istio_regex_reason)


def _empty_match_reason(text: str) -> str | None:
    if text == "":
        return ("prefix string match should not be empty (Istio refuses it too): it would match every value (to "
                "match a header's mere presence, write {})")
    return None


def StringMatch(allow_empty: bool = False, empty_prefix: bool = False) -> Obj:  # noqa: N802 - a schema constructor
    """Istio StringMatch: exactly one of exact, prefix, regex (headers may be `{}` = present), as
    istiod's validateStringMatch checks it: an empty `prefix` matches every value and is refused
    (`empty_prefix`: but not in a `uri` match, where Istio takes it), an empty or oversized
    `regex` too (a CORS origin's empty values are refused by its own check)."""
    return Obj({"exact": Str(), "prefix": Str() if empty_prefix else Str(valid=_empty_match_reason),
                "regex": IstioRegex},
               one_of=(("exact", "prefix", "regex"),), exactly_one=not allow_empty)


# -- HTTP header names and values ------------------------------------------------------------------

# RFC 9110 §5.1 field-name (a token); Gateway API's HTTPHeaderName pattern.
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")

def header_name_reason(text: Any) -> str | None:
    """Why `text` is not an HTTP header name (RFC 9110 token), or None."""
    if isinstance(text, str) and _HEADER_NAME.fullmatch(text):
        return None
    return f'must be an HTTP header name, got "{text}"'


def cookie_name_reason(text: Any) -> str | None:
    """Why `text` is not a cookie name (RFC 6265 §4.1.1: a token), or None. Another name could
    never be found in a Cookie header, and in a Set-Cookie it would add attributes or break it."""
    if isinstance(text, str) and _HEADER_NAME.fullmatch(text):
        return None
    return f'must be a cookie name (letters, digits and !#$%&\'*+-.^_`|~), got "{text}"'


def cookie_path_reason(text: str) -> str | None:
    """A Set-Cookie Path attribute: a ";" or a control character would add attributes or headers."""
    if not text.startswith("/") or len(text) > 1024 or any(c == ";" or c < " " or c == "\x7f" for c in text):
        return f'must be a path starting with "/", at most 1024 characters, without ";", got "{text[:60]}"'
    return None


def cookie_attribute_reason(text: str) -> str | None:
    """A Set-Cookie attribute value: a ";" would start another attribute, a control character end
    the header line."""
    if any(c == ";" or (c < " " and c != "\t") or c == "\x7f" for c in text):
        return f'must not contain ";" or control characters, got "{text[:60]}"'
    return None


def request_header_reason(name: Any) -> str | None:
    """Why a request match (a VirtualService `headers` key, an AuthorizationPolicy
    `request.headers[...]`) names nothing a request can carry, or None: a header name, or one of
    the request's pseudo-headers (`ambit.httpfields.REQUEST_PSEUDO_HEADERS`)."""
    if name in REQUEST_PSEUDO_HEADERS:
        return None
    if name == ":status":
        return '":status" is a response pseudo-header: no request carries it'
    return header_name_reason(name)


def _control_character(text: str) -> str | None:
    """The first control character other than HTAB in `text` (CR and LF above all), or None."""
    return next((c for c in text if (c < " " and c != "\t") or c == "\x7f"), None)


def header_value_reason(text: str) -> str | None:
    """Why `text` cannot be an HTTP header value, or None. A control character other than HTAB (CR
    and LF above all) would end the header line on an HTTP/1.1 leg: a value could inject headers
    or a whole request. Envoy refuses them in configuration too (its HTTP_HEADER_VALUE check).
    For what a route writes into a header of its own: a redirect's Location (its scheme, host and
    path), a rewritten authority (Host)."""
    bad = _control_character(text)
    if bad is None:
        return None
    return f"must not contain control characters (found {bad!r}): it would end the header line"


def request_path_reason(text: str) -> str | None:
    """Why `text` cannot be what a route rewrites a request's path to, or None: a control
    character (CR, LF) would end the request line on an HTTP/1.1 upstream, and what followed would
    be headers, or another request, of the route's making. Envoy refuses them in `prefix_rewrite`
    (its HTTP_HEADER_VALUE check); Istio passes a VirtualService's on, so the config is NACKed."""
    bad = _control_character(text)
    if bad is None:
        return None
    return f"must not contain control characters (found {bad!r}): it would end the request line"


def header_op_reason(name: Any, op: str, request: bool) -> str | None:
    """Why a route may not `op` ("set", "add" or "remove") the header `name` on a request (or a
    response), or None. Setting Host (or `:authority`) on a request rewrites the authority, as in
    Istio; any other change to a header the proxy owns, or to a pseudo-header, is refused rather
    than silently dropped."""
    if not isinstance(name, str):
        return header_name_reason(name)
    n = name.lower()
    if request and n in ("host", ":authority"):
        done = "added" if op == "add" else "removed"
        return None if op == "set" else f'"{name}" cannot be {done}: set it to rewrite the authority'
    if n.startswith(":"):
        return f'"{name}" is a pseudo-header: a route cannot modify it (only set :authority, on a request)'
    if n in PROXY_OWNED_HEADERS:
        return (f'"{name}" is a header the proxy owns (the message\'s framing or the connection\'s options): '
                "a route cannot modify it")
    return header_name_reason(name)


def header_ops_checks(request: bool) -> Any:
    """An Obj check of a header-operations object (`set`, `add`: a map, as Istio's, or a list of
    {name, value}, as Gateway API's; `remove`: names): each name must be one a route may change
    (`header_op_reason`), on a request or a response."""
    def check(value: dict[str, Any], path: str, errs: Errors) -> None:
        for op in ("set", "add", "remove"):
            items = value.get(op)
            if isinstance(items, dict):
                names = [(f"{join(path, op)}[{k}]", k) for k in items]
            elif isinstance(items, list):
                names = [(f"{join(path, op)}[{i}]" + (".name" if isinstance(e, dict) else ""),
                          e.get("name") if isinstance(e, dict) else e) for i, e in enumerate(items)]
            else:
                continue
            for where, name in names:
                why = header_op_reason(name, op, request) if name else None
                if why:
                    errs.append((where, why))
    return check
