"""External authorization (AuthorizationPolicy action CUSTOM, Envoy's ext_authz filter): what a
check decided, and the header edits it makes. Sans-IO: `extauthz_http` and `extauthz_grpc` build
the check request and read the authorizer's answer into a `CheckResult`; the exchange
(waypoint/http/authzcall.py) does the I/O; `then_decide` in waypoint/app.py acts on the result.

Envoy (source/extensions/filters/http/ext_authz/ext_authz.cc `onComplete`), which Ambit follows:
- OK: the request's headers are edited (set, appended, removed: never a pseudo-header or Host),
  the response gets the authorizer's response headers, and the request goes on to the RBAC
  filters (DENY, ALLOW) and the router. The route was chosen before the check and stays chosen
  (Istio sets no `clear_route_cache`).
- Denied: a local reply with the authorizer's status, body and headers; response flag UAEX.
- Error (the authorizer unreachable, reset, timed out; an HTTP authorizer's 5xx; a gRPC call that
  failed): `failure_mode_allow` (Istio's failOpen) lets the request go on unchecked, else a local
  reply with `status_on_error` (403 by default) and no body; flag UAEX either way it is refused.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from ambit.httpfields import PROXY_OWNED_HEADERS
from ambit.policymatch import string_match

ALLOWED, DENIED, ERROR = "allowed", "denied", "error"
RESULTS = (ALLOWED, DENIED, ERROR)
UAEX = "UAEX"       # Envoy's short response flag for UnauthorizedExternalService

Headers = tuple[tuple[str, str], ...]

# the tags Envoy's ext_authz clients put on the check's span (ext_authz.h TracingConstantValues)
TRACE_STATUS, TRACE_OK, TRACE_UNAUTHZ = "ext_authz_status", "ext_authz_ok", "ext_authz_unauthorized"
TRACE_HTTP_STATUS = "ext_authz_http_status"

# never copied from an authorizer into a local reply: the reply frames its own body
REPLY_FRAMING = frozenset({"content-length", "transfer-encoding", "host", "connection", "keep-alive",
                           "proxy-connection", "te", "trailer", "upgrade"})

# response header edits (the gRPC OkHttpResponse `response_headers_to_add` append actions)
ADD, SET, ADD_IF_ABSENT, OVERWRITE_IF_EXISTS = "add", "set", "add_if_absent", "overwrite_if_exists"


@dataclass(frozen=True, slots=True)
class CheckResult:
    """What one check decided. ALLOWED: `upstream_set`/`upstream_add` (appended to a present
    header)/`upstream_remove` edit the request, `downstream` the response ((action, name, value)). DENIED: answer `status` with
    `body` and `reply_headers`. ERROR: `reason` says why (also on DENIED, for the log)."""

    result: str
    status: int = 200
    body: bytes = b""
    upstream_set: Headers = ()
    upstream_add: Headers = ()
    upstream_remove: tuple[str, ...] = ()
    downstream: tuple[tuple[str, str, str], ...] = ()
    reply_headers: Headers = ()
    reason: str = ""

    @property
    def edits_request(self) -> bool:
        return bool(self.upstream_set or self.upstream_add or self.upstream_remove)


def error(reason: str) -> CheckResult:
    return CheckResult(ERROR, reason=reason)


def name_matcher(patterns: Iterable[str]) -> Callable[[str], bool]:
    """Istio's header-name patterns (extauthz.go `generateHeaders`: "*suffix", "prefix*", else
    exact; always case-insensitive; a lone "*" is refused by the controller) as one predicate:
    the policies' string match (ambit.policymatch) on the lower-cased name."""
    pats = tuple(p.lower() for p in patterns)

    def matches(name: str) -> bool:
        n = name.lower()
        return any(string_match(p, n) for p in pats)
    return matches


def _fixed(name: str) -> bool:
    """Headers a check may not edit: pseudo-headers and Host (Envoy's OkHttpResponse docs), and the
    others the proxy owns (ambit.httpfields): a `content-length: 0` set on a POST would make the
    rest of its body a second request on an HTTP/1.1 upstream (smuggling)."""
    return name.startswith(":") or name in PROXY_OWNED_HEADERS


def edit_request(headers: Sequence[tuple[str, str]], r: CheckResult) -> list[tuple[str, str]]:
    """The request headers after an allowing check, as ext_authz.cc `onComplete` applies them: set
    (replacing every value), append (`append: true`: joined with "," to the header's value, and
    only to a header the request has: Envoy's appendCopy on an existing entry), then remove."""
    out = list(headers)
    for k, v in r.upstream_set:
        k = k.lower()
        if _fixed(k):
            continue
        out = [(n, x) for n, x in out if n != k]
        out.append((k, v))
    for k, v in r.upstream_add:
        k = k.lower()
        i = next((i for i, (n, _) in enumerate(out) if n == k), -1)
        if i >= 0 and not _fixed(k):
            out[i] = (k, f"{out[i][1]},{v}")
    drop = {n.lower() for n in r.upstream_remove if not _fixed(n.lower())}
    if drop:
        out = [(n, x) for n, x in out if n not in drop]
    return out


def edit_response(headers: Sequence[tuple[str, str]],
                  ops: Sequence[tuple[str, str, str]]) -> list[tuple[str, str]]:
    """The response headers with an allowing check's `downstream` edits."""
    out = list(headers)
    for action, k, v in ops:
        k = k.lower()
        present = any(n == k for n, _ in out)
        if action == ADD or (action == ADD_IF_ABSENT and not present):
            out.append((k, v))
        elif action == SET or (action == OVERWRITE_IF_EXISTS and present):
            out = [(n, x) for n, x in out if n != k]
            out.append((k, v))
    return out
