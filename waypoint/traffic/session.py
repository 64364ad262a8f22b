"""Session persistence (Gateway API route rule `sessionPersistence`, GEP-1619), sans-IO.

What Envoy's stateful session filter does with cookie or header based session state
(envoyproxy/envoy: source/extensions/http/stateful_session/{cookie,header}, the filter Envoy
Gateway configures for this field; Istio configures it for Services labelled
`istio.io/persistent-session[-header]`), which pins a session to one *endpoint*, where a
consistent-hash cookie (waypoint/traffic/hashkey.py) only pins it to a hash:

- The session value names the endpoint that served the session: base64 of "ip:port", or, when
  the session has an `absoluteTimeout`, base64 of Envoy's `envoy.Cookie {address, expires}`
  protobuf message, whose `expires` (Unix seconds here; Envoy uses its own monotonic clock) ends
  the session.
- A request that carries a value naming an endpoint that is still a ready, not ejected endpoint of
  the rule's backends (and, on a retry, not one already tried) goes to that endpoint, whatever the
  backend weights and the balancer say (GEP-1619 "Traffic Splitting": the pin holds across the
  rule's backends, weight 0 included). A missing, malformed or expired value, or one naming an
  endpoint that is gone, is ignored: the request is balanced as usual and the response sets a new
  value (GEP-1619 "Session Persistence Failure Behavior": fall back and re-establish).
- The response carries the new value only when the endpoint changed: `Set-Cookie: name="value";
  [Max-Age=absoluteTimeout (lifetimeType Permanent only);] Path=path; HttpOnly` (Envoy's
  `makeSetCookieValue`; a Session cookie has no Max-Age, GEP-1619), or header `name: value`.

The value is the client's: a client can name any endpoint of the rule's backends, and extend its
own session by forging an expiry. It can never name anything else (only current endpoints are
honoured), which is Envoy's stance too ("allow external actors to direct requests to specific
upstream hosts"). The edges only pass headers in and out (waypoint/app.py `upstream`,
waypoint/routing/route.py); everything here is a pure function of its arguments and `now`.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from ambit.httpfields import PROXY_OWNED_HEADERS
from ambit.model import RouteDestination, SessionPersistence
from waypoint.request import RequestHead
from waypoint.traffic.hashkey import cookie_value, set_cookie_value

T = TypeVar("T")
MAX_VALUE = 512     # longer values are no value of ours: not decoded at all


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _read_varint(data: bytes, i: int) -> tuple[int, int]:
    n = shift = 0
    while i < len(data) and shift < 64:
        b = data[i]
        n |= (b & 0x7F) << shift
        i += 1
        if not b & 0x80:
            return n, i
        shift += 7
    raise ValueError("truncated varint")


def encode(address: str, expires: int = 0) -> str:
    """The session value for `address` ("ip:port"); with `expires` (Unix seconds), Envoy's
    `envoy.Cookie` message (field 1 address, field 2 expires) instead of the bare address."""
    raw = address.encode()
    if expires:
        raw = b"\x0a" + _varint(len(raw)) + raw + b"\x10" + _varint(expires)
    return base64.b64encode(raw).decode("ascii")


def decode(value: str, now: float) -> str | None:
    """The address a session value names; None when it is malformed or expired at `now`."""
    if not value or len(value) > MAX_VALUE:
        return None
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None
    if raw[:1] != b"\x0a":
        address = raw
        expires = 0
    else:   # envoy.Cookie {string address = 1; int64 expires = 2}; other fields: not ours
        try:
            n, i = _read_varint(raw, 1)
            address, i = raw[i:i + n], i + n
            if len(address) != n:
                return None
            expires = 0
            if i < len(raw):
                if raw[i] != 0x10:
                    return None
                expires, i = _read_varint(raw, i + 1)
            if i != len(raw):
                return None
        except ValueError:
            return None
        if expires and expires <= now:
            return None
    try:
        text = address.decode("ascii")
    except UnicodeDecodeError:
        return None
    return text if text.isprintable() and ":" in text else None


@dataclass(frozen=True, slots=True)
class SessionPolicy:
    """A rule's session persistence, compiled once per route table."""

    name: str               # the cookie name, or the header name lowercased (request heads are)
    header: bool
    path: str
    ttl: float              # absoluteTimeout in seconds; 0: none
    permanent: bool

    @classmethod
    def compile(cls, s: SessionPersistence | None) -> SessionPolicy | None:
        if s is None:
            return None
        if s.header and s.name.lower() in PROXY_OWNED_HEADERS:     # refused by the controller too
            raise ValueError(f"session header {s.name!r} is a header the proxy owns: it cannot carry a session")
        return cls(s.name.lower() if s.header else s.name, s.header, s.path or "/", s.absolute_timeout,
                   s.permanent and s.absolute_timeout > 0)

    def pinned(self, head: RequestHead, now: float) -> str | None:
        """The endpoint ("ip:port") the request's session names; None: no (valid) session."""
        raw = head.header(self.name) if self.header else cookie_value(head, self.name)
        return decode(raw.strip(), now) if raw is not None else None

    def response_header(self, address: str, now: float) -> tuple[str, str]:
        """The header that (re)starts the session on `address`: Set-Cookie or the session header."""
        value = encode(address, math.ceil(now + self.ttl) if self.ttl else 0)
        if self.header:
            return self.name, value
        return "set-cookie", set_cookie_value(self.name, value, self.path,
                                              math.ceil(self.ttl) if self.permanent else 0)


def keeps(address: str | None, hosts: Collection[str], exclude: Collection[str],
          ejected: Callable[[str], bool]) -> bool:
    """Whether a pinned `address` still serves: one of the cluster's ready endpoints, not ejected
    by outlier detection, not already tried by this request (a retry re-balances, as Envoy)."""
    return address is not None and address in hosts and address not in exclude and not ejected(address)


class Endpoints(Protocol):
    """What routing needs of the waypoint: the time, and a destination's ready endpoint addresses."""

    def wall_clock(self) -> float: ...

    def session_addresses(self, dest: RouteDestination, port: int) -> Collection[str]: ...


def sticky(policy: SessionPolicy, head: RequestHead, choices: Sequence[T],
           dest_of: Callable[[T], RouteDestination], port: int, endpoints: Endpoints) -> T | None:
    """The rule's backend whose endpoints include the one the request's session names, whatever
    its weight (0 included: GEP-1619, a session outlives a weight change); None when the request
    has no valid session or its endpoint is no backend's any more (then: the weighted choice)."""
    address = policy.pinned(head, endpoints.wall_clock())
    if address is None:
        return None
    for c in choices:
        d = dest_of(c)
        if d.service and address in endpoints.session_addresses(d, d.port or port):
            return c
    return None
