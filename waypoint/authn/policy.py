"""Which RequestAuthentications this waypoint enforces, with their key sets parsed.

Binding is AuthorizationPolicy's (waypoint/binding.py: targetRefs to the waypoint's Gateway, its
GatewayClass from the root namespace, or a Service). Every rule of every RequestAuthentication
that applies to a request is one provider; the providers are combined as Istio combines them
(any one verifying the token suffices). Built once per config update.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from ambit.model import RequestAuthn
from waypoint.authn.jwt import Outcome, Provider, authenticate, providers
from waypoint.binding import Waypoint, bind
from waypoint.request import Downstream, RequestHead


@dataclass(frozen=True)
class AuthnSet:
    gateway: tuple[Provider, ...] = ()
    by_service: dict[str, tuple[Provider, ...]] = field(default_factory=dict)
    names: tuple[str, ...] = ()          # the RequestAuthentications bound here ("ns/name"), for dumps

    def for_request(self, down: Downstream) -> tuple[Provider, ...]:
        svc = self.by_service.get(down.service)
        return self.gateway + svc if svc else self.gateway

    def authenticate(self, head: RequestHead, down: Downstream, now: float) -> Outcome:
        return authenticate(self.for_request(down), head, now)


def authn_set(policies: Iterable[RequestAuthn], waypoint: Waypoint) -> AuthnSet:
    bound = bind(policies, waypoint)
    compiled: dict[str, tuple[Provider, ...]] = {}

    def of(ras: tuple[RequestAuthn, ...]) -> tuple[Provider, ...]:
        out: list[Provider] = []
        for ra in ras:
            if ra.resource_name not in compiled:
                compiled[ra.resource_name] = providers(ra.rules)
            out += compiled[ra.resource_name]
        return tuple(out)

    gateway = of(bound.gateway)
    by_service = {k: of(v) for k, v in bound.by_service.items()}
    return AuthnSet(gateway, by_service, tuple(sorted(compiled)))
