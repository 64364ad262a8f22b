"""Who may open a config stream, and as whom: the node credential, as the CA checks it.

The config stream carries every workload's address, identity and policy; it must not be given to
whoever can reach the controller's port. A subscriber presents the same per-node credential the CA
takes (gRPC metadata `authorization: Bearer <token>` and `x-ambit-node: <node>`; the lab's
bootstrap token, or in a cluster the projected service-account token checked by TokenReview),
and the stream is then scoped by the *authenticated* node:

1. Credential missing, unknown, or not the named node's: UNAUTHENTICATED (checked before the
   first message is read, so an anonymous caller learns nothing, not even the protocol).
2. The first message's `node` must be a ztunnel or agent of that same node: a node's credential
   never buys another node's view (PERMISSION_DENIED, naming both).
3. Or a waypoint: `NodeInfo(kind="waypoint", name=<pod>, waypoint="ns/gw")` is accepted when the
   authenticated node hosts that pod, the pod is labelled `gateway.networking.k8s.io/gateway-name:
   gw` in namespace ns and runs as service account `gw` (Istio's default for waypoint pods). The
   node credential speaks for the pods on its node (the CA issues their certificates on the same
   grounds), so a waypoint pod's view is the node's to ask for, and no other.
4. In a cluster a waypoint pod presents its own token (its Gateway's service account, checked by
   TokenReview): that credential is scoped to the account, so it subscribes as that waypoint only
   (and the CA gives it that account's certificate only).

`check_claim` is pure; `NodeAuthenticator` is the async edge around a `NodeCredentialVerifier`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import grpc

from ambit.configclient.node import NodeInfo
from controller.ca.credentials import CredentialCheckBusy, NodeCredentialVerifier, Unauthenticated, scope_of
from controller.grpcgate import CallRefused, metadata_dict

NODE_HEADER = "x-ambit-node"
NODE_KINDS = ("ztunnel", "agent")        # the kinds a node credential speaks for
# (namespace, gateway name, pod name) of each waypoint pod on a node (labelled and with the
# Gateway's service account); the controller answers it from its translation.
WaypointPods = Callable[[str], "set[tuple[str, str, str]] | frozenset[tuple[str, str, str]]"]


class StreamRefused(CallRefused):
    """Refuse the stream with `code`; the message says why (it goes to the client and the log)."""


def check_claim(authenticated_node: str, node: NodeInfo,
                waypoint_pods: set[tuple[str, str, str]] | frozenset[tuple[str, str, str]] = frozenset(),
                scope: str = "") -> str:
    """Why a stream authenticated as `authenticated_node` may not subscribe as `node` ("" if it may).
    `waypoint_pods`: the waypoint pods on that node (see `WaypointPods`). `scope`: "ns/sa" when the
    credential is one waypoint's own token (controller.ca.credentials.Caller), not a node's."""
    if scope:
        if node.kind != "waypoint" or node.waypoint != scope:
            return (f"the credential is service account {scope}'s (a waypoint's own token): it may subscribe as "
                    f"waypoint {scope} only, not as {node.kind} {node.waypoint or node.key}")
        # A token bound to a pod speaks for that pod, not for a sibling of the same waypoint on
        # the same node: its reports are written onto the pod it names (ambit.io/ListenersBound).
        bound = getattr(authenticated_node, "bound", None)
        if bound is not None and bound.pod and node.name != bound.pod:
            return (f"the credential is bound to pod {bound.namespace}/{bound.pod}, but the stream subscribes "
                    f"as pod {node.name} of waypoint {node.waypoint}; a waypoint's token speaks for its own pod only")
    if node.kind == "waypoint":
        ns, _, gw = node.waypoint.partition("/")
        if (ns, gw, node.name) in waypoint_pods:
            return ""
        return (f"node {authenticated_node!r} hosts no pod {ns}/{node.name} of waypoint {node.waypoint} "
                f"(labelled gateway.networking.k8s.io/gateway-name={gw}, service account {gw}); "
                "a node credential speaks for the waypoint pods on its own node only")
    if node.kind not in NODE_KINDS:
        return (f"a node credential (node {authenticated_node!r}) cannot subscribe as {node.kind} {node.key}; "
                f"it speaks for that node's {' and '.join(NODE_KINDS)} only")
    if node.name != authenticated_node:
        return (f"the credential is node {authenticated_node!r}'s, but the stream subscribes as {node.key}; "
                "a node receives only its own view")
    return ""


class NodeAuthenticator:
    """Authenticate a config stream's metadata with the CA's node credential verifier."""

    def __init__(self, verifier: NodeCredentialVerifier, waypoint_pods: WaypointPods | None = None) -> None:
        self.verifier = verifier
        self.waypoint_pods = waypoint_pods

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
        except CredentialCheckBusy as e:
            raise StreamRefused(grpc.StatusCode.UNAVAILABLE, f"config stream: {e}") from None

    def authorize(self, authenticated_node: str, node: NodeInfo) -> NodeInfo:
        """The NodeInfo to scope by (the authenticated one), or StreamRefused(PERMISSION_DENIED)."""
        pods = self.waypoint_pods(authenticated_node) if node.kind == "waypoint" and self.waypoint_pods else frozenset()
        why = check_claim(authenticated_node, node, pods, scope_of(authenticated_node))
        if why:
            raise StreamRefused(grpc.StatusCode.PERMISSION_DENIED, why)
        if node.kind == "waypoint":
            return node
        return NodeInfo(node.kind, authenticated_node, node.waypoint, node.instance_id)


def metadata_of(context: grpc.aio.ServicerContext) -> dict[str, str]:
    return metadata_dict(context.invocation_metadata())
