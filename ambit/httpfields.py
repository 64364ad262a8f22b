"""HTTP header names whose meaning the proxy owns, shared by the controller's validation and the
waypoint.

The message's framing (`content-length`, `transfer-encoding`), the connection's options
(`connection` and the headers it lists by convention, `te`, `upgrade`...) and the routing authority
(`host`) are written by the proxy for each leg. Configuration that wrote them (a JWT output, a
route's header operation) would re-frame the message on an HTTP/1.1 upstream: `content-length: 0`
set on a POST made the rest of its body a second request (smuggling).
"""

from __future__ import annotations

PROXY_OWNED_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection", "keep-alive",
                                 "proxy-connection", "te", "trailer", "upgrade", "http2-settings", "expect"})

# A request's pseudo-headers, which Envoy's header matchers (routes, RBAC) read among its headers,
# HTTP/1.1 requests included: Istio's VirtualService matches and AuthorizationPolicy's
# `request.headers[...]` may name them.
REQUEST_PSEUDO_HEADERS = (":method", ":scheme", ":authority", ":path")


def wire_value(text: str) -> str:
    """`text` as the waypoint carries a header value: its UTF-8 bytes, one character per byte
    (values are strings of bytes, decoded and encoded as latin-1, so a client's bytes pass
    unchanged). Envoy sends configured text as UTF-8 too."""
    return text if text.isascii() else text.encode("utf-8").decode("latin-1")
