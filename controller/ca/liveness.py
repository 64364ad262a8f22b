"""Whether a cached TokenReview still holds: the objects a token is bound to, against the cluster
the controller watches.

A TokenReview the API server confirmed is taken again for `REVIEW_CACHE_TTL` (60 s) without
asking (controller/ca/credentials.py). A projected token is bound to its pod (`pod-name`,
`pod-uid` in the review's `user.extra`) and its service account: the API server refuses it from the
moment either is deleted ("service account token has been invalidated"). istiod reviews every
call (istio/istio security/pkg/server/ca/authenticate/kubeauth/kube_jwt.go calls
`tokenreview.ValidateK8sJwt` each time, no cache), so there a deleted pod's token stops at once.
The controller already watches pods, service accounts and nodes (its snapshot), so a cached
review is taken only while the pod (same UID), the service account and the node it names are
still there; otherwise the token is reviewed again and the API server says no. What is left of
the 60 s: the watch's delay (an event, then the snapshot's debounce), and what the controller
cannot see: a token revoked otherwise (its Secret for a legacy token, the signing key rotated).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

POD_NAME_EXTRA = "authentication.kubernetes.io/pod-name"
POD_UID_EXTRA = "authentication.kubernetes.io/pod-uid"


@dataclass(frozen=True)
class Bound:
    """What a reviewed token speaks for, from the review: its service account, the pod and the node
    it is bound to ("" when it is not bound to one)."""

    namespace: str
    service_account: str
    pod: str = ""
    pod_uid: str = ""
    node: str = ""


@dataclass(frozen=True)
class Live:
    """The pods (namespace, name) -> UID, service accounts and nodes of one snapshot."""

    pods: dict[tuple[str, str], str]
    accounts: frozenset[tuple[str, str]]
    nodes: frozenset[str]

    @classmethod
    def of(cls, objects: Iterable[dict[str, Any]]) -> Live:
        pods: dict[tuple[str, str], str] = {}
        accounts, nodes = set(), set()
        for o in objects:
            kind, meta = o.get("kind"), o.get("metadata") or {}
            ns, name = meta.get("namespace") or "", meta.get("name") or ""
            if kind == "Pod":
                pods[(ns, name)] = meta.get("uid") or ""
            elif kind == "ServiceAccount":
                accounts.add((ns, name))
            elif kind == "Node":
                nodes.add(name)
        return cls(pods, frozenset(accounts), frozenset(nodes))

    def holds(self, b: Bound) -> bool:
        """Is everything `b` names still in the cluster (the pod with the same UID when known)?"""
        if (b.namespace, b.service_account) not in self.accounts:
            return False
        if b.node and b.node not in self.nodes:
            return False
        if b.pod:
            uid = self.pods.get((b.namespace, b.pod))
            if uid is None or (b.pod_uid and uid and uid != b.pod_uid):
                return False
        return True
