"""The request's hash key for consistent-hash load balancing (DestinationRule
`loadBalancer.consistentHash`): what Istio's `ConsistentHashToHashPolicy`
(istio/istio:pilot/pkg/networking/core/route/route.go) turns into an Envoy route hash policy, and
what Envoy then hashes (envoyproxy/envoy:source/common/http/hash_policy.cc), with xxHash64:

- `httpHeaderName`: the header's value (all values joined with ","); absent: no key.
- `httpCookie {name, path, ttl, attributes}`: the cookie's value (quotes stripped, as Envoy's
  `parseCookieValue`). When the request has no such cookie and a `ttl` is set, a value is made up,
  hashed, and set on the response with `Set-Cookie: name="value"; Max-Age=TTL; Path=PATH;
  <attributes>; HttpOnly` (Envoy's `makeSetCookieValue`), so the client sticks from its next
  request on. Envoy derives the value from the connection's addresses; Ambit derives it from the
  request's `x-request-id`, so a retry of the request hashes the same. A `ttl` of `0s` sets a
  session cookie (no Max-Age: Envoy's "if ttl is present and zero, the generated cookie will be a
  session cookie"); without `ttl` a missing cookie gives no key.
- `useSourceIp`: the Downstream's source address (the waypoint terminates the source ztunnel's
  tunnel, whose peer address is the client pod: the real client).
- `httpQueryParameterName`: the first value of that query parameter; absent: no key.

No key: the balancer hashes a random number (Envoy: `random_.random()`), i.e. spreads at random.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from ambit.model import TrafficPolicy
from waypoint.request import Downstream, RequestHead
from waypoint.traffic.xxhash64 import xxh64


@dataclass(frozen=True, slots=True)
class HashKey:
    """A request's hash (None: no key) and the Set-Cookie header value to add to its response."""

    value: int | None
    set_cookie: str = ""


def cookie_value(head: RequestHead, name: str) -> str | None:
    """The value of cookie `name` in the request's Cookie headers, unquoted; None when absent."""
    raw = head.header("cookie")
    if raw is None:
        return None
    for part in raw.split(";"):
        k, eq, v = part.strip().partition("=")
        if eq and k == name:
            if len(v) >= 2 and v[0] == '"' and v[-1] == '"':
                v = v[1:-1]
            return v
    return None


def set_cookie_value(name: str, value: str, path: str, max_age: int,
                     attributes: dict[str, str] | None = None) -> str:
    """Envoy's `Http::Utility::makeSetCookieValue(..., httponly=true, attributes)`."""
    out = f'{name}="{value}"'
    if max_age:
        out += f"; Max-Age={max_age}"
    if path:
        out += f"; Path={path}"
    for k, v in (attributes or {}).items():
        out += f"; {k}={v}" if v else f"; {k}"
    return out + "; HttpOnly"


@dataclass(frozen=True)
class HashPolicy:
    header: str = ""
    cookie: str = ""
    cookie_path: str = ""
    cookie_ttl: float = 0.0
    cookie_attributes: dict[str, str] = field(default_factory=dict)
    source_ip: bool = False
    query_param: str = ""
    cookie_session: bool = False        # ttl 0s: a session cookie is set

    @classmethod
    def from_policy(cls, p: TrafficPolicy) -> HashPolicy | None:
        """The policy's hash policy, or None when it does not balance by consistent hash."""
        if p.lb != "CONSISTENT_HASH":
            return None
        return cls(p.hash_header.lower(), p.hash_cookie, p.hash_cookie_path, p.hash_cookie_ttl,
                   dict(p.hash_cookie_attributes), p.hash_source_ip, p.hash_query_param, p.hash_cookie_session)

    def key(self, head: RequestHead | None, down: Downstream | None,
            rng: random.Random | None = None) -> HashKey:
        if self.header:
            v = head.header(self.header) if head is not None else None
            return HashKey(xxh64(v) if v is not None else None)
        if self.cookie:
            v = cookie_value(head, self.cookie) if head is not None else None
            if v is not None:
                return HashKey(xxh64(v))
            if (self.cookie_ttl <= 0 and not self.cookie_session) or head is None:
                return HashKey(None)
            seed = head.header("x-request-id") or str((rng or random).getrandbits(64))
            v = f"{xxh64(seed):016x}"
            return HashKey(xxh64(v), set_cookie_value(self.cookie, v, self.cookie_path,
                                                      math.floor(self.cookie_ttl), self.cookie_attributes))
        if self.source_ip:
            return HashKey(xxh64(down.source_ip) if down is not None and down.source_ip else None)
        if self.query_param:
            v = next((val for k, val in head.query if k == self.query_param), None) if head is not None else None
            return HashKey(xxh64(v) if v is not None else None)
        return HashKey(None)
