"""Which mesh Service a DNS name is, for a client namespace, and what it resolves to (pure).

Istio ztunnel's rules (src/dns/server.rs, `find_server` and `get_addresses`):
- every alias of the query (ztunnel/dns/names.py) is tried in order, and each against its own
  name, then the wildcard hosts that cover it (`www.example.com`, `*.example.com`, `*.com`): a
  ServiceEntry for `*.example.com` answers `api.example.com`;
- a host without a VIP is left to the upstream (a ServiceEntry with resolution DNS or NONE and no
  address: the client must see the real addresses), except a Kubernetes headless Service (its
  hostname is under `.svc.<domain>`), answered with its ready endpoints' addresses;
- hosts not visible to the client's namespace (a ServiceEntry's exportTo) are as good as absent;
- several namespaces may hold one host (ServiceEntries): the client's own namespace wins, then a
  Kubernetes Service (the canonical owner of its hostname), then the first by namespace;
- A answers the IPv4 addresses, AAAA the IPv6 ones; a known host without any of the asked family
  is an empty NOERROR answer (not NXDOMAIN: the name exists);
- a match through a search-domain-stripped alias is answered with a CNAME from the asked name to
  the stripped one, unless the match was a wildcard host.

`resolve` returns None for "forward it", else an `Answer`; `Hosts` is the index it reads, built once
per config view (`Hosts.of`).
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import dns.rdataclass
import dns.rdatatype

from ambit.model import Service
from ztunnel.dns.names import Alias, Labels, aliases, host, is_wildcard, labels_of, wildcards

# The record types answered here; every other type is forwarded.
ANSWERED = frozenset({dns.rdatatype.A, dns.rdatatype.AAAA})
IN = dns.rdataclass.IN      # the only class answered here (the rest is forwarded)


@dataclass(frozen=True)
class Hosts:
    """The mesh's Services and ServiceEntry hosts by hostname (lower case, no final dot), each
    host's holders sorted by namespace."""

    by_host: Mapping[str, tuple[Service, ...]]

    @classmethod
    def of(cls, services: Iterable[Service]) -> Hosts:
        by: dict[str, list[Service]] = {}
        for s in services:
            if s.hostname:
                by.setdefault(s.hostname.lower().rstrip("."), []).append(s)
        return cls(MappingProxyType({h: tuple(sorted(ss, key=lambda s: (s.namespace, s.name)))
                                     for h, ss in by.items()}))


@dataclass(frozen=True, slots=True)
class Match:
    service: Service
    name: Labels        # the host that matched (the alias itself, or a wildcard covering it)
    alias: Alias


@dataclass(frozen=True, slots=True)
class Answer:
    """An authoritative answer: `addresses` (of the asked family) owned by `owner`; with `cname`
    set, a CNAME from the asked name to `cname` comes first (and `owner` is `cname`)."""

    owner: Labels
    addresses: tuple[str, ...]
    cname: Labels | None = None
    service: Service | None = None


def is_headless(service: Service, domain: Labels) -> bool:
    """A Kubernetes headless Service: no VIP, a hostname under `.svc.<domain>` (Istio's test; a
    ServiceEntry named like one is treated alike, as there)."""
    return not service.vips and service.hostname.lower().rstrip(".").endswith("." + host(("svc", *domain)))


def best(candidates: Iterable[Service], namespace: str) -> Service | None:
    """The client's namespace first, then a Kubernetes Service (canonical for its host), then the first."""
    first = canonical = None
    for s in candidates:
        if s.namespace == namespace:
            return s
        if canonical is None and s.kind == "Service":
            canonical = s
        if first is None:
            first = s
    return canonical or first


def find(hosts: Hosts, namespace: str, name: Labels, domain: Labels) -> Match | None:
    """The Service `name` means for a client in `namespace`; None: not the mesh's (forward it)."""
    by_host = hosts.by_host
    for alias in aliases(name, namespace, domain):
        for search in wildcards(alias.name):
            held = by_host.get(host(search))
            if not held:
                continue
            svc = best((s for s in held if (s.vips or is_headless(s, domain)) and s.visible_to(namespace)),
                       namespace)
            if svc is not None:
                return Match(svc, search, alias)
    return None


def _family(ip: str, rdtype: int) -> bool:
    try:
        v = ipaddress.ip_address(ip).version
    except ValueError:
        return False
    return v == (4 if rdtype == dns.rdatatype.A else 6)


def addresses(service: Service, rdtype: int) -> list[str]:
    """The service's addresses of the asked family: its VIPs, or a headless Service's ready
    endpoints' (each once, in order)."""
    if service.vips:
        return [v for v in service.vips if _family(v, rdtype)]
    return list(dict.fromkeys(ep.ip for ep in service.endpoints if ep.ready and ep.ip and _family(ep.ip, rdtype)))


def resolve(hosts: Hosts, namespace: str, qname: Labels, rdtype: int, domain: Labels,
            shuffle: Callable[[list[str]], None] | None = None) -> Answer | None:
    """The answer to `qname`/`rdtype` asked by a pod in `namespace`, or None to forward the query.
    `shuffle` reorders the addresses in place (Istio randomizes them: DNS-based balancing over a
    headless Service's endpoints); None keeps the config's order."""
    if rdtype not in ANSWERED:
        return None
    m = find(hosts, namespace, qname, domain)
    if m is None:
        return None
    addrs = addresses(m.service, rdtype)
    if not addrs:
        return Answer(qname, (), service=m.service)
    if shuffle is not None:
        shuffle(addrs)
    if m.alias.stripped is not None and not is_wildcard(m.name):
        return Answer(m.alias.stripped, tuple(addrs), cname=m.alias.stripped, service=m.service)
    return Answer(qname, tuple(addrs), service=m.service)


@functools.cache
def domain_labels(domain: str) -> Labels:
    """The cluster domain (`cluster.local`) as labels."""
    return labels_of(domain.rstrip(".") + ".")
