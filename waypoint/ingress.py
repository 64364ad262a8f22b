"""The ingress gateway's view of its Gateway, sans-IO: which ports it listens on, which listener
(and so which certificate) a TLS client's SNI selects, and which virtual host a request's Host
selects. Routing itself is the waypoint's (`waypoint.routing.route`) on one `RouteTable` per port.

Why per port: Gateway API listeners that share a port share a socket; on an HTTPS port the SNI
chooses among them, on both kinds the Host header chooses among the virtual hosts that their
attached routes produced (controller/translate/ingress.py already intersected route and listener
hostnames, so a route attached to one listener only serves that listener's names).

A TLS (passthrough) or TCP port routes connections, not requests: `l4_route(sni)` gives the
TLSRoute's backends for the ClientHello's name (same matching as HTTPS listeners), a TCP port's
TCPRoute takes every connection ("*").

On an HTTPS port the Host must also select the listener (group) the SNI chose: otherwise 421 or 404
(`IngressPort.misdirected`), never a route of another listener.

Hostname matching, for both SNI and Host, is Gateway API's: an exact name first, then the longest
`*.suffix` wildcard that matches (one label or more), then a listener/virtual host for any name
("" / "*").
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ambit.model import IngressGateway, IngressListener, TcpRoute
from waypoint.routing import RouteTable, build_table
from waypoint.routing.tcp import choose_backend

__all__ = ["IngressPort", "IngressView", "build", "choose_backend", "host_match"]

L4_PROTOCOLS = ("TLS", "TCP")


def host_match(candidates: Iterable[str], name: str) -> str | None:
    """The candidate that `name` selects: exact, else the longest matching wildcard, else "*"/""."""
    name = name.lower().rstrip(".")
    cands = list(candidates)
    if name in cands:
        return name
    best = None
    for c in cands:
        if c.startswith("*.") and name.endswith(c[1:]) and len(name) > len(c) - 1:
            if best is None or len(c) > len(best):
                best = c
    if best is not None:
        return best
    return next((c for c in cands if c in ("", "*")), None)


def listener_group(ln: IngressListener) -> str:
    """The listeners one TLS connection may serve Hosts of: an Istio Gateway server's (one listener
    per host), else the listener alone."""
    return ln.server or ln.name


@dataclass(frozen=True)
class IngressPort:
    """Everything served on one port."""

    port: int
    protocol: str                                   # HTTP | HTTPS | TLS | TCP (the first listener's, see build)
    listeners: tuple[IngressListener, ...]          # on this port, in the Gateway's order
    table: RouteTable
    conflicts: tuple[str, ...] = ()                 # listeners left out: another protocol on the port
    l4: Mapping[str, TcpRoute] = field(default_factory=dict)   # TLS/TCP: name ("*": any) -> route

    def listener_for_sni(self, server_name: str | None) -> IngressListener | None:
        """The HTTPS listener whose certificates a client naming `server_name` gets, or None."""
        by_host = {ln.hostname: ln for ln in reversed(self.listeners)}
        chosen = host_match(by_host, server_name or "")
        return by_host[chosen] if chosen is not None else None

    def l4_host(self, server_name: str | None) -> str | None:
        """The name of the TLSRoute/TCPRoute a connection (with this SNI, on TLS) takes, or None."""
        return host_match(self.l4, server_name or "") if self.protocol == "TLS" else \
            ("*" if "*" in self.l4 else None)

    def virtual_host(self, host: str) -> str | None:
        """The route table host (a hostname of the route table) a request's Host selects."""
        return host_match(self.table.hosts, host)

    def misdirected(self, group: str, host: str) -> int:
        """0 when a request for `host` may be served on a TLS connection whose SNI chose listener
        group `group` (`listener_group`), else the status to answer it with: 421 Misdirected
        Request when the Host selects another group's listener, 404 when it selects none (Gateway
        API's `Listener.hostname`; Istio's per-server routes alike). Without this, a client could
        handshake with one listener (its certificate, its minimum TLS version) and be routed by
        another's Host: SNI/Host domain fronting."""
        chosen = self.listener_for_sni(host)
        if chosen is None:
            return 404
        return 0 if listener_group(chosen) == group else 421


@dataclass(frozen=True)
class IngressView:
    gateway: IngressGateway | None = None
    ports: Mapping[int, IngressPort] = field(default_factory=dict)


# The minimum TLS versions a listener may ask for ("": the default, TLS 1.2)
TLS_MIN_VERSIONS = ("", "1.2", "1.3")
# Client certificates a listener asks for: none, a valid one required, a valid one if sent
CLIENT_AUTH = ("", "required", "optional")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")       # a certificate pin, as the controller writes it


def build(gateway: IngressGateway | None, cluster_domain: str = "cluster.local") -> IngressView:
    if gateway is None:
        return IngressView()
    by_port: dict[int, list[IngressListener]] = {}
    for ln in gateway.listeners:
        if ln.tls_min_version not in TLS_MIN_VERSIONS:
            # a newer controller's value: serving TLS 1.2 instead would weaken what was asked for,
            # so the update is refused (the client NACKs it and keeps the last good listeners)
            raise ValueError(f"ingress listener {ln.name} (port {ln.port}): tls_min_version "
                             f"{ln.tls_min_version[:16]!r} is not one this version serves (1.2, 1.3)")
        if ln.client_auth not in CLIENT_AUTH or (ln.client_auth and not ln.client_ca_pem):
            # as above: serving without the client certificate check would let anyone in
            raise ValueError(f"ingress listener {ln.name} (port {ln.port}): client_auth {ln.client_auth[:16]!r} "
                             f"{'without a CA' if ln.client_auth in CLIENT_AUTH else 'is not one this version serves'}")
        bad = [p for p in (*ln.client_spki_sha256, *ln.client_cert_sha256) if not _SHA256_HEX.fullmatch(p)]
        if bad or ((ln.client_spki_sha256 or ln.client_cert_sha256 or ln.client_crl_pem) and not ln.client_auth):
            # pins or a CRL this version cannot read, or without client certificates to check them
            # on: serving anyway would let in the clients they keep out
            raise ValueError(f"ingress listener {ln.name} (port {ln.port}): "
                             + (f"pin {bad[0][:16]!r} is not a hex SHA-256 digest" if bad
                                else "certificate pins or a CRL without client_auth"))
        by_port.setdefault(ln.port, []).append(ln)
    ports = {}
    for port, lns in by_port.items():
        same = tuple(ln for ln in lns if ln.protocol == lns[0].protocol)
        conflicts = tuple(ln.name for ln in lns if ln.protocol != lns[0].protocol)
        if lns[0].protocol in L4_PROTOCOLS:
            l4: dict[str, TcpRoute] = {}
            for ln in same:
                for wr in ln.hosts:
                    if wr.tcp:      # one name on two listeners of a port: the first listener's route
                        l4.setdefault(wr.hostname, wr.tcp[0])
            ports[port] = IngressPort(port, lns[0].protocol, same, build_table([], cluster_domain), conflicts, l4)
            continue
        merged: dict[str, list] = {}
        for ln in same:
            for wr in ln.hosts:
                merged.setdefault(wr.hostname, []).append(wr)
        hosts = []
        for name, wrs in merged.items():
            first = wrs[0]
            if len(wrs) > 1:    # the same name on two listeners of a port: one virtual host
                first = type(first)(hostname=name, namespace=first.namespace,
                                    http=[r for w in wrs for r in w.http])
            hosts.append(first)
        ports[port] = IngressPort(port, lns[0].protocol, same, build_table(hosts, cluster_domain), conflicts)
    return IngressView(gateway, ports)
