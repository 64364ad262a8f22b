"""`route()`: one request in, one decision out. Pure: the random source is injected.

Order, as Istio configures Envoy:
1. Choose the host (`RouteTable.host_for`). A destination the waypoint knows but that has no
   routes for the request's port and source namespace (`HostRoutes.routes_for`) gets the default
   route to itself, as Istio gives a Service behind a waypoint with no VirtualService or HTTPRoute
   (and as Gateway API's mesh-ports conformance test expects of a port the route's parentRef does
   not name). A request addressed to a workload
   (no Service) is forwarded to its original destination: `Forward(service="", route="passthrough")`.
   An unknown host gets 404, flag NR.
2. The first route (in the table's order: VirtualService order, then Gateway API precedence, as
   the controller sorted them) with a matching `HttpMatch` wins; no match is 404 NR.
3. The route answers itself (`directResponse`, `redirect`, with its CORS policy applied first:
   `waypoint.routing.cors`) or forwards to one destination chosen
   by weight, with its path/authority rewritten and the header operations of the destination and
   the route composed (the route's applied last, see `headers`). A Gateway API backendRef's own
   RequestRedirect answers when that backend is chosen, and its URLRewrite replaces the route's. A rule with session persistence
   goes to the backend of the endpoint the request's session names, if any does (weight 0
   included), before the weights are drawn (`waypoint.traffic.session`).

Errors that are the configuration's, not the client's:
- every weight 0 (or an empty Gateway API rule, which the controller turns into a direct response)
  gives 500, as Gateway API requires;
- a Gateway API backend that is not a known Service gives 500 (Gateway API: requests to an
  invalid backend MUST get 500);
- a VirtualService destination that is not a known Service, or names a subset no DestinationRule
  defines, gives 503 with response flag NC (Envoy: the cluster does not exist).
"""

from __future__ import annotations

import dataclasses
import functools

from ambit.httpfields import wire_value
from ambit.model import Redirect, RouteDestination
from waypoint.localreply import local_reply
from waypoint.request import Decision, Downstream, Forward, HeaderOps, LocalReply, RequestHead
from waypoint.routing import cors
from waypoint.routing.matchers import RequestMatcher, StringMatcher
from waypoint.routing.paths import regex_rewrite, replace_full, replace_prefix
from waypoint.routing.redirect import location
from waypoint.routing.table import CompiledDestination, CompiledRoute, RouteTable
from waypoint.routing.weights import RandomSource, choose
from waypoint.traffic import session

NO_ROUTE = "NR"
NO_CLUSTER = "NC"
PASSTHROUGH = "passthrough"     # Forward.route when service is "": go to Downstream.destination_ip
DEFAULT = "default"             # Forward.route of a Service's default route (no configured route)


def route(table: RouteTable, head: RequestHead, down: Downstream, rand: RandomSource,
          endpoints: session.Endpoints | None = None) -> Decision:
    """`endpoints`: what a rule with session persistence needs to find the backend of the endpoint
    a request's session names (waypoint/traffic/session.py `sticky`); None: weights alone decide."""
    host = table.host_for(head, down)
    if host is None:
        if down.service:
            return _default(down.service, down.destination_port, down.hostname)
        if down.destination_ip:     # a workload address: on to the original destination
            return Forward(service="", port=down.destination_port, route=PASSTHROUGH)
        return local_reply(head, 404, flags=NO_ROUTE, reason=f"no route for host {head.authority!r}")
    port = down.destination_port
    routes = host.routes_for(port, down.source_namespace)
    if not routes:
        if host.service:
            return _default(host.service, port, host.hostname)
        return local_reply(head, 404, flags=NO_ROUTE, reason=f"no routes for host {host.hostname}")
    for r in routes:
        matched = _match(r, head, down)
        if matched is not False:
            return _decide(table, r, matched, head, down, rand, endpoints)
    return local_reply(head, 404, flags=NO_ROUTE, reason=f"no route of {host.hostname} matched")


def _dest_of(c: CompiledDestination) -> RouteDestination:
    return c.dest


@functools.lru_cache(maxsize=1024)
def _default(service: str, port: int, hostname: str) -> Forward:
    """A Service's default route: a frozen Forward per (service, port, hostname), made once
    rather than per request (a frozen dataclass sets each of its ten fields through object)."""
    return Forward(service=service, port=port, hostname=hostname, route=DEFAULT)


def _match(r: CompiledRoute, head: RequestHead, down: Downstream) -> RequestMatcher | None | bool:
    """The matcher that matched (None for a route without matches), or False."""
    if not r.matchers:
        return None
    for m in r.matchers:
        if m.matches(head, down):
            return m
    return False


def _reply_headers(r: CompiledRoute, base: list[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    return tuple(r.response_headers.apply(base)) if r.response_headers != HeaderOps() else tuple(base)


def _answer(r: CompiledRoute, head: RequestHead, down: Downstream, path_matcher: StringMatcher | None,
            redirect: Redirect | None = None) -> LocalReply:
    """A route that answers itself: a redirect (`redirect`: the chosen backendRef's, else the
    route's), else its direct response. Envoy's CORS filter runs before its router, so a preflight
    gets the CORS answer and any other request from an allowed origin gets the CORS headers on the
    route's reply."""
    c = cors.evaluate(r.policy.cors, head) if r.policy is not None and r.policy.cors is not None else None
    if isinstance(c, LocalReply):
        return dataclasses.replace(c, route=r.name)
    model = r.route
    redirect = redirect or model.redirect
    if redirect is not None:
        loc = location(redirect, head, down, path_matcher)
        status, body, base, reason = redirect.code, b"", [("location", loc)], "redirect"
    else:
        assert model.direct_response is not None
        d = model.direct_response
        status, body, base, reason = d.status, d.payload, [], "direct response"
    headers = _reply_headers(r, base)
    if c is not None:
        headers = tuple(c.apply(list(headers)))
    return local_reply(head, status, body, headers=headers, route=r.name, reason=reason)


def _decide(table: RouteTable, r: CompiledRoute, matched: RequestMatcher | None, head: RequestHead,
            down: Downstream, rand: RandomSource, endpoints: session.Endpoints | None = None) -> Decision:
    model = r.route
    path_matcher: StringMatcher | None = matched.path if matched is not None else None
    # Istio checks redirect before directResponse (route.go TranslateRoute); validation refuses both
    # on one route, as istiod does, and a fault beside either (answered here, no fault is ever injected)
    if model.redirect is not None or model.direct_response is not None:
        return _answer(r, head, down, path_matcher)
    chosen = None
    if r.session is not None and endpoints is not None:     # a session's backend, whatever the weights
        chosen = session.sticky(r.session, head, r.destinations, _dest_of, down.destination_port, endpoints)
    if chosen is None:
        chosen = choose(r.destinations, r.weights, rand) if r.destinations else None
    if chosen is None:
        return local_reply(head, 500, route=r.name, reason="no destination has a weight above 0")
    dest = chosen.dest
    if not dest.service:
        if r.gateway_api:
            return local_reply(head, 500, route=r.name, reason=f"backend {dest.host} is not a known Service")
        return local_reply(head, 503, flags=NO_CLUSTER, route=r.name,
                           reason=f"destination {dest.host} is not a known Service")
    if dest.subset and table.subset_labels(dest.host, dest.subset) is None:
        return local_reply(head, 503, flags=NO_CLUSTER, route=r.name,
                           reason=f"subset {dest.subset!r} of {dest.host} is not defined by a DestinationRule")
    if dest.redirect is not None:       # a Gateway API backendRef's RequestRedirect
        return _answer(r, head, down, path_matcher, dest.redirect)
    port = dest.port or down.destination_port
    # a backendRef's URLRewrite replaces the route's (Gateway API: applied when that backend is chosen)
    rw = model.rewrite if dest.rewrite is None else dest.rewrite
    regex = r.rewrite_regex if dest.rewrite is None else None
    static = rw is None or not (rw.path or regex is not None)
    if static:
        fwd = chosen.forwards.get(port)
        if fwd is not None:
            return fwd
    path = None
    authority = None
    if rw is not None:      # (configured text goes on the wire as its UTF-8 bytes: `wire_value`)
        if regex is not None:
            path = regex_rewrite(head.path, regex, wire_value(rw.regex_substitution))
        elif rw.path and rw.path_mode == "full":
            path = replace_full(head.path, wire_value(rw.path))
        elif rw.path:
            path = replace_prefix(head.path, path_matcher, wire_value(rw.path))
        authority = wire_value(rw.authority) or None
    authority = authority or chosen.authority or r.authority
    fwd = Forward(service=dest.service, port=port, subset=dest.subset, hostname=dest.host, path=path,
                  authority=authority, request_headers=chosen.request_headers,
                  response_headers=chosen.response_headers, route=r.name, policy=r.policy)
    if static and len(chosen.forwards) < 64:
        chosen.forwards[port] = fwd
    return fwd
