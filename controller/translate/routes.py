"""VirtualService, HTTPRoute, GRPCRoute and DestinationRule into per-host WaypointRoutes.

One routing model for the waypoint, whatever API the user wrote:
- Hosts are resolved to FQDNs the way Istio does: a short name ("reviews") is relative to the
  object's namespace, "reviews.ns" and "reviews.ns.svc" are completed when such a Service exists,
  anything else is taken as written; "*" and "*.suffix" select every known Service that matches.
- VirtualService routes keep their order (first match wins). Gateway API rules are split into one
  route per match and sorted by the Gateway API precedence (exact path, longest prefix, method,
  most headers, most query params, oldest route), after any VirtualService routes for the host.
- Which hosts (and ports) an HTTPRoute/GRPCRoute applies to through its parentRefs, and which of its
  backends it may not use, is controller.translate.parents's (Service and waypoint parents,
  listeners' allowedRoutes, sectionName/port, ReferenceGrant).
- A GAMMA consumer route (an HTTPRoute/GRPCRoute attached to a Service in another namespace)
  applies only to requests from its own namespace: its matches carry that `source_namespace`, and
  it sorts before the Service's own routes (GEP-1426; conformance mesh-consumer-route).
- A VirtualService bound to `gateways` that do not include "mesh" is for ingress, not waypoints,
  and is skipped. A route that delegates is replaced by its delegate VirtualService's routes, merged
  with it (controller.translate.delegates); a delegate (no hosts) applies only that way.
- Several DestinationRules for one host are merged as Istio merges them (unique subsets
  concatenated, the oldest trafficPolicy kept: controller.translate.destinationrules); subset and
  port-level policies are merged over the host-level one per sub-message (loadBalancer,
  connectionPool, outlierDetection, tls), as Istio does.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ambit.jwtclaims import routing_claim
from ambit.model import (
    DirectResponse,
    Fault,
    HeaderMatch,
    HeaderRewrite,
    HttpMatch,
    HttpRoute,
    Mirror,
    PortPolicy,
    Redirect,
    Retry,
    Rewrite,
    RouteDestination,
    Service,
    SessionPersistence,
    StringMatch,
    Subset,
    TcpKeepalive,
    TcpRoute,
    TrafficPolicy,
    WaypointRoutes,
)
from controller.kinds.common import parse_duration
from controller.kinds.gateway import is_service_backend
from controller.kinds.networking import credential_secret
from controller.translate.blame import blame
from controller.translate.delegates import Delegation, is_delegate
from controller.translate.destinationrules import MergedRule, rules_in_force
from controller.translate.index import Index, age_key, ns_of
from controller.translate.visibility import export_text, namespace_of, visible_to
from controller.validation import object_ref

if TYPE_CHECKING:
    from controller.translate.parents import Parents

NOT_EXPORTED = "NotExported"    # a notice's cause: exportTo keeps an object from a proxy that would apply it
# a notice's cause: a VirtualService in neither the Service's namespace nor the waypoint's, which
# Istio's waypoints do not take (getVirtualServiceForWaypoint)
OUTSIDE_WAYPOINT_SCOPE = "OutsideWaypointScope"

Obj = dict[str, Any]


class Hosts:
    """Resolves route hosts to FQDNs and to known Services."""

    def __init__(self, services: list[Service], cluster_domain: str):
        self.cd = cluster_domain
        self.by_host = {s.hostname: s for s in services}
        # host names are case-insensitive (DNS; Envoy matches domains so): `Reviews` names the
        # Service `reviews`, and a ServiceEntry's `API.example.com` is matched as it is written or
        # in any case. The registry's spelling wins, so routes key on what requests resolve to.
        self._folded = {h.lower(): h for h in sorted(self.by_host, reverse=True)}

    def fqdn(self, host: str, ns: str) -> str:
        if "." not in host:
            return self._known(f"{host}.{ns}.svc.{self.cd}")
        if host.lower().endswith(".svc"):
            return self._known(f"{host}.{self.cd}")
        if host.count(".") == 1 and (short := self._known(f"{host}.svc.{self.cd}")) in self.by_host:
            return short
        return self._known(host)

    def _known(self, name: str) -> str:
        """`name` as the registry spells it, if it has it in any case; else as written."""
        if name in self.by_host:
            return name
        return self._folded.get(name.lower(), name)

    def expand(self, host: str, ns: str) -> list[str]:
        """Every FQDN a (possibly wildcard) host selects."""
        if host == "*":
            return sorted(self.by_host)
        if host.startswith("*."):
            suffix = host[1:].lower()
            return sorted(h for h in self.by_host if h.lower().endswith(suffix))
        return [self.fqdn(host, ns)]

    def routes(self, fqdn: str) -> WaypointRoutes:
        """An empty WaypointRoutes for `fqdn`, naming its Service and waypoint when it is one."""
        svc = self.by_host.get(fqdn)
        return WaypointRoutes(hostname=fqdn, namespace=svc.namespace if svc else "",
                              service=self.service_ref(fqdn), waypoint=svc.waypoint if svc else "")

    def service_ref(self, fqdn: str) -> str:
        s = self.by_host.get(fqdn)
        return f"{s.namespace}/{s.name}" if s else ""

    def destination(self, host: str, ns: str, **kw: Any) -> RouteDestination:
        fq = self.fqdn(host, ns)
        return RouteDestination(host=fq, service=self.service_ref(fq), **kw)


def _seconds(v: str | None) -> float:
    return parse_duration(v) if v else 0.0


# -- VirtualService ------------------------------------------------------------------------------

def _string_match(m: Obj | None, ignore_case: bool = False) -> StringMatch | None:
    if not m:
        return None
    for kind in ("exact", "prefix", "regex"):
        if kind in m:
            return StringMatch(kind=kind, value=m[kind], ignore_case=ignore_case)
    return None


def _header_matches(m: Obj | None, invert: bool = False) -> list[HeaderMatch]:
    """Header names are compared without case; a JWT claim (`@request.auth.claims...`) keeps its
    name as written, since claim names are case-sensitive."""
    out = []
    for k, v in (m or {}).items():
        claim = routing_claim(k)
        out.append(HeaderMatch(name=k, match=_string_match(v), invert=invert, claim=list(claim)) if claim
                   else HeaderMatch(name=k.lower(), match=_string_match(v), invert=invert))
    return out


def _query_matches(m: Obj | None) -> list[HeaderMatch]:
    return [HeaderMatch(name=k, match=_string_match(v)) for k, v in (m or {}).items()]


def _is_mesh(gateways: list[str] | None) -> bool:
    return not gateways or "mesh" in gateways


def _vs_match(m: Obj) -> HttpMatch:
    return HttpMatch(
        path=_string_match(m.get("uri"), bool(m.get("ignoreUriCase"))),
        method=_string_match(m.get("method")),
        authority=_string_match(m.get("authority")),
        scheme=_string_match(m.get("scheme")),
        headers=_header_matches(m.get("headers")) + _header_matches(m.get("withoutHeaders"), invert=True),
        query=_query_matches(m.get("queryParams")),
        port=int(m.get("port") or 0),
        source_labels=dict(m.get("sourceLabels") or {}),
        source_namespace=m.get("sourceNamespace", ""),
    )


def _vs_headers(h: Obj | None) -> HeaderRewrite | None:
    if not h:
        return None
    req, resp = h.get("request") or {}, h.get("response") or {}
    return HeaderRewrite(request_set=dict(req.get("set") or {}), request_add=dict(req.get("add") or {}),
                         request_remove=list(req.get("remove") or []), response_set=dict(resp.get("set") or {}),
                         response_add=dict(resp.get("add") or {}), response_remove=list(resp.get("remove") or []))


def vs_destinations(route: list[Obj], hosts: Hosts, ns: str) -> list[RouteDestination]:
    out = []
    for r in route:
        d = r["destination"]
        weight = r.get("weight")
        if weight is None:
            weight = 100 if len(route) == 1 else 0
        out.append(hosts.destination(d["host"], ns, subset=d.get("subset", ""),
                                     port=int((d.get("port") or {}).get("number") or 0), weight=int(weight),
                                     headers=_vs_headers(r.get("headers"))))
    return out


def _percent(p: Obj | None, legacy: int | None, default: float = 100.0) -> float:
    if p and p.get("value") is not None:
        return float(p["value"])
    if legacy is not None:
        return float(legacy)
    return default


# The redirect codes Envoy's RedirectAction has; Istio validation admits any 3xx as redirectCode
# but drops a route with another one, so its requests go on to the next route.
VS_REDIRECT_CODES = (301, 302, 303, 307, 308)


def vs_http_route(h: Obj, hosts: Hosts, ns: str, source: str,
                   bound: Callable[[list[str] | None], bool] = _is_mesh) -> HttpRoute | None:
    """One `http` entry as a route; `bound` says which matches apply where it is being built (their
    `gateways`: the mesh's by default, an ingress gateway's in controller.translate.istio_gateway)."""
    matches = [_vs_match(m) for m in h.get("match") or [] if bound(m.get("gateways"))]
    if h.get("match") and not matches:
        return None     # every match is bound elsewhere (to an ingress gateway, or to the mesh)
    if h.get("redirect") and int(h["redirect"].get("redirectCode") or 301) not in VS_REDIRECT_CODES:
        return None     # Istio drops it (route.go ApplyRedirect: "not yet supported"); `ambit apply` warns
    route = HttpRoute(name=h.get("name", ""), source=source, matches=matches,
                      destinations=vs_destinations(h.get("route") or [], hosts, ns),
                      timeout=_seconds(h.get("timeout")), headers=_vs_headers(h.get("headers")),
                      cors=h.get("corsPolicy"))
    if h.get("redirect"):
        r = h["redirect"]
        # prefixRewrite: Envoy's RedirectAction.prefix_rewrite swaps the matched uri prefix ("/"
        # for a match without a uri); validation refuses it beside uri or an exact/regex uri match
        prefix = r.get("prefixRewrite", "")
        route.redirect = Redirect(scheme=r.get("scheme", ""), authority=r.get("authority", ""),
                                  port=int(r.get("port") or 0), path=prefix or r.get("uri", ""),
                                  path_mode="prefix" if prefix else "full",
                                  code=int(r.get("redirectCode") or 301), derive_port=r.get("derivePort", ""))
    if h.get("directResponse"):
        d = h["directResponse"]
        body = d.get("body") or {}      # `bytes` is base64 (validated): carried as such, sent decoded
        route.direct_response = DirectResponse(status=int(d["status"]), body=body.get("string", ""),
                                               body_base64=body.get("bytes", ""))
    if h.get("rewrite"):
        rw = h["rewrite"]
        rr = rw.get("uriRegexRewrite") or {}
        route.rewrite = Rewrite(path=rw.get("uri", ""), path_mode="prefix", authority=rw.get("authority", ""),
                                regex=rr.get("match", ""), regex_substitution=rr.get("rewrite", ""))
    if h.get("retries"):
        r = h["retries"]
        route.retries = Retry(attempts=int(r.get("attempts") or 0), per_try_timeout=_seconds(r.get("perTryTimeout")),
                              retry_on=[x.strip() for x in (r.get("retryOn") or "").split(",") if x.strip()],
                              backoff=_seconds(r.get("backoff")),
                              ignore_previous_hosts=r.get("retryIgnorePreviousHosts", True) is not False,
                              remote_localities=r.get("retryRemoteLocalities") is True)
    if h.get("fault"):
        f, route.fault = h["fault"], Fault()
        if f.get("delay"):
            d = f["delay"]
            route.fault.delay = _seconds(d.get("fixedDelay") or d.get("exponentialDelay"))
            # Istio: a fault without a percentage is injected into no request (delay: the deprecated
            # `percent`, 0 when unset; abort: an unset percentage); `ambit apply` warns about it
            route.fault.delay_percent = _percent(d.get("percentage"), d.get("percent"), default=0.0)
        if f.get("abort"):
            a = f["abort"]
            route.fault.abort_status = int(a.get("httpStatus") or 0)
            route.fault.abort_grpc_status = a.get("grpcStatus", "")
            route.fault.abort_percent = _percent(a.get("percentage"), None, default=0.0)
    if h.get("mirror"):
        route.mirrors.append(Mirror(vs_destinations([{"destination": h["mirror"], "weight": 100}], hosts, ns)[0],
                                    _percent(h.get("mirrorPercentage"), h.get("mirrorPercent"))))
    for m in h.get("mirrors") or []:
        route.mirrors.append(Mirror(vs_destinations([{"destination": m["destination"], "weight": 100}], hosts, ns)[0],
                                    _percent(m.get("percentage"), None)))
    return route


def _vs_routes(vs: Obj, hosts: Hosts,
               delegation: Delegation) -> tuple[list[str], list[HttpRoute], list[TcpRoute], list[str]]:
    """The hosts, routes and the objects they come from (the delegates it uses, after `vs`)."""
    spec, ns, source = vs.get("spec") or {}, ns_of(vs), object_ref(vs)
    targets = [fq for h in spec.get("hosts") or [] for fq in hosts.expand(h, ns)]
    entries = delegation.entries(vs)
    http = [r for r in (vs_http_route(e.http, hosts, ns, source) for e in entries) if r is not None]
    sources = list(dict.fromkeys([source, *(e.ref for e in entries if e.delegated)]))
    tcp = []
    for t in spec.get("tcp") or []:
        dests = vs_destinations(t.get("route") or [], hosts, ns)
        for m in t.get("match") or [{}]:
            if _is_mesh(m.get("gateways")):
                tcp.append(TcpRoute(source=source, port=int(m.get("port") or 0),
                                    destination_subnets=list(m.get("destinationSubnets") or []), destinations=dests,
                                    source_labels=dict(m.get("sourceLabels") or {}),
                                    source_namespace=m.get("sourceNamespace") or ""))
    return targets, http, tcp, sources


def _vs_tls_routes(vs: Obj, hosts: Hosts) -> list[TcpRoute]:
    """A mesh VirtualService's `tls` routes: one per match bound to the mesh, by SNI
    (waypoint/routing/tcp.py `tls_route`)."""
    spec, ns, source = vs.get("spec") or {}, ns_of(vs), object_ref(vs)
    out = []
    for t in spec.get("tls") or []:
        dests = vs_destinations(t.get("route") or [], hosts, ns)
        for m in t.get("match") or []:
            if _is_mesh(m.get("gateways")):
                out.append(TcpRoute(source=source, port=int(m.get("port") or 0), sni_hosts=list(m["sniHosts"]),
                                    destination_subnets=list(m.get("destinationSubnets") or []), destinations=dests,
                                    source_labels=dict(m.get("sourceLabels") or {}),
                                    source_namespace=m.get("sourceNamespace") or ""))
    return out


# -- Gateway API ---------------------------------------------------------------------------------

def _gw_header_matches(ms: list[Obj] | None, lower: bool = True) -> list[HeaderMatch]:
    """Header (`lower`: names are case-insensitive) or query-parameter matches. Gateway API
    (HTTPHeaderMatch, HTTPQueryParamMatch): of entries with equivalent names only the first counts,
    the later ones MUST be ignored, so `x: a` then `X: b` matches a request with `x: a`."""
    out: dict[str, HeaderMatch] = {}
    for m in ms or []:
        kind = "regex" if m.get("type") == "RegularExpression" else "exact"
        name = m["name"].lower() if lower else m["name"]
        out.setdefault(name, HeaderMatch(name=name, match=StringMatch(kind, m["value"])))
    return list(out.values())


def _gw_path_modifier(path: Obj) -> tuple[str, str]:
    """(replacement, "full" | "prefix") of an HTTPPathModifier (URLRewrite, RequestRedirect).
    A ReplacePrefixMatch of "" strips the matched prefix exactly as "/" does (Gateway API's table
    in HTTPPathModifier: `/foo/bar` with prefix `/foo` and "" gives `/bar`), so it becomes "/":
    an empty replacement would otherwise read as no path change at all."""
    if path.get("type") == "ReplaceFullPath":
        return path.get("replaceFullPath", ""), "full"
    return path.get("replacePrefixMatch") or "/", "prefix"


def _gw_path(p: Obj | None) -> StringMatch:
    p = p or {}
    kind = {"Exact": "exact", "PathPrefix": "path_prefix", "RegularExpression": "regex"}[p.get("type", "PathPrefix")]
    return StringMatch(kind=kind, value=p.get("value", "/"))


def _gw_header_filter(req: Obj | None, resp: Obj | None, base: HeaderRewrite | None = None) -> HeaderRewrite | None:
    if not req and not resp:
        return base
    h = base or HeaderRewrite()
    for f, prefix in ((req, "request"), (resp, "response")):
        if not f:
            continue
        getattr(h, f"{prefix}_set").update({x["name"]: x["value"] for x in f.get("set") or []})
        getattr(h, f"{prefix}_add").update({x["name"]: x["value"] for x in f.get("add") or []})
        getattr(h, f"{prefix}_remove").extend(f.get("remove") or [])
    return h


def gw_backend(b: Obj, ns: str, hosts: Hosts, weight_default: int = 1) -> RouteDestination:
    """A Gateway API backendRef as a destination. One of a kind other than Service keeps its weight
    and resolves to no Service (its share gets 500, Gateway API's `InvalidKind`), whatever Service
    shares its name. Its header modifiers, RequestRedirect and URLRewrite filters apply when it is
    the backend chosen (conformance HTTPRouteBackendRequestRedirect, HTTPRouteBackendURLRewrite);
    its other filters are not applied (`ambit apply` warns: controller.waypoints.advisories)."""
    host = f"{b['name']}.{b.get('namespace') or ns}.svc.{hosts.cd}"
    headers, redirect, rewrite = None, None, None
    for f in b.get("filters") or []:
        headers = _gw_header_filter(f.get("requestHeaderModifier"), f.get("responseHeaderModifier"), headers)
        if f.get("type") == "RequestRedirect":
            redirect = gw_redirect(f["requestRedirect"])
        elif f.get("type") == "URLRewrite":
            rewrite = gw_rewrite(f["urlRewrite"])
    service = hosts.service_ref(host) if is_service_backend(b) else ""
    return RouteDestination(host=host, service=service, port=int(b.get("port") or 0),
                            weight=int(b["weight"]) if b.get("weight") is not None else weight_default,
                            headers=headers, redirect=redirect, rewrite=rewrite)


# Gateway API's default `maxAge` (its CRD's default: the API server fills it in, the lab store does not).
GW_CORS_MAX_AGE = 5


def gw_cors(c: Obj) -> dict[str, Any]:
    """A Gateway API CORS filter as the route's `cors` (Istio's corsPolicy field names, which the
    waypoint reads, waypoint/routing/cors.py), its origins kept as Gateway API patterns
    (`https://*.example.com`): Istio turns them into exact matches, so its wildcards match only
    themselves (istio conversion.go createCorsFilter, a TODO there)."""
    return {"allowOrigins": [{"origin": o} for o in c.get("allowOrigins") or []],
            "allowMethods": list(c.get("allowMethods") or []), "allowHeaders": list(c.get("allowHeaders") or []),
            "exposeHeaders": list(c.get("exposeHeaders") or []),
            "maxAge": int(c["maxAge"]) if c.get("maxAge") is not None else GW_CORS_MAX_AGE,
            "allowCredentials": bool(c.get("allowCredentials"))}


def gw_redirect(r: Obj) -> Redirect:
    """A RequestRedirect filter's `requestRedirect` (a rule's or a backendRef's)."""
    value, mode = _gw_path_modifier(r["path"]) if r.get("path") else ("", "full")
    return Redirect(scheme=r.get("scheme", ""), authority=r.get("hostname", ""), port=int(r.get("port") or 0),
                    path=value, path_mode=mode, code=int(r.get("statusCode") or 302),
                    # Gateway API: without a port, the scheme's port if a scheme is given, else the
                    # listener's (for a mesh route, the Service port the request came in on), as
                    # Istio translates it.
                    derive_port="" if r.get("port") else
                    ("FROM_PROTOCOL_DEFAULT" if r.get("scheme") else "FROM_REQUEST_PORT"))


def gw_rewrite(r: Obj) -> Rewrite:
    """A URLRewrite filter's `urlRewrite` (a rule's or a backendRef's)."""
    value, mode = _gw_path_modifier(r["path"]) if r.get("path") else ("", "prefix")
    return Rewrite(path=value, path_mode=mode, authority=r.get("hostname", ""))


def _gw_filters(route: HttpRoute, filters: list[Obj], ns: str, hosts: Hosts) -> None:
    for f in filters:
        t = f["type"]
        if t in ("RequestHeaderModifier", "ResponseHeaderModifier"):
            route.headers = _gw_header_filter(f.get("requestHeaderModifier"), f.get("responseHeaderModifier"),
                                              route.headers)
        elif t == "RequestRedirect":
            route.redirect = gw_redirect(f["requestRedirect"])
        elif t == "URLRewrite":
            route.rewrite = gw_rewrite(f["urlRewrite"])
        elif t == "CORS":
            route.cors = gw_cors(f["cors"])
        elif t == "RequestMirror":
            m = f["requestMirror"]
            pct = 100.0
            if m.get("percent") is not None:
                pct = float(m["percent"])
            elif m.get("fraction"):
                pct = 100.0 * m["fraction"]["numerator"] / m["fraction"].get("denominator", 100)
            route.mirrors.append(Mirror(gw_backend(m["backendRef"], ns, hosts), pct))



# What an HTTPRoute `retry` retries besides its `codes`. Gateway API (HTTPRouteRetry): an
# implementation "SHOULD retry on connection errors (disconnect, reset, timeout, TCP failure)";
# conformance HTTPRouteRetryConnectionError (the backend resets the connection after reading the
# request) and HTTPRouteRetryWithTimeouts (each try outlives `timeouts.backendRequest`) retry
# both. Istio's conversion gives only connect-failure, refused-stream, unavailable and cancelled,
# which retry neither; `reset` (Envoy's: a disconnect, reset or per-try timeout) does.
GW_RETRY_ON = ("connect-failure", "refused-stream", "unavailable", "cancelled", "reset")

def _gw_routes(obj: Obj, hosts: Hosts, port: int, grpc: bool,
               consumer: bool = False) -> list[tuple[tuple[Any, ...], HttpRoute]]:
    """(precedence key, route) for every match of every rule.

    `consumer`: the route is in another namespace than the Service it is attached to (a GAMMA
    consumer route), so it applies only to requests from its own namespace, and before the
    Service's own (producer) routes (GEP-1426; conformance mesh-consumer-route)."""
    spec, ns, source = obj.get("spec") or {}, ns_of(obj), object_ref(obj)
    out = []
    for ri, rule in enumerate(spec.get("rules") or [{}]):
        matches = rule.get("matches") or [{}]
        for mi, m in enumerate(matches):
            if grpc:
                match = _grpc_match(m)
            else:
                match = HttpMatch(path=_gw_path(m.get("path")),
                                  method=StringMatch("exact", m["method"]) if m.get("method") else None,
                                  headers=_gw_header_matches(m.get("headers")),
                                  query=_gw_header_matches(m.get("queryParams"), lower=False))
            match.port = port
            if consumer:
                match.source_namespace = ns
            route = HttpRoute(name=rule.get("name", ""), source=source, matches=[match],
                              destinations=[gw_backend(b, ns, hosts) for b in rule.get("backendRefs") or []],
                              grpc=grpc)
            _gw_filters(route, rule.get("filters") or [], ns, hosts)
            t = rule.get("timeouts") or {}
            route.timeout = _seconds(t.get("request"))
            route.backend_timeout = _seconds(t.get("backendRequest"))
            if rule.get("retry") is not None:       # `retry: {}` is 2 attempts, as in Istio
                r = rule["retry"]
                # Istio (gateway/conversion.go): attempts default to 2 when unset
                route.retries = Retry(attempts=2 if r.get("attempts") is None else int(r["attempts"]),
                                      retry_on=list(GW_RETRY_ON), codes=list(r.get("codes") or []),
                                      backoff=_seconds(r.get("backoff")), min_backoff=True)
            route.session = _gw_session(rule.get("sessionPersistence"), obj, ri, grpc)
            if (not route.destinations and route.redirect is None) or (
                    route.destinations and all(d.weight == 0 for d in route.destinations)):
                # Gateway API (httproute_types.go HTTPRouteRule.BackendRefs; conformance
                # httproute-omitted-backendrefs): a rule with no backends and nothing that answers,
                # or whose backends all have weight 0, returns 500.
                route.direct_response = DirectResponse(status=500)
            out.append(((0 if consumer else 1, *_precedence(match, obj, ri, mi)), route))
    return out


def _gw_session(sp: Obj | None, obj: Obj, rule_index: int, grpc: bool) -> SessionPersistence | None:
    """A rule's `sessionPersistence`, in either of its shapes (released: `sessionName`,
    `cookieConfig`; Gateway API main: `cookie {name, path, lifetimeType}`, `header {name}`). A rule
    that names no session gets a name of its own, as Envoy Gateway generates one per route rule:
    GEP-1619 wants each rule's sessions apart, even rules to the same Service."""
    if sp is None:
        return None
    header = sp.get("type") == "Header"
    cookie = sp.get("cookieConfig") or sp.get("cookie") or {}
    name = sp.get("sessionName") or (sp.get("header") or {}).get("name") or cookie.get("name") or (
        f"{'grpcroute' if grpc else 'httproute'}-{ns_of(obj)}-{(obj.get('metadata') or {}).get('name', '')}-"
        f"{rule_index}")
    return SessionPersistence(name=name, header=header, path=(sp.get("cookie") or {}).get("path") or "/",
                              absolute_timeout=_seconds(sp.get("absoluteTimeout")),
                              permanent=not header and cookie.get("lifetimeType") == "Permanent")


def _grpc_match(m: Obj) -> HttpMatch:
    """A GRPCRoute match as a `:path` match. A RegularExpression's service and method are each a
    regex of its own part (Gateway API's GRPCMethodMatch), so each is grouped: written bare into
    one `/service/method` regex, an alternation in either (`method: "Get|List"`) spread over the
    whole path (`/pkg.Svc/Get` or a path that is all `List`) and matched other calls than asked."""
    method = m.get("method") or {}
    svc, meth = method.get("service"), method.get("method")
    path = None
    if method:
        if method.get("type") == "RegularExpression":
            path = StringMatch("regex", f"/(?:{svc or '[^/]+'})/(?:{meth or '[^/]+'})")
        elif svc and meth:
            path = StringMatch("exact", f"/{svc}/{meth}")
        elif svc:
            path = StringMatch("prefix", f"/{svc}/")
        else:
            path = StringMatch("regex", f"/[^/]+/{meth}")
    return HttpMatch(path=path, headers=_gw_header_matches(m.get("headers")))


def _precedence(m: HttpMatch, obj: Obj, rule_index: int, match_index: int) -> tuple[Any, ...]:
    p = m.path
    if p is None:
        path_rank = (3, 0)
    elif p.kind == "exact":
        path_rank = (0, -len(p.value))
    elif p.kind in ("prefix", "path_prefix"):
        path_rank = (1, -len(p.value))
    else:
        path_rank = (2, 0)
    return (path_rank, 0 if m.method else 1, -len(m.headers), -len(m.query),
            *age_key(obj), rule_index, match_index)


gateway_api_routes = _gw_routes     # the ingress gateway's routes are built the same way


# -- DestinationRule -----------------------------------------------------------------------------

_POLICY_PARTS = ("loadBalancer", "connectionPool", "outlierDetection", "tls", "retryBudget")


def _merge(base: Obj | None, over: Obj | None) -> Obj:
    out = dict(base or {})
    for k in _POLICY_PARTS:
        if (over or {}).get(k) is not None:
            out[k] = over[k]    # type: ignore[index]
    return out


def flatten_policy(p: Obj) -> TrafficPolicy:
    t = TrafficPolicy()
    lb = p.get("loadBalancer") or {}
    if lb.get("consistentHash"):
        ch = lb["consistentHash"]
        t.lb = "CONSISTENT_HASH"
        t.hash_header = ch.get("httpHeaderName", "")
        cookie = ch.get("httpCookie") or {}
        t.hash_cookie, t.hash_cookie_path = cookie.get("name", ""), cookie.get("path", "")
        t.hash_cookie_ttl = _seconds(cookie.get("ttl"))
        t.hash_cookie_session = cookie.get("ttl") is not None and t.hash_cookie_ttl == 0
        t.hash_source_ip = bool(ch.get("useSourceIp"))
        t.hash_query_param = ch.get("httpQueryParameterName", "")
        t.hash_cookie_attributes = {a.get("name", ""): a.get("value", "") for a in cookie.get("attributes") or []}
        if ch.get("maglev") is not None:
            t.hash_ring, t.hash_ring_size = "MAGLEV", int((ch["maglev"] or {}).get("tableSize") or 0)
        else:
            t.hash_ring = "RING_HASH"
            t.hash_ring_size = int((ch.get("ringHash") or {}).get("minimumRingSize") or ch.get("minimumRingSize") or 0)
    elif lb.get("simple"):
        t.lb = {"LEAST_CONN": "LEAST_REQUEST", "UNSPECIFIED": ""}.get(lb["simple"], lb["simple"])
    loc = lb.get("localityLbSetting")
    if loc is not None:     # waypoint/traffic/locality.py; unset: Istio's mesh default (enabled)
        t.locality_set = True       # it overrides the Service's trafficDistribution at the waypoint
        t.locality_disabled = loc.get("enabled") is False
        t.locality_distribute = [[d.get("from", ""), dict(d.get("to") or {})] for d in loc.get("distribute") or []]
        t.locality_failover = [[f.get("from", ""), f.get("to", "")] for f in loc.get("failover") or []]
        t.locality_failover_priority = list(loc.get("failoverPriority") or [])
    warm = lb.get("warmup") or {}
    if warm:
        t.warmup_duration = _seconds(warm.get("duration"))
        if warm.get("aggression") is not None:
            t.warmup_aggression = float(warm["aggression"])
        if warm.get("minimumPercent") is not None:
            t.warmup_min_percent = float(warm["minimumPercent"])
    elif lb.get("warmupDurationSecs"):
        t.warmup_duration = _seconds(lb["warmupDurationSecs"])
    cp = p.get("connectionPool") or {}
    tcp, http = cp.get("tcp") or {}, cp.get("http") or {}
    t.max_connections = int(tcp.get("maxConnections") or 0)
    t.connect_timeout = _seconds(tcp.get("connectTimeout"))
    t.tcp_idle_timeout = _seconds(tcp.get("idleTimeout"))
    t.http1_max_pending_requests = int(http.get("http1MaxPendingRequests") or 0)
    t.http2_max_requests = int(http.get("http2MaxRequests") or 0)
    t.max_requests_per_connection = int(http.get("maxRequestsPerConnection") or 0)
    t.max_retries = int(http.get("maxRetries") or 0)
    t.http_idle_timeout = _seconds(http.get("idleTimeout"))
    t.h2_upgrade = http.get("h2UpgradePolicy") == "UPGRADE"
    t.max_connection_duration = _seconds(tcp.get("maxConnectionDuration"))
    t.tcp_keepalive = _tcp_keepalive(tcp.get("tcpKeepalive"))
    t.max_concurrent_streams = int(http.get("maxConcurrentStreams") or 0)
    keepalive = http.get("http2KeepAlive") or {}
    t.h2_keepalive_interval = _seconds(keepalive.get("interval"))
    t.h2_keepalive_timeout = _seconds(keepalive.get("timeout"))
    t.use_client_protocol = bool(http.get("useClientProtocol"))
    od = p.get("outlierDetection")
    if od is not None:
        t.outlier_detection = True
        c5 = od.get("consecutive5xxErrors", od.get("consecutiveErrors"))
        if c5 is not None:
            t.consecutive_5xx_errors = int(c5)
        t.consecutive_gateway_errors = int(od.get("consecutiveGatewayErrors") or 0)
        if od.get("interval"):
            t.interval = _seconds(od["interval"])
        if od.get("baseEjectionTime"):
            t.base_ejection_time = _seconds(od["baseEjectionTime"])
        if od.get("maxEjectionPercent") is not None:
            t.max_ejection_percent = int(od["maxEjectionPercent"])
        t.min_health_percent = int(od.get("minHealthPercent") or 0)
        t.split_external_local_origin_errors = bool(od.get("splitExternalLocalOriginErrors"))
        if od.get("consecutiveLocalOriginFailures") is not None:
            t.consecutive_local_origin_failures = int(od["consecutiveLocalOriginFailures"])
        t.outlier_http_error_codes = sorted({int(c) for c in od.get("outlierDetectionHttpErrorCodes") or []})
    rb = p.get("retryBudget")
    if rb is not None:
        t.retry_budget = True
        if rb.get("percent") is not None:
            t.retry_budget_percent = float(rb["percent"])
        if rb.get("minRetryConcurrency") is not None:
            t.retry_budget_min_concurrency = int(rb["minRetryConcurrency"])
        t.retry_budget_interval = _seconds(rb.get("budgetInterval"))
    tls = p.get("tls") or {}
    t.tls_mode, t.sni = tls.get("mode", ""), tls.get("sni", "")
    t.subject_alt_names = list(tls.get("subjectAltNames") or [])
    t.ca_certificates, t.client_certificate = tls.get("caCertificates", ""), tls.get("clientCertificate", "")
    t.private_key, t.insecure_skip_verify = tls.get("privateKey", ""), bool(tls.get("insecureSkipVerify"))
    t.ca_crl = tls.get("caCrl", "")
    if t.tls_mode in ("SIMPLE", "MUTUAL"):     # (Istio reads it for those modes only; controller/translate/credentials.py)
        t.credential_name = credential_secret(tls.get("credentialName", ""))
    return t


def _tcp_keepalive(ka: Obj | None) -> TcpKeepalive | None:
    """`tcp.tcpKeepalive` (set at all: SO_KEEPALIVE, even `{}`), in the whole seconds Istio gives
    Envoy (`Duration.Seconds`; validation refuses fractions); None when unset."""
    if ka is None:
        return None
    return TcpKeepalive(time=int(_seconds(ka.get("time"))), interval=int(_seconds(ka.get("interval"))),
                        probes=int(ka.get("probes") or 0))


# What a portLevelSettings entry holds (Istio's PortTrafficPolicy). Istio copies only these from it
# and inherits nothing from the rule's trafficPolicy (pilot/pkg/networking/util/util.go
# GetPortLevelTrafficPolicy, shadowCopyPortTrafficPolicy): "default values will be applied to fields
# omitted in port-level traffic policies", as the DestinationRule CRD says.
_PORT_PARTS = ("loadBalancer", "connectionPool", "outlierDetection", "tls")


def _port_only(pls: Obj) -> Obj:
    """A portLevelSettings entry as the whole policy of its port (nothing inherited)."""
    return {k: pls[k] for k in _PORT_PARTS if pls.get(k) is not None}


def _port_policies(settings: list[Obj]) -> list[PortPolicy]:
    return [PortPolicy(port=int(s["port"]["number"]), policy=flatten_policy(_port_only(s))) for s in settings]


def _subset_port_policy(top: Obj, host_pls: Obj | None, sp: Obj, sub_pls: Obj | None) -> Obj:
    """Istio's MergeSubsetTrafficPolicy for one port: the rule's policy for the port (its
    port-level entry alone, when it has one), overridden by the subset's policy for the port (its
    port-level entry alone, when it has one: then every part comes from that entry, unset parts
    included, as MergeTrafficPolicy's hasPortLevel)."""
    original = _port_only(host_pls) if host_pls is not None else top
    if sub_pls is None:
        return _merge(original, sp)
    out = {k: v for k, v in original.items() if k not in _PORT_PARTS}
    out.update(_port_only(sub_pls))
    return out


def port_parts_not_inherited(top: Obj, pls: Obj) -> list[str]:
    """The parts of the rule's trafficPolicy a portLevelSettings entry does not inherit (set at the
    top, absent from the entry): defaults apply to them on that port, as in Istio."""
    return [k for k in (*_PORT_PARTS, "retryBudget") if top.get(k) is not None and pls.get(k) is None]


def _apply_dr(wr: WaypointRoutes, dr: MergedRule) -> None:
    spec = dr.spec
    top = spec.get("trafficPolicy") or {}
    wr.policy = flatten_policy(top)
    wr.port_policies = _port_policies(top.get("portLevelSettings") or [])
    host_pls = {int(x["port"]["number"]): x for x in top.get("portLevelSettings") or []}
    for s in spec.get("subsets") or []:
        sp = s.get("trafficPolicy") or {}
        merged = _merge(top, sp)
        sub_pls = {int(x["port"]["number"]): x for x in sp.get("portLevelSettings") or []}
        # Istio's MergeSubsetTrafficPolicy per port (pilot/pkg/networking/util/util.go): port-level
        # entries replace, the subset's parts override
        pps = [PortPolicy(port=p, policy=flatten_policy(_subset_port_policy(top, host_pls.get(p), sp, sub_pls.get(p))))
               for p in sorted(host_pls.keys() | sub_pls.keys())]
        wr.subsets.append(Subset(name=s["name"], labels=dict(s.get("labels") or {}), policy=flatten_policy(merged),
                                 port_policies=pps))
    wr.sources.extend(object_ref(r) for r in dr.rules)


# -- assembly ------------------------------------------------------------------------------------

def translate_routes(idx: Index, services: list[Service], cluster_domain: str, parents: Parents) -> list[WaypointRoutes]:
    """`parents`: which hosts each HTTPRoute/GRPCRoute applies to (controller.translate.parents);
    what exportTo keeps from a waypoint is added to its notices.

    exportTo (controller.translate.visibility) is checked against the namespace of the waypoint
    serving each host: a VirtualService not exported there adds no routes to that host, a
    DestinationRule is not in force for it."""
    from controller.translate.parents import Notice  # (parents imports this module)
    hosts = Hosts(services, cluster_domain)
    out: dict[str, WaypointRoutes] = {}

    def entry(fqdn: str) -> WaypointRoutes:
        if fqdn not in out:
            out[fqdn] = hosts.routes(fqdn)
        return out[fqdn]

    def waypoint_of(fqdn: str) -> str:
        """The waypoint serving `fqdn` ("ns/name"): the proxy whose namespace exportTo is checked
        against ("" when none serves it: nothing applies its routes, and its DestinationRules go
        unfiltered to whatever routes to it)."""
        svc = hosts.by_host.get(fqdn)
        return svc.waypoint if svc else ""

    delegation = Delegation(idx.kind("VirtualService"), hosts.fqdn)
    for vs in idx.kind("VirtualService"):
        spec = vs.get("spec") or {}
        if not _is_mesh(spec.get("gateways")) or is_delegate(vs):
            continue        # ingress only; or a delegate, applied through the roots that delegate to it
        with blame(vs):
            targets, http, tcp, sources = _vs_routes(vs, hosts, delegation)
            tls = _vs_tls_routes(vs, hosts)
        hidden: dict[str, list[str]] = {}     # waypoint -> hosts it serves that it does not see `vs` for
        elsewhere: dict[str, list[str]] = {}  # waypoint -> hosts whose routes it does not take from vs's namespace
        for fq in targets:
            wp = waypoint_of(fq)
            if wp and not visible_to(vs, namespace_of(wp)):
                hidden.setdefault(wp, []).append(fq)
                continue
            svc = hosts.by_host.get(fq)
            if wp and svc is not None and ns_of(vs) not in (svc.namespace, namespace_of(wp)):
                elsewhere.setdefault(wp, []).append(fq)
                continue
            e = entry(fq)
            e.http.extend(http)
            e.tcp.extend(tcp)
            e.tls.extend(tls)
            e.sources.extend(s for s in sources if s not in e.sources)
        parents.notices.extend(Notice(object_ref(vs), "spec.exportTo", not_exported(vs, wp, fqs, "routes"), NOT_EXPORTED)
                               for wp, fqs in hidden.items())
        parents.notices.extend(Notice(object_ref(vs), "metadata.namespace", outside_scope(vs, wp, fqs, hosts),
                                      OUTSIDE_WAYPOINT_SCOPE) for wp, fqs in elsewhere.items())

    gw_routes: dict[str, list[tuple[tuple[Any, ...], HttpRoute]]] = {}
    for kind, grpc in (("HTTPRoute", False), ("GRPCRoute", True)):
        for obj in idx.kind(kind):
            with blame(obj):
                attached = list(parents.attached(obj, functools.partial(_gw_routes, obj, hosts, grpc=grpc)))
            for fq, built in attached:
                gw_routes.setdefault(fq, []).extend(built)
                if object_ref(obj) not in entry(fq).sources:
                    entry(fq).sources.append(object_ref(obj))
    for fq, routes in gw_routes.items():
        entry(fq).http.extend(r for _, r in sorted(routes, key=lambda x: x[0]))

    hidden_drs: dict[tuple[str, str], tuple[Obj, list[str]]] = {}
    for fq, merged in rules_in_force(idx.kind("DestinationRule"), hosts, waypoint_of, hidden_drs).items():
        _apply_dr(entry(fq), merged)
    parents.notices.extend(Notice(object_ref(dr), "spec.exportTo", not_exported(dr, wp, fqs, "policy"), NOT_EXPORTED)
                           for (_, wp), (dr, fqs) in hidden_drs.items())
    return [out[k] for k in sorted(out)]


def outside_scope(vs: Obj, waypoint: str, fqdns: list[str], hosts: Hosts) -> str:
    """Why VirtualService `vs` adds no routes at `waypoint` for `fqdns` (hosts of Services in other
    namespaces than the VirtualService's and the waypoint's)."""
    spaces = sorted({s.namespace for fq in fqdns if (s := hosts.by_host.get(fq)) is not None})
    shown = ", ".join(fqdns[:5]) + (f" and {len(fqdns) - 5} more" if len(fqdns) > 5 else "")
    return (f"its routes are not applied to {shown}: waypoint {waypoint} takes VirtualService routes only from the "
            f"namespace of the Service ({', '.join(spaces)}) or its own ({namespace_of(waypoint)}), as Istio's "
            f"waypoints do; a VirtualService in namespace {ns_of(vs)} would route only its own clients in a sidecar "
            "mesh, and a waypoint serves every client. Move it to one of those namespaces")


def not_exported(obj: Obj, waypoint: str, fqdns: list[str], what: str) -> str:
    """Why `obj` (a VirtualService: its routes; a DestinationRule: its policy) is not applied at
    `waypoint` to the hosts it serves."""
    ns = namespace_of(waypoint)
    shown = ", ".join(fqdns[:5]) + (f" and {len(fqdns) - 5} more" if len(fqdns) > 5 else "")
    if what == "routes":
        effect = f"its routes are not applied to {shown}"
    else:
        effect = (f"its policy and subsets are not applied to {shown} (neither by that waypoint nor by an ingress "
                  "gateway or other waypoint that routes there: Ambit chooses a host's DestinationRules once, for its "
                  "waypoint's namespace)")
    return (f"not exported to namespace {ns} (exportTo: {export_text(obj)}), where waypoint {waypoint} runs: {effect}, "
            f"as in Istio, where a waypoint applies only what is exported to its own namespace; add {ns} to exportTo "
            "to apply it there")
