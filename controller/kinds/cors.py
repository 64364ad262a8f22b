"""CORS as the two APIs write it: a VirtualService `corsPolicy` (Istio's validation rules) and a
Gateway API HTTPRoute `CORS` filter (its CRD's patterns, limits and CEL rules, which the API server
applies in a cluster and the lab store does not).

Both end up as header values the waypoint sends (waypoint/routing/cors.py), so every method and
header name is checked here: a value with a comma, a space or a line break would change or split
the `Access-Control-*` headers of every response on the route.
"""

from __future__ import annotations

import re
from typing import Any

from controller.kinds.common import Duration, StringMatch, Strings, header_name_reason, parse_duration
from controller.kinds.schema import Arr, Bool, Errors, Int, Obj, Str, join

# Istio's validateHTTPMethod (Go's net/http methods); Gateway API's enum adds "*".
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS", "TRACE")

HeaderName = Str(valid=header_name_reason)


def _check_vs_cors(value: dict[str, Any], path: str, errs: Errors) -> None:
    for i, o in enumerate(value.get("allowOrigins") or []):
        # Istio's validateAllowOrigins: an empty exact or prefix would allow every origin unseen.
        if isinstance(o, dict) and any(o.get(k) == "" for k in ("exact", "prefix", "regex")):
            errs.append((join(join(path, "allowOrigins"), i),
                         "'' is not a valid match type for CORS allow origins (use exact: \"*\" to allow every origin)"))
    age = value.get("maxAge")
    if isinstance(age, str):
        try:
            whole = parse_duration(age).is_integer()
        except ValueError:
            return      # the Duration node reports it
        if not whole:   # Istio's message: Access-Control-Max-Age is whole seconds
            errs.append((join(path, "maxAge"), "max_age duration is accurate only to seconds precision"))


CorsPolicy = Obj({
    # an empty origin is refused by _check_vs_cors, with Istio's message for origins
    "allowOrigins": Arr(StringMatch(empty_prefix=True)), "allowOrigin": Strings,
    "allowMethods": Arr(Str(enum=HTTP_METHODS)), "allowHeaders": Arr(HeaderName), "exposeHeaders": Arr(HeaderName),
    "maxAge": Duration(), "allowCredentials": Bool(),
    "unmatchedPreflights": Str(enum=("UNSPECIFIED", "FORWARD", "IGNORE")),
}, checks=(_check_vs_cors,))

# Gateway API CORSOrigin (its CRD pattern).
_GW_ORIGIN = re.compile(r"(^\*$)|(^(http(s)?)://(((\*\.)?([a-zA-Z0-9\-]+\.)*[a-zA-Z0-9-]+|\*)(:([0-9]{1,5}))?)$)")


def gw_origin_reason(text: str) -> str | None:
    m = _GW_ORIGIN.fullmatch(text)
    if m is None or len(text) > 253:
        return (f'must be "*" or scheme://host[:port] with scheme http or https and a host that may start '
                f'with "*." (Gateway API CORSOrigin), got "{text}"')
    port = m.group(10)
    if port is not None and not 1 <= int(port) <= 65535:
        return f"port {port} is not between 1 and 65535"
    return None


# (field, most items, the CRD's CEL message for "*" with others; None: "*" is no wildcard there)
_GW_LISTS = (("allowOrigins", 64, "AllowOrigins cannot contain '*' alongside other origins"),
             ("allowMethods", 9, "AllowMethods cannot contain '*' alongside other methods"),
             ("allowHeaders", 64, "AllowHeaders cannot contain '*' alongside other methods"),
             ("exposeHeaders", 64, None))


def _check_gw_cors(value: dict[str, Any], path: str, errs: Errors) -> None:
    for name, most, star in _GW_LISTS:
        items = value.get(name)
        if not isinstance(items, list):
            continue
        where = join(path, name)
        if len(items) > most:
            errs.append((where, f"must have at most {most} items, got {len(items)}"))
        if star is not None and "*" in items and len(items) > 1:
            errs.append((where, star))
        seen: set[str] = set()
        for i, v in enumerate(items):
            if not isinstance(v, str):
                continue
            if v in seen:       # x-kubernetes-list-type: set
                errs.append((join(where, i), f'Duplicate value: "{v}"'))
            seen.add(v)


HTTPCORSFilter = Obj({
    "allowOrigins": Arr(Str(valid=gw_origin_reason)), "allowCredentials": Bool(),
    "allowMethods": Arr(Str(enum=(*HTTP_METHODS, "*"))),
    "allowHeaders": Arr(HeaderName), "exposeHeaders": Arr(HeaderName),
    "maxAge": Int(minimum=1),
}, checks=(_check_gw_cors,))
