"""From a CUSTOM policy's match to the decision after its check: the `Hold` the waypoint's decide
returns (waypoint.request), and the pure step from a check's answer to what happens to the request
(`after_check`). The order is Istio's filter chain: RequestAuthentication, then the ext_authz check
(this), then DENY/ALLOW (waypoint/authz/evaluate.py), then routing. The route is chosen before the
check, as Envoy resolves it before its ext_authz filter runs, and kept after it: Istio configures
no `clear_route_cache`, so the headers a check adds never choose another route.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

from ambit.model import ExtAuthzProvider
from waypoint.authz import extauthz_grpc, extauthz_http
from waypoint.authz.custom import Custom
from waypoint.authz.extauthz import ALLOWED, DENIED, UAEX, CheckResult, edit_request, edit_response, error
from waypoint.localreply import local_reply
from waypoint.request import Decision, Downstream, Forward, Hold, LocalReply, RequestHead, SubReply

log = logging.getLogger("ambit.waypoint.authz")

Then = Callable[[], Decision]           # DENY/ALLOW, then the route chosen before the check
Count = Callable[[str, str], None]      # (provider, result)


def hold(c: Custom, head: RequestHead, down: Downstream, local_identity: str, then: Then, count: Count,
         default_body_limit: int) -> Decision | Hold:
    """The hold for a request a CUSTOM policy's rule matched (`c.action` CHECK), or at once the
    decision for a check that cannot be sent (its Service is unknown: an error)."""
    p = c.provider
    assert p is not None
    if not c.service:
        return after_check(p, c.policy, error(f"no Service has the hostname {p.service!r}"), head, then, count)
    b = p.include_body
    limit = -1 if b is None else (b.max_request_bytes or default_body_limit)
    if p.kind == "grpc":
        def build(body: bytes | None, partial: bool) -> tuple[RequestHead, bytes]:
            msg = extauthz_grpc.check_message(head, down, local_identity, head.header("x-request-id") or "", body,
                                              partial, b.pack_as_bytes if b is not None else False)
            return extauthz_grpc.check_request(p, c.hostname, msg)
    else:
        def build(body: bytes | None, partial: bool) -> tuple[RequestHead, bytes]:
            return extauthz_http.check_request(p, head, body or b"")

    def resume(reply: SubReply | None, why: str) -> Decision:
        if reply is None:
            r = error(why)
        elif p.kind == "grpc":
            r = extauthz_grpc.interpret(reply.status, reply.headers, reply.body, reply.trailers)
        else:
            r = extauthz_http.interpret(p, reply.status, reply.headers, reply.body)
        return after_check(p, c.policy, r, head, then, count)

    return Hold(Forward(c.service, p.port, hostname=c.hostname, route=f"ext_authz/{p.name}"), build, resume,
                h2=p.kind == "grpc", timeout=p.timeout, body_limit=limit,
                partial_ok=b.allow_partial_message if b is not None else False,
                span_tags=_grpc_span_tags if p.kind == "grpc" else _http_span_tags)


def _http_span_tags(reply: SubReply) -> dict[str, str]:
    return extauthz_http.span_tags(reply.status)


def _grpc_span_tags(reply: SubReply) -> dict[str, str]:
    """(The reply is read a second time, for a traced request only: `resume` reads it for the
    decision, after the check's span has ended.)"""
    return extauthz_grpc.span_tags(extauthz_grpc.interpret(reply.status, reply.headers, reply.body, reply.trailers))


def after_check(p: ExtAuthzProvider, policy: str, r: CheckResult, head: RequestHead, then: Then,
                count: Count) -> Decision:
    """What the request gets once its check answered `r` (Envoy's ext_authz `onComplete`)."""
    count(p.name, r.result)
    if r.result == ALLOWED:
        if r.edits_request:
            head.headers = edit_request(head.headers, r)
        d = then()
        if r.downstream:
            if isinstance(d, LocalReply):     # (a route's redirect, 404 ...: Envoy's encodeHeaders adds them too)
                return dataclasses.replace(d, headers=tuple(edit_response(d.headers, r.downstream)))
            return dataclasses.replace(d, response_edits=d.response_edits + r.downstream)
        return d
    if r.result == DENIED:
        return local_reply(head, r.status, r.body, flags=UAEX, headers=r.reply_headers,
                           reason=f"ext_authz {p.name} (policy {policy}) denied: {r.reason}")
    log.error("ext_authz provider %s (policy %s): check of %s %s failed: %s; %s", p.name, policy, head.method,
              head.path_only, r.reason, "allowed unchecked (failOpen)" if p.fail_open
              else f"answered {p.status_on_error} (statusOnError)")
    if p.fail_open:
        return then()
    return local_reply(head, p.status_on_error, flags=UAEX,
                       reason=f"ext_authz {p.name} (policy {policy}) error: {r.reason}")

