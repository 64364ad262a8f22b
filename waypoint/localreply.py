"""Local replies (answers the waypoint gives without going upstream), shaped as Envoy shapes them.

One place builds them so routing and authorization answer alike: a gRPC request gets its HTTP
status mapped to a gRPC status (Envoy `Grpc::Utility::httpToGrpcStatus`, used by
`sendLocalReply` for gRPC requests, which then answers trailers-only), and a reply with a body
says `content-type: text/plain`, as Envoy's local replies do (a gRPC reply carries the body as
grpc-message, without that content-type: the engine's `Exchange.reply`).
"""

from __future__ import annotations

from waypoint.http.headers import grpc_status_for
from waypoint.request import LocalReply, RequestHead

# gRPC status codes that authorization and authentication answer (grpc/grpc doc/statuscodes.md).
GRPC_PERMISSION_DENIED, GRPC_UNAUTHENTICATED = 7, 16


def local_reply(head: RequestHead, status: int, body: bytes | str = b"", *, flags: str = "",
                headers: tuple[tuple[str, str], ...] = (), route: str = "", reason: str = "",
                grpc_status: int | None = None) -> LocalReply:
    """A `LocalReply` for `head`: gRPC requests get a gRPC status (explicit, or mapped)."""
    data = body.encode() if isinstance(body, str) else body
    hdrs = headers
    if data and not any(k == "content-type" for k, _ in hdrs):
        hdrs = (("content-type", "text/plain"), *hdrs)
    g = None
    if head.grpc:
        g = grpc_status if grpc_status is not None else grpc_status_for(status)
    return LocalReply(status=status, body=data, headers=hdrs, flags=flags, grpc_status=g, route=route,
                      reason=reason)
