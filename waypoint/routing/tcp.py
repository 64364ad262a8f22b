"""TCP routes: which route, then which backend, for one non-HTTP connection. Pure.

A waypoint applies a Service's VirtualService `tcp` routes to the connections its protocol detector
finds are not HTTP, as Istio builds a tcp_proxy per route (istio pilot/pkg/networking/core
tcp_route): the routes in order, the first whose match matches wins; a match's `port` (the
Service port the client dialled), `destinationSubnets` (the address it dialled), `sourceLabels`
and `sourceNamespace` (the client workload, from its HBONE identity) must all hold, an unset one
holds for every connection, and a route without a match takes everything. No route matches: the
connection goes on to the Service itself, as without routes. A tunnel that opens with a TLS
ClientHello is first matched against the Service's `tls` routes by the server name it asked for
(`tls_route`), then its `tcp` routes, as Istio puts a TLS port's SNI filter chains before the
catch-all one. An ingress gateway's TLSRoutes and TCPRoutes use the same backend choice
(`choose_backend`).
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable

from ambit.model import RouteDestination, TcpRoute
from waypoint.request import Downstream
from waypoint.routing.weights import RandomSource, choose


def tcp_route(routes: Iterable[TcpRoute], down: Downstream) -> TcpRoute | None:
    """The first of `routes` that matches the connection `down`, or None."""
    for r in routes:
        if r.port and r.port != down.destination_port:
            continue
        if r.destination_subnets and not _in_any(down.destination_ip, tuple(r.destination_subnets)):
            continue
        if r.source_namespace and r.source_namespace != down.source_namespace:
            continue
        if r.source_labels:
            labels = dict(down.source_labels)
            if any(labels.get(k) != v for k, v in r.source_labels.items()):
                continue
        return r
    return None


def tls_route(routes: Iterable[TcpRoute], down: Downstream) -> TcpRoute | None:
    """The first VirtualService `tls` route whose `sniHosts` has the server name the tunnel's
    ClientHello asked for (`Downstream.sni`) and whose L4 match holds, or None. A name in
    `sniHosts` may be a wildcard: `*.example.com` covers names under it at any depth (Envoy's
    server_names), `*` every name. A tunnel without a server name matches no tls route."""
    name = down.sni
    if not name:
        return None
    return tcp_route((r for r in routes if any(_sni_matches(h, name) for h in r.sni_hosts)), down)


def _sni_matches(pattern: str, name: str) -> bool:
    p = pattern.lower()
    if p == "*":
        return True
    if p.startswith("*."):
        return name.endswith(p[1:]) and len(name) > len(p) - 1
    return name == p


def choose_backend(route: TcpRoute, rand: RandomSource) -> RouteDestination | None:
    """A route's backend for one connection, by weight. None when every weight is 0, even for a
    single backend: Gateway API sends a weight-0 backend nothing (a VirtualService's single
    destination has weight 100 unless it says otherwise)."""
    weights = [max(0, d.weight) for d in route.destinations]
    return choose(route.destinations, weights, rand) if sum(weights) > 0 else None


@functools.lru_cache(maxsize=256)
def _networks(subnets: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(s, strict=False) for s in subnets)


def _in_any(address: str, subnets: tuple[str, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in n for n in _networks(subnets))
