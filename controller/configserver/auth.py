"""Who may open a config stream, and as whom: the node credential, as the CA checks it.

The config stream carries every workload's address, identity and policy; it must not be given to
whoever can reach the controller's port. A subscriber presents the same per-node credential the CA
takes (gRPC metadata `authorization: Bearer <token>` and `x-ambit-node: <node>`; the lab's
bootstrap token, or in a cluster the projected service-account token checked by TokenReview),
and the stream is then scoped by the *authenticated* node:

1. Credential missing, unknown, or not the named node's: UNAUTHENTICATED (checked before the
   first message is read, so an anonymous caller learns nothing, not even the protocol).
2. The first message's `node` must be a ztunnel or agent of that same node: a node's credential
   never buys another node's view (PERMISSION_DENIED, naming both). Waypoints have no credential
   of their own yet, so they are refused while authentication is on, rather than let in unchecked.

`check_claim` is pure; `NodeAuthenticator` is the async edge around a `NodeCredentialVerifier`.
"""

from __future__ import annotations

from collections.abc import Mapping

import grpc

from ambit.configclient.node import NodeInfo
from controller.ca.credentials import NodeCredentialVerifier, Unauthenticated

NODE_HEADER = "x-ambit-node"
NODE_KINDS = ("ztunnel", "agent")        # the kinds a node credential speaks for


class StreamRefused(Exception):
    """Refuse the stream with `code`; the message says why (it goes to the client and the log)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def check_claim(authenticated_node: str, node: NodeInfo) -> str:
    """Why a stream authenticated as `authenticated_node` may not subscribe as `node` ("" if it may)."""
    if node.kind not in NODE_KINDS:
        return (f"a node credential (node {authenticated_node!r}) cannot subscribe as {node.kind} {node.key}; "
                f"it speaks for that node's {' and '.join(NODE_KINDS)} only")
    if node.name != authenticated_node:
        return (f"the credential is node {authenticated_node!r}'s, but the stream subscribes as {node.key}; "
                "a node receives only its own view")
    return ""


class NodeAuthenticator:
    """Authenticate a config stream's metadata with the CA's node credential verifier."""

    def __init__(self, verifier: NodeCredentialVerifier) -> None:
        self.verifier = verifier

    async def authenticate(self, metadata: Mapping[str, str]) -> str:
        """The authenticated node name, or StreamRefused(UNAUTHENTICATED) saying what is wrong."""
        claimed = metadata.get(NODE_HEADER, "")
        auth = metadata.get("authorization", "")
        if not claimed or not auth.startswith("Bearer "):
            raise StreamRefused(grpc.StatusCode.UNAUTHENTICATED,
                                "config stream needs the node credential: metadata 'authorization: Bearer <token>' "
                                f"and '{NODE_HEADER}: <node>' (ztunnel/agent --node-token-file)")
        try:
            return await self.verifier.verify(auth[len("Bearer "):].strip(), claimed)
        except Unauthenticated as e:
            raise StreamRefused(grpc.StatusCode.UNAUTHENTICATED, f"config stream: {e}") from None

    def authorize(self, authenticated_node: str, node: NodeInfo) -> NodeInfo:
        """The NodeInfo to scope by (the authenticated one), or StreamRefused(PERMISSION_DENIED)."""
        why = check_claim(authenticated_node, node)
        if why:
            raise StreamRefused(grpc.StatusCode.PERMISSION_DENIED, why)
        return NodeInfo(node.kind, authenticated_node, node.waypoint, node.instance_id)


def metadata_of(context: grpc.aio.ServicerContext) -> dict[str, str]:
    return {k.lower(): v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
