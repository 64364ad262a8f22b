"""Header operations of routes and destinations, merged the way Envoy applies Istio's.

Istio puts a VirtualService route's `headers` on the Envoy route and a destination's `headers` on
the weighted cluster. Envoy (with `most_specific_header_mutations_wins` unset, as Istio leaves
it) applies the weighted cluster's first and the route's after, so on a conflict the route level
wins (envoy source/common/router/config_impl.cc `finalizeRequestHeaders`). Gateway API filters map
to the same two levels. `compose(first, then)` folds two levels into one `HeaderOps`.

Setting `host` or `:authority` is a host rewrite (Istio route.go `TranslateHeadersOperations`).
The controller refuses operations on pseudo-headers and on the headers the proxy owns (framing,
connection options: a route's `content-length` re-framed a body upstream); they are dropped here
too, so a config that skipped validation cannot smuggle. A value is sent as its UTF-8 bytes, as
Envoy sends one: the engine's header values are strings of bytes (latin-1), and a value outside
latin-1 failed to encode (500 on HTTP/1.1, a request never answered on HTTP/2).
"""

from __future__ import annotations

from ambit.httpfields import PROXY_OWNED_HEADERS, wire_value
from ambit.model import HeaderRewrite
from waypoint.request import HeaderOps


def _changeable(name: str) -> bool:
    return not name.startswith(":") and name.lower() not in PROXY_OWNED_HEADERS


def _ops(set_: dict[str, str], add: dict[str, str], remove: list[str]) -> HeaderOps:
    return HeaderOps(remove=tuple(n.lower() for n in remove if _changeable(n)),
                     set=tuple((n.lower(), wire_value(v)) for n, v in set_.items() if _changeable(n)),
                     add=tuple((n.lower(), wire_value(v)) for n, v in add.items() if _changeable(n)))


def request_ops(h: HeaderRewrite | None) -> HeaderOps:
    return HeaderOps() if h is None else _ops(h.request_set, h.request_add, h.request_remove)


def response_ops(h: HeaderRewrite | None) -> HeaderOps:
    return HeaderOps() if h is None else _ops(h.response_set, h.response_add, h.response_remove)


def authority_override(h: HeaderRewrite | None) -> str | None:
    """The value of a request `set` of `host`/`:authority`, if any (it rewrites the authority), as
    its UTF-8 bytes (`wire_value`, as the other values here)."""
    if h is None:
        return None
    for n, v in h.request_set.items():
        if n.lower() in ("host", ":authority"):
            return wire_value(v)
    return None


def compose(first: HeaderOps, then: HeaderOps) -> HeaderOps:
    """One HeaderOps equal to applying `first` and then `then` (remove, set, add each time)."""
    if not first.remove and not first.set and not first.add:
        return then
    if not then.remove and not then.set and not then.add:
        return first
    gone = set(then.remove) | {n for n, _ in then.set}
    remove = tuple(dict.fromkeys((*first.remove, *then.remove, *(n for n, _ in then.set))))
    set_ = tuple((n, v) for n, v in first.set if n not in gone) + then.set
    add = tuple((n, v) for n, v in first.add if n not in gone) + then.add
    return HeaderOps(remove=remove, set=set_, add=add)
