"""CORS for one route: Envoy's CORS filter as Istio configures it from a VirtualService
`corsPolicy`, and Gateway API's HTTPRoute `CORS` filter. Pure: no I/O.

Where it runs. Istio's HTTP filter order is jwt_authn, rbac, fault, cors, router
(istio pilot/pkg/networking/core/listener_builder.go). So a request an AuthorizationPolicy denies
or a fault aborts gets no CORS headers, and a preflight the waypoint answers is never mirrored,
retried or sent to a backend. The engine calls `evaluate` past the fault filter
(waypoint/http/exchange.py); a route that answers itself (redirect, direct response) calls it in
`waypoint.routing.route`.

What it does (envoy source/extensions/filters/http/cors/cors_filter.cc):
- A request with a non-empty `Origin` is a CORS request. Its origin is allowed when one of
  `allowOrigins` matches it or matches the literal "*" (so `exact: "*"` or `regex: ".*"` allow
  every origin, as in Envoy).
- A preflight is OPTIONS with `Origin` and `Access-Control-Request-Method`. For an allowed origin
  the waypoint answers 200 itself: `access-control-allow-origin` echoes the origin, then
  `-allow-credentials: true` (allowCredentials), `-allow-methods`, `-allow-headers`, `-max-age`
  and `-expose-headers` as configured. `*` in allowMethods (allowHeaders) echoes the request's
  `Access-Control-Request-Method` (`-Headers`), which a browser accepts with or without
  credentials (Envoy's rule; Gateway API allows it).
- A preflight from an origin not allowed goes on to the backend (`unmatchedPreflights: FORWARD`,
  Istio's default), or (IGNORE) gets the 200 without `access-control-allow-origin`, so the browser
  refuses the actual request.
- Any other response to an allowed origin (the backend's, a direct response, a redirect, a local
  reply after routing such as 503) gets `-allow-origin`, `-allow-credentials` and
  `-expose-headers` set, replacing the backend's own. An origin not allowed: untouched.

Beyond Envoy, for Gateway API: origins written as Gateway API `CORSOrigin`s
(`https://*.example.com`, `http://a.example:8080`, `*`), compared by scheme, host and port with
the scheme's default port filled in, `*.` covering any number of labels; and `exposeHeaders: ["*"]`
with credentials, where a browser reads `*` as a header named "*" (the Fetch standard), exposes
the response's own header names instead, as Gateway API requires.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ambit.duration import parse_go_duration
from ambit.model import StringMatch
from waypoint.localreply import local_reply
from waypoint.request import LocalReply, RequestHead
from waypoint.routing.matchers import StringMatcher

ALLOW_ORIGIN = "access-control-allow-origin"
ALLOW_CREDENTIALS = "access-control-allow-credentials"
ALLOW_METHODS = "access-control-allow-methods"
ALLOW_HEADERS = "access-control-allow-headers"
EXPOSE_HEADERS = "access-control-expose-headers"
MAX_AGE = "access-control-max-age"
_RESPONSE_NAMES = frozenset({ALLOW_ORIGIN, ALLOW_CREDENTIALS, EXPOSE_HEADERS})
# Exposed to scripts whatever a response says (Fetch: CORS-safelisted response-header names).
_SAFELISTED = frozenset({"cache-control", "content-language", "content-length", "content-type", "expires",
                         "last-modified", "pragma"})
_DEFAULT_PORTS = {"http": 80, "https": 443}
_ORIGIN = re.compile(r"([a-z][a-z0-9+.-]*)://(\[[0-9a-f:.]+\]|[^:/\[\]]+)(?::([0-9]{1,5}))?", re.IGNORECASE)
_KEYS = frozenset({"allowOrigins", "allowOrigin", "allowMethods", "allowHeaders", "exposeHeaders", "maxAge",
                   "allowCredentials", "unmatchedPreflights"})


@dataclass(frozen=True, slots=True)
class GatewayOrigin:
    """A Gateway API CORSOrigin: `*`, or `scheme://host[:port]` whose host may be `*` or `*.suffix`."""

    scheme: str = ""            # "" with host "*": every origin
    host: str = "*"             # "*", "*.example.com" or a name
    port: int = 0

    @classmethod
    def parse(cls, text: str) -> GatewayOrigin:
        if text == "*":
            return cls()
        m = _ORIGIN.fullmatch(text)
        if m is None:
            raise ValueError(f"CORS origin {text!r} is not scheme://host[:port] or *")
        scheme = m.group(1).lower()
        return cls(scheme, m.group(2).lower(), int(m.group(3)) if m.group(3) else _DEFAULT_PORTS.get(scheme, 0))

    def matches(self, origin: str) -> bool:
        if not self.scheme:
            return True
        m = _ORIGIN.fullmatch(origin)
        if m is None:
            return False        # "null" (an opaque origin) or garbage: only `*` allows it
        scheme, host = m.group(1).lower(), m.group(2).lower()
        port = int(m.group(3)) if m.group(3) else _DEFAULT_PORTS.get(scheme, 0)
        if scheme != self.scheme or port != self.port:
            return False
        if self.host == "*":
            return True
        if self.host.startswith("*."):
            return host.endswith(self.host[1:]) and len(host) > len(self.host) - 1
        return host == self.host


@dataclass(frozen=True, slots=True)
class CorsPolicy:
    origins: tuple[StringMatcher | GatewayOrigin, ...]
    allow_credentials: bool = False
    allow_methods: str = ""
    allow_headers: str = ""
    expose_headers: str = ""
    max_age: str = ""
    forward_unmatched: bool = True      # unmatchedPreflights FORWARD (Istio's default) | IGNORE
    expose_all: bool = False            # exposeHeaders ["*"] with credentials: the response's names

    def allows(self, origin: str) -> bool:
        for m in self.origins:
            if isinstance(m, GatewayOrigin):
                if m.matches(origin):
                    return True
            elif m.matches("*") or m.matches(origin):
                return True
        return False


@dataclass(frozen=True, slots=True)
class CorsResponse:
    """The headers an allowed origin's responses get (Envoy's `encodeHeaders`)."""

    origin: str
    credentials: bool
    expose: str
    expose_all: bool

    def apply(self, headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
        out = [(k, v) for k, v in headers if k not in _RESPONSE_NAMES]
        out.append((ALLOW_ORIGIN, self.origin))
        if self.credentials:
            out.append((ALLOW_CREDENTIALS, "true"))
        if self.expose_all:
            names = sorted({k for k, _ in out if k not in _SAFELISTED and not k.startswith("access-control-")})
            if names:
                out.append((EXPOSE_HEADERS, ", ".join(names)))
        elif self.expose:
            out.append((EXPOSE_HEADERS, self.expose))
        return out


def compile_cors(d: dict[str, Any] | None) -> CorsPolicy | None:
    """The route's `cors` (ambit.model.HttpRoute: Istio's corsPolicy by its field names, as the
    controller validated it; Gateway API origins as `{"origin": ...}`). ValueError for a field this
    version does not know, when it is set (the version-skew rule: never ignore a set field)."""
    if not d:
        return None
    unknown = sorted(k for k, v in d.items() if k not in _KEYS and v not in (None, "", [], {}, False))
    if unknown:
        raise ValueError(f"corsPolicy.{unknown[0]}: a field this version of Ambit does not know")
    origins: list[StringMatcher | GatewayOrigin] = []
    for o in d.get("allowOrigins") or [{"exact": s} for s in d.get("allowOrigin") or []]:
        if "origin" in o:
            origins.append(GatewayOrigin.parse(o["origin"]))
            continue
        kind = next((k for k in ("exact", "prefix", "regex") if k in o), None)
        if kind is None:
            raise ValueError(f"corsPolicy.allowOrigins: unknown match {sorted(o)}")
        origins.append(StringMatcher.compile(StringMatch(kind, str(o[kind]))))
    max_age = d.get("maxAge")
    if isinstance(max_age, str):
        max_age = int(parse_go_duration(max_age))     # Istio sends whole seconds (its MaxAge.GetSeconds)
    expose = list(d.get("exposeHeaders") or [])
    credentials = bool(d.get("allowCredentials"))
    return CorsPolicy(origins=tuple(origins), allow_credentials=credentials,
                      allow_methods=",".join(d.get("allowMethods") or []),
                      allow_headers=",".join(d.get("allowHeaders") or []),
                      expose_headers=",".join(expose), max_age="" if max_age is None else str(int(max_age)),
                      forward_unmatched=d.get("unmatchedPreflights") != "IGNORE",
                      expose_all=credentials and expose == ["*"])


def evaluate(policy: CorsPolicy, head: RequestHead) -> LocalReply | CorsResponse | None:
    """A preflight's answer (a `LocalReply`), the headers an allowed origin's response gets, or
    None: not a CORS request, or an origin not allowed (whose preflight goes on as a request)."""
    origin = head.header("origin")
    if not origin:
        return None
    allowed = policy.allows(origin)
    if head.method == "OPTIONS":
        method = head.header("access-control-request-method")
        if method:
            if not allowed and policy.forward_unmatched:
                return None
            return local_reply(head, 200, headers=_preflight_headers(policy, head, origin, method, allowed),
                               reason="CORS preflight" if allowed else "CORS preflight from an origin not allowed")
    if not allowed:
        return None
    return CorsResponse(origin, policy.allow_credentials, policy.expose_headers, policy.expose_all)


def _preflight_headers(p: CorsPolicy, head: RequestHead, origin: str, method: str,
                       allowed: bool) -> tuple[tuple[str, str], ...]:
    h: list[tuple[str, str]] = []
    if allowed:
        h.append((ALLOW_ORIGIN, origin))
    if p.allow_credentials:
        h.append((ALLOW_CREDENTIALS, "true"))
    if p.allow_methods:
        h.append((ALLOW_METHODS, method if p.allow_methods == "*" else p.allow_methods))
    if p.allow_headers:
        requested = head.header("access-control-request-headers")
        if p.allow_headers != "*":
            h.append((ALLOW_HEADERS, p.allow_headers))
        elif requested:
            h.append((ALLOW_HEADERS, requested))
    if p.max_age:
        h.append((MAX_AGE, p.max_age))
    if allowed and p.expose_headers and not p.expose_all:
        h.append((EXPOSE_HEADERS, p.expose_headers))
    return tuple(h)
