"""The `Location` of a redirect, built as Envoy builds it (envoy source/common/http/utility.cc
`Utility::newUri`) with Istio's and Gateway API's port rules on top.

- Scheme: the redirect's, else the request's.
- Host: the redirect's `authority` (which replaces the request host and its port), else the
  request's authority; Envoy drops the request's port when the scheme changes and the port was
  the old scheme's default (`processRequestHost`), or when a port is given.
- Port: the redirect's `port`; else by `derive_port`: FROM_REQUEST_PORT (Istio; what Gateway API
  asks for without a scheme: "the Gateway Listener port", for a mesh route the Service port the
  request came in on) or FROM_PROTOCOL_DEFAULT (Gateway API with a scheme: that scheme's port).
- A port equal to the scheme's default is left out (Gateway API: implementations SHOULD NOT add
  :80 to http or :443 to https Locations).
- Path: replaced in full or by prefix (see `paths`); otherwise the request's; the query stays.
"""

from __future__ import annotations

from ambit.httpfields import wire_value
from ambit.model import Redirect
from waypoint.request import Downstream, RequestHead
from waypoint.routing.matchers import StringMatcher
from waypoint.routing.paths import replace_full, replace_prefix

DEFAULT_PORTS = {"http": 80, "https": 443}


def split_authority(authority: str) -> tuple[str, int | None]:
    """("host", port or None); IPv6 literals keep their brackets."""
    if authority.startswith("["):
        host, _, rest = authority.partition("]")
        host += "]"
        port = rest[1:] if rest.startswith(":") else ""
    elif authority.count(":") == 1:
        host, _, port = authority.partition(":")
    else:
        host, port = authority, ""
    return host, int(port) if port.isascii() and port.isdigit() else None     # (isdigit alone takes "²")


def location(r: Redirect, head: RequestHead, down: Downstream, matched: StringMatcher | None) -> str:
    """The Location header's value. The redirect's own text (scheme, authority, path) goes as its
    UTF-8 bytes (`wire_value`), as Envoy sends it, beside the request's bytes: a host outside
    latin-1 made the response unencodable (an HTTP/1.1 client's connection closed unanswered, an
    HTTP/2 stream reset)."""
    scheme = (wire_value(r.scheme) or head.scheme or "http").lower()
    req_host, req_port = split_authority(head.authority)
    if r.authority:
        host, port = split_authority(wire_value(r.authority))
    else:
        host, port = req_host, req_port
        if port is not None and scheme != (head.scheme or "http").lower() and port == DEFAULT_PORTS.get(
                (head.scheme or "http").lower()):
            port = None
    if r.port:
        port = r.port
    elif getattr(r, "derive_port", "") == "FROM_REQUEST_PORT":
        port = req_port or down.destination_port or DEFAULT_PORTS.get((head.scheme or "http").lower())
    elif getattr(r, "derive_port", "") == "FROM_PROTOCOL_DEFAULT":
        port = None
    if port is not None and port == DEFAULT_PORTS.get(scheme):
        port = None
    if r.path and r.path_mode == "prefix":
        path = replace_prefix(head.path, matched, wire_value(r.path))
    elif r.path:
        path = replace_full(head.path, wire_value(r.path))
    else:
        path = head.path
    if not path.startswith("/"):
        path = "/" + path
    return f"{scheme}://{host}{'' if port is None else f':{port}'}{path}"
