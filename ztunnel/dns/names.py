"""The names a DNS query may stand for, from the client pod's point of view (pure).

A pod's resolv.conf (Kubernetes' ClusterFirst policy) searches `<ns>.svc.<domain>`, `svc.<domain>`
and `<domain>`, so a lookup of `reviews` reaches us as `reviews.<ns>.svc.<domain>`, and one of
`example.com` first as `example.com.<ns>.svc.<domain>`. Istio ztunnel (src/dns/server.rs,
`get_aliases`) therefore tries, in order: the name as asked; its Kubernetes expansions
(`<svc>` -> `<svc>.<client ns>.svc.<domain>`, `<svc>.<ns>` and `<svc>.<ns>.svc` -> the FQDN); and
the name stripped of each search domain (`stripped`), with that name's own expansions. A match
found through a stripped alias is answered with a CNAME from the asked name to the stripped one,
so `example.com.<ns>.svc.<domain>` resolves to the ServiceEntry host `example.com` in one round trip
instead of the client walking its whole search list through the upstream first.

Names are handled as tuples of lower-case labels without the root (`Labels`): DNS names compare
case-insensitively, and hostnames in the mesh config are written without the final dot.
"""

from __future__ import annotations

from dataclasses import dataclass

import dns.name

Labels = tuple[str, ...]
SVC = "svc"
WILDCARD = "*"


def labels_of(name: dns.name.Name | str) -> Labels:
    """The lower-case labels of `name` (absolute or not, text or a dnspython Name), root dropped.
    ValueError for a label that is not text (a binary label is no hostname of the mesh)."""
    if isinstance(name, str):
        name = dns.name.from_text(name)
    try:
        out = tuple(label.decode("ascii").lower() for label in name.labels)
    except UnicodeDecodeError:
        raise ValueError(f"{name!r} has a label that is not ASCII") from None
    return out[:-1] if out and out[-1] == "" else out


def host(labels: Labels) -> str:
    """The hostname as the mesh config writes it (`a.b.c`, no final dot)."""
    return ".".join(labels)


def to_name(labels: Labels) -> dns.name.Name:
    """An absolute dnspython Name for records (the owner or target of an answer)."""
    return dns.name.Name([label.encode("ascii") for label in labels] + [b""])


def has_domain(name: Labels, domain: Labels) -> bool:
    """Does `name` end with `domain`, with at least one label before it?"""
    return bool(domain) and domain[0] != WILDCARD and len(name) > len(domain) and name[-len(domain):] == domain


def trim_domain(name: Labels, domain: Labels) -> Labels | None:
    """`name` without `domain` at its end; None when it does not end there (or nothing would remain)."""
    return name[:-len(domain)] if has_domain(name, domain) else None


def search_domains(namespace: str, domain: Labels) -> list[Labels]:
    """A pod's search list in `namespace` (Kubernetes' ClusterFirst: `<ns>.svc.<domain>`,
    `svc.<domain>`, `<domain>`). Istio ztunnel assumes the same per pod, not the node's list."""
    return [(namespace, SVC, *domain), (SVC, *domain), domain]


def kube_fqdns(name: Labels, namespace: str, domain: Labels) -> list[Labels]:
    """The Kubernetes FQDNs a short `name` may expand to for a client in `namespace`: only the
    expansions its label count allows (Istio's `to_kube_fqdns`):
    1 label `svc` -> `svc.<ns>.svc.<domain>`; 2 `svc.ns` -> `svc.ns.svc.<domain>` (and, as a pod's
    `host.subdomain`, `host.subdomain.<ns>.svc.<domain>`); 3 `svc.ns.svc` -> `svc.ns.svc.<domain>`
    (and `a.b.c.svc.<domain>`); 4 ending in `svc` -> `+.<domain>`; longer: already an FQDN or no
    Kubernetes name."""
    svc_domain = (SVC, *domain)
    ns_domain = (namespace, *svc_domain)
    n = len(name)
    if n == 1:
        return [name + ns_domain]
    if n == 2:
        return [name + svc_domain, name + ns_domain]
    if n == 3:
        out = [name + domain] if name[-1] == SVC else []
        return [*out, name + svc_domain]
    if n == 4 and name[-1] == SVC:
        return [name + domain]
    return []


@dataclass(frozen=True, slots=True)
class Alias:
    """A name to look up for the query; `stripped`: the query without a search domain, when this
    alias came from it (a match is then answered with a CNAME to it)."""

    name: Labels
    stripped: Labels | None = None


def aliases(name: Labels, namespace: str, domain: Labels) -> list[Alias]:
    """Every name a query for `name` from a pod in `namespace` may mean, most literal first, each once."""
    out: list[Alias] = []
    seen: set[Labels] = set()

    def add(alias: Alias) -> None:
        if alias.name not in seen:
            seen.add(alias.name)
            out.append(alias)

    add(Alias(name))
    for fqdn in kube_fqdns(name, namespace, domain):
        add(Alias(fqdn))
    for search in search_domains(namespace, domain):
        stripped = trim_domain(name, search)
        if stripped is None:
            continue
        add(Alias(stripped, stripped))
        for fqdn in kube_fqdns(stripped, namespace, domain):
            add(Alias(fqdn, stripped))
    return out


def wildcards(name: Labels) -> list[Labels]:
    """`name`, then the wildcard hosts that cover it, most specific first:
    `a.b.c` -> `a.b.c`, `*.b.c`, `*.c`."""
    out = [name]
    rest = name
    while len(rest) > 1:
        out.append((WILDCARD, *rest[1:]))
        rest = rest[1:]
    return out


def is_wildcard(name: Labels) -> bool:
    return bool(name) and name[0] == WILDCARD
