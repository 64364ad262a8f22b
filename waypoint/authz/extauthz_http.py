"""The check an HTTP ext_authz provider (MeshConfig `envoyExtAuthzHttp`) gets, and what its answer
means: Envoy's raw HTTP authorization client (source/extensions/filters/common/ext_authz/
ext_authz_http_impl.cc), as Istio configures it (pilot/pkg/security/authz/builder/extauthz.go).

The check request:
- the original request's method, `pathPrefix` + its path (with the query), its Host/:authority;
- its `authorization` header always, and the headers `includeRequestHeadersInCheck` names
  (Envoy's `allowed_headers`: exact, "prefix*", "*suffix", case-insensitive), one line per name
  with repeated values joined by ","; never hop-by-hop headers or the original Content-Length;
- `includeAdditionalHeadersInCheck`, set over whatever came from the request;
- `Content-Length: 0` and no body, or the buffered body (`includeRequestBodyInCheck`).

The answer:
- 200 allows: the response headers `headersToUpstreamOnAllow` names are set on the request (none
  when empty), those `headersToDownstreamOnAllow` names are added to the response (none when
  empty), and `x-envoy-auth-headers-to-remove: a, b` removes request headers;
- 5xx is an error (the authorizer failed, it did not decide): `statusOnError` or failOpen;
- any other status denies with that status and body, and the authorizer's headers: all but Host
  when `headersToDownstreamOnDeny` is empty, else those it names plus Content-Length,
  WWW-Authenticate and Location (Envoy's `toClientMatchers`).
"""

from __future__ import annotations

from collections.abc import Sequence
from http import HTTPStatus

from ambit.model import ExtAuthzProvider
from waypoint.authz.extauthz import (
    ADD,
    ALLOWED,
    DENIED,
    REPLY_FRAMING,
    TRACE_HTTP_STATUS,
    TRACE_OK,
    TRACE_STATUS,
    TRACE_UNAUTHZ,
    CheckResult,
    error,
    name_matcher,
)
from waypoint.http.headers import HOP_BY_HOP
from waypoint.request import RequestHead

ALWAYS = ("authorization",)     # with :method, :path and Host, which the head carries
DENY_DEFAULTS = ("content-length", "www-authenticate", "location")
HEADERS_TO_REMOVE = "x-envoy-auth-headers-to-remove"


def check_request(p: ExtAuthzProvider, head: RequestHead, body: bytes = b"") -> tuple[RequestHead, bytes]:
    """The check request for `head` (and its buffered `body`, when the provider includes it)."""
    wanted = name_matcher((*ALWAYS, *p.include_request_headers))
    headers: list[tuple[str, str]] = []
    seen: set[str] = set()
    for k, _ in head.headers:
        if k in seen or k in HOP_BY_HOP or k == "content-length" or k.startswith(":") or not wanted(k):
            continue
        seen.add(k)
        value = head.header(k)
        if value is not None:
            headers.append((k, value))
    for k, v in sorted(p.include_additional_headers.items()):
        k = k.lower()
        headers = [(n, x) for n, x in headers if n != k]
        headers.append((k, v))
    headers.append(("content-length", str(len(body))))
    path = head.path if head.path.startswith("/") or not head.path else "/" + head.path
    return RequestHead(head.method, p.path_prefix + path, head.authority, "http", headers, "1.1"), body


def interpret(p: ExtAuthzProvider, status: int, headers: Sequence[tuple[str, str]], body: bytes) -> CheckResult:
    """The authorizer's response as a `CheckResult`."""
    if 500 <= status <= 599:
        return error(f"authorizer answered {status}")
    if status == 200:
        up = name_matcher(p.headers_to_upstream_on_allow)
        down = name_matcher(p.headers_to_downstream_on_allow)
        remove: list[str] = []
        for k, v in headers:
            if k.lower() == HEADERS_TO_REMOVE:
                remove += [n.strip().lower() for n in v.split(",") if n.strip()]
        kept = [(k.lower(), v) for k, v in headers if k.lower() != HEADERS_TO_REMOVE]
        return CheckResult(ALLOWED, upstream_set=tuple((k, v) for k, v in kept if up(k)),
                           upstream_remove=tuple(remove),
                           downstream=tuple((ADD, k, v) for k, v in kept if down(k)))
    if p.headers_to_downstream_on_deny:
        deny = name_matcher((*p.headers_to_downstream_on_deny, *DENY_DEFAULTS))
    else:
        def deny(name: str) -> bool:
            return name != "host"
    reply = tuple((k.lower(), v) for k, v in headers if deny(k.lower()) and k.lower() not in REPLY_FRAMING)
    return CheckResult(DENIED, status=status, body=body, reply_headers=reply,
                       reason=f"authorizer answered {status}")


def span_tags(status: int) -> dict[str, str]:
    """The check span's tags for the authorizer's answer `status`, as Envoy's raw HTTP client sets
    them (`onBeforeFinalizeUpstreamSpan`): the status's reason phrase (Envoy's
    CodeUtility::toString: "OK", "Forbidden"), and ok for 200, unauthorized for any other status
    (a 5xx too: Envoy tags the answer, though the filter treats it as an error)."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Unknown"
    return {TRACE_HTTP_STATUS: phrase, TRACE_STATUS: TRACE_OK if status == 200 else TRACE_UNAUTHZ}
