"""Which CUSTOM AuthorizationPolicy (external authorization) applies to a request at this waypoint,
and which provider checks it. Built once per config update (`custom_set`), read per request.

As Istio builds it (pilot/pkg/security/authz/builder/builder.go), for the policies that apply to a
request (the Gateway's and the destination Service's: Istio's waypoint has a filter chain per
Service):
- a request that a rule of one of them matches is checked by that policy's provider; one that none
  matches is not checked at all (Istio's shadow RBAC rules and the ext_authz filter's
  `filter_enabled_metadata`). Rules match as a DENY's do (builder: CUSTOM rules are compiled as
  DENY rules), so an attribute Ambit cannot evaluate triggers the check rather than skip it;
- a provider that is not a MeshConfig extension provider of kind envoyExtAuthzHttp/Grpc: the
  policy's rules deny instead (`getBadCustomDenyRules`, "-deny-due-to-bad-CUSTOM-action"), 403;
- more than one provider among them: Istio allows it only with PILOT_ENABLE_MULTIPLE_CUSTOM_AUTHZ_
  PROVIDERS (off by default) and otherwise makes every CUSTOM policy's rules deny; so does Ambit.
Both are logged as errors when the config arrives, naming the policies and providers.

The provider's `service` ("[<namespace>/]<hostname>") is resolved to a Service by hostname in the
waypoint's view (a waypoint receives every Service) per request set; one that is not found makes
each check an error (statusOnError, or allowed with failOpen), logged at the request.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ambit.model import Authorization, ExtAuthzProvider, Service
from ambit.trustdomain import TrustDomains
from waypoint.authz.evaluate import CUSTOM, first_match
from waypoint.binding import Waypoint, bind
from waypoint.request import Downstream, EndUser, RequestHead

log = logging.getLogger("ambit.waypoint.authz")

CHECK, DENY = "check", "deny"


@dataclass(frozen=True, slots=True)
class Custom:
    """What the CUSTOM policies say about one request: CHECK it with `provider` (at the Service
    `service`, "ns/name", "" when no Service has the provider's hostname), or DENY it (`reason`)."""

    action: str
    policy: str                                 # "ns/name" of the policy whose rule matched
    provider: ExtAuthzProvider | None = None
    service: str = ""
    hostname: str = ""
    reason: str = ""


@dataclass(frozen=True, slots=True)
class _Group:
    """The CUSTOM policies of one request set, resolved: each policy's provider, or why it denies."""

    policies: tuple[Authorization, ...]
    deny: str = ""                      # all of them deny: why (several providers)
    bad: Mapping[str, str] = field(default_factory=dict)   # policy "ns/name" -> why it denies


@dataclass
class CustomSet:
    gateway: tuple[Authorization, ...] = ()
    by_service: Mapping[str, tuple[Authorization, ...]] = field(default_factory=dict)
    providers: Mapping[str, ExtAuthzProvider] = field(default_factory=dict)
    services: Mapping[str, Service] = field(default_factory=dict)
    _groups: dict[str, _Group] = field(default_factory=dict, repr=False)
    _found: dict[str, Service | None] = field(default_factory=dict, repr=False)  # provider -> its Service

    def __bool__(self) -> bool:
        return bool(self.gateway or self.by_service)

    def group(self, service: str) -> _Group:
        g = self._groups.get(service)
        if g is None:
            g = self._groups[service] = _group(self.gateway + self.by_service.get(service, ()), self.providers)
        return g

    def for_request(self, head: RequestHead, down: Downstream, trust_domains: TrustDomains | None = None,
                    user: EndUser | None = None) -> Custom | None:
        """None when no CUSTOM policy applies to the request or none of their rules match it."""
        if not self.gateway and down.service not in self.by_service:
            return None
        g = self.group(down.service)
        p = first_match(g.policies, head, down, trust_domains, user)
        if p is None:
            return None
        why = g.deny or g.bad.get(p.resource_name)
        if why:
            return Custom(DENY, p.resource_name, reason=why)
        prov = self.providers[p.provider]
        if p.provider in self._found:       # resolved once per config (the View's life)
            svc = self._found[p.provider]
        else:
            svc = self._found[p.provider] = resolve_service(prov.service, self.services)
        return Custom(CHECK, p.resource_name, prov, svc.resource_name if svc is not None else "",
                      svc.hostname if svc is not None else "")


def resolve_service(spec: str, services: Mapping[str, Service]) -> Service | None:
    """The Service a provider's `service` names: "<hostname>" or "<namespace>/<hostname>"."""
    ns, _, host = spec.rpartition("/")
    host = host.lower().rstrip(".")
    for s in services.values():
        if s.hostname.lower() == host and (not ns or s.namespace == ns):
            return s
    return None


def _group(policies: tuple[Authorization, ...], providers: Mapping[str, ExtAuthzProvider]) -> _Group:
    names = sorted({p.provider for p in policies})
    if len(names) > 1:
        return _Group(policies, deny=f"several CUSTOM providers ({', '.join(names)}) apply to one request; Istio "
                                     f"allows one per workload (without PILOT_ENABLE_MULTIPLE_CUSTOM_AUTHZ_"
                                     f"PROVIDERS), so what any of their policies match is denied")
    bad = {p.resource_name: f"provider {p.provider!r} is not a MeshConfig extension provider of kind "
                            f"envoyExtAuthzHttp or envoyExtAuthzGrpc (known: {', '.join(sorted(providers)) or 'none'}), "
                            f"so what the policy matches is denied"
           for p in policies if p.provider not in providers}
    return _Group(policies, bad=bad)


def custom_set(policies: Iterable[Authorization], waypoint: Waypoint, providers: Iterable[ExtAuthzProvider],
               services: Mapping[str, Service]) -> CustomSet:
    """The CUSTOM policies bound to this waypoint (`policy_set` checked that each names a
    provider), with the mesh's providers. Logs, once per config, the policies that deny instead of
    being checked (unknown provider, several providers for one request set)."""
    bound = bind((p for p in policies if p.action == CUSTOM), waypoint)
    cs = CustomSet(bound.gateway, bound.by_service, {p.name: p for p in providers}, services)
    keys = [""] + sorted(bound.by_service) if bound.gateway else sorted(bound.by_service)
    for k in keys:
        g = cs.group(k)
        where = f"requests for Service {k}" if k else "every request through the waypoint"
        if g.deny:
            log.error("AuthorizationPolicies %s (CUSTOM, %s): %s", ", ".join(p.resource_name for p in g.policies),
                      where, g.deny)
        for name, why in sorted(g.bad.items()):
            log.error("AuthorizationPolicy %s (CUSTOM, %s): %s", name, where, why)
    return cs
