"""Node credentials for the CA: who is asking for certificates.

Two implementations of one small interface:
- `BootstrapTokens` for the lab: a random token per node, stored only as a SHA-256 digest (the
  tokens are 256-bit random, so a fast hash is enough; a leaked token file reveals nothing usable)
  and compared in constant time.
- `TokenReviewVerifier` for clusters: ztunnel presents its projected, node-bound service-account
  token; the API server vouches for it through a TokenReview, and the node name comes from the
  token's `authentication.kubernetes.io/node-name` claim, so a ztunnel cannot claim another node.
  A waypoint pod presents its *own* projected token (its Gateway's service account, which is how
  Istio's waypoints authenticate to istiod): that token speaks for that one service account only
  (`Caller.workload`), never for the node's other pods.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import json
import os
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from ambit.clock import Monotonic
from controller.ca.liveness import POD_NAME_EXTRA, POD_UID_EXTRA, Bound, Live

NODE_NAME_EXTRA = "authentication.kubernetes.io/node-name"
SA_PREFIX = "system:serviceaccount:"
T = TypeVar("T")


class Caller(str):
    """An authenticated node name (a `str`, so it flows where node names do) and what the
    credential speaks for: `workload` is "" for a node credential (ztunnel/agent: every pod on the
    node), or "ns/sa" for one workload's own token (a waypoint pod): then only that service
    account's certificate and, on the config stream, only that waypoint's view."""

    workload: str
    bound: Bound | None     # what the token is bound to (a TokenReview's), for a cached review

    def __new__(cls, node: str, workload: str = "", bound: Bound | None = None) -> Caller:
        c = super().__new__(cls, node)
        c.workload, c.bound = workload, bound
        return c


def scope_of(caller: str) -> str:
    """The "ns/sa" a credential is limited to, "" for a node credential."""
    return getattr(caller, "workload", "")


class Unauthenticated(Exception):
    """The node credential is missing, unknown or does not belong to the claimed node."""


class CredentialCheckBusy(Exception):
    """Too many credential checks are in flight (a flood of unknown tokens): this one is refused
    now, as UNAVAILABLE, and the client retries with its backoff."""


# TokenReviewVerifier's bounds (see its `verify`). A confirmed token is taken again for a minute
# without a TokenReview, as the API server's own webhook token cache does (2 min by default), but
# only while the pod, service account and node it is bound to are still in the controller's
# watch (controller/ca/liveness.py): a deleted pod's token is reviewed again at its next call.
# Node authorization stays live.
REVIEW_CACHE_TTL = 60.0
REVIEW_CACHE_SIZE = 4096
MAX_PENDING_REVIEWS = 64
REVIEW_THREADS = 8


class Reviews(Generic[T]):
    """TokenReviews off the event loop, with two bounds against a flood of unknown tokens (any pod
    can reach the controller, and each unknown token costs a TokenReview): a credential the API
    server confirmed within `cache_ttl` is taken again without asking, so known callers are never
    queued behind the flood (and a call checked before its request is read, then by its method,
    costs one review); and past `max_pending` reviews in flight a new one is refused at once
    (`CredentialCheckBusy`) instead of queueing without bound."""

    def __init__(self, *, max_pending: int = MAX_PENDING_REVIEWS, cache_ttl: float = REVIEW_CACHE_TTL,
                 clock: Monotonic = time.monotonic, name: str = "token-review") -> None:
        self.max_pending, self.cache_ttl, self._clock = max_pending, cache_ttl, clock
        self.pending = 0
        self._confirmed: OrderedDict[bytes, tuple[float, T]] = OrderedDict()   # digest -> (until, result)
        # Its own threads: the blocking client must neither hold the event loop nor share a pool.
        self._executor = ThreadPoolExecutor(REVIEW_THREADS, thread_name_prefix=name)

    async def check(self, key: str, review: Callable[[], T], still: Callable[[T], bool] | None = None) -> T:
        """`review()`'s result for `key` (the token and whatever it is checked against), cached
        when it returns; its exception (not cached) when it raises. A cached result is taken only
        while `still(result)` holds."""
        digest = hashlib.sha256(key.encode()).digest()
        hit = self._confirmed.get(digest)
        if hit is not None and hit[0] > self._clock() and (still is None or still(hit[1])):
            return hit[1]
        if self.pending >= self.max_pending:
            raise CredentialCheckBusy(f"{self.pending} credential checks are pending at the API server; "
                                      "try again later")
        self.pending += 1
        try:
            result = await asyncio.get_running_loop().run_in_executor(self._executor, review)
        finally:
            self.pending -= 1
        self._confirmed[digest] = (self._clock() + self.cache_ttl, result)
        self._confirmed.move_to_end(digest)
        while len(self._confirmed) > REVIEW_CACHE_SIZE:
            self._confirmed.popitem(last=False)
        return result


class NodeCredentialVerifier(Protocol):
    async def verify(self, token: str, claimed_node: str) -> str:
        """Return the authenticated node name, or raise `Unauthenticated` with the reason."""


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class BootstrapTokens:
    """Per-node lab bootstrap tokens, persisted (hashed) in a 0600 JSON file if a path is given."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self._hashes: dict[str, str] = {}
        if self.path is not None and self.path.exists():
            data = json.loads(self.path.read_text())
            if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
                raise ValueError(f"bootstrap token file {self.path}: expected a JSON object node -> sha256")
            self._hashes = dict(data)

    def issue(self, node: str) -> str:
        """Create (or replace) the token of `node` and return it; only its digest is kept."""
        if not node:
            raise ValueError("bootstrap token: node name must not be empty")
        token = secrets.token_urlsafe(32)
        self._hashes[node] = _digest(token)
        self._save()
        return token

    def revoke(self, node: str) -> None:
        if self._hashes.pop(node, None) is not None:
            self._save()

    def nodes(self) -> list[str]:
        return sorted(self._hashes)

    def check(self, token: str, claimed_node: str) -> str:
        # Compare against a dummy digest for unknown nodes so timing does not reveal node names.
        expected = self._hashes.get(claimed_node, "0" * 64)
        ok = hmac.compare_digest(_digest(token), expected)
        if not ok or claimed_node not in self._hashes:
            raise Unauthenticated(f"bootstrap token not valid for node {claimed_node!r}")
        return claimed_node

    async def verify(self, token: str, claimed_node: str) -> str:
        return self.check(token, claimed_node)

    def _save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, json.dumps(self._hashes, sort_keys=True).encode())
        finally:
            os.close(fd)
        os.replace(tmp, self.path)


class TokenReviewVerifier:
    """Authenticate nodes with Kubernetes TokenReview (projected, node-bound SA tokens).

    `allowed_users` are the service-account usernames of ztunnel, e.g.
    `system:serviceaccount:ambit-system:ztunnel`: their tokens are node credentials. A token of a
    service account for which `workload_accounts(namespace, name)` is true (a waypoint Gateway's
    account) is a workload credential, scoped to that account (`Caller.workload`). Any other
    authenticated user is refused.
    """

    def __init__(self, api_client: Any, allowed_users: set[str], audiences: list[str] | None = None,
                 workload_accounts: Callable[[str, str], bool] | None = None, *,
                 max_pending: int = MAX_PENDING_REVIEWS, cache_ttl: float = REVIEW_CACHE_TTL,
                 clock: Monotonic = time.monotonic) -> None:
        from kubernetes import client as k8s

        self._api = k8s.AuthenticationV1Api(api_client)
        self._k8s = k8s
        self.allowed_users = set(allowed_users)
        self.audiences = audiences or ["ambit-ca"]
        self.workload_accounts = workload_accounts
        self.reviews: Reviews[Caller] = Reviews(max_pending=max_pending, cache_ttl=cache_ttl, clock=clock)
        self.live: Live | None = None       # the cluster as last watched (None: not yet: the TTL alone)

    def observe(self, objects: Any) -> None:
        """The controller's latest snapshot (any thread): a cached review holds only while what
        its token is bound to is in it."""
        self.live = Live.of(objects)

    def _still(self, caller: Caller) -> bool:
        live = self.live
        return live is None or caller.bound is None or live.holds(caller.bound)

    def _workload_of(self, username: str) -> str:
        if self.workload_accounts is None or not username.startswith(SA_PREFIX):
            return ""
        ns, _, sa = username[len(SA_PREFIX):].partition(":")
        return f"{ns}/{sa}" if ns and sa and self.workload_accounts(ns, sa) else ""

    def review(self, token: str, claimed_node: str) -> Caller:
        body = self._k8s.V1TokenReview(spec=self._k8s.V1TokenReviewSpec(token=token, audiences=self.audiences))
        status = self._api.create_token_review(body).status
        if status is None or not status.authenticated:
            err = getattr(status, "error", None) or "not authenticated"
            raise Unauthenticated(f"TokenReview: {err}")
        # An authenticator that is not audience-aware ignores spec.audiences and answers with no
        # status.audiences ("valid for the API server's audience"): the API says to check it, or a
        # token minted for someone else would pass for one minted for the CA.
        if not set(status.audiences or ()) & set(self.audiences):
            raise Unauthenticated(f"TokenReview: the API server did not confirm the audience {self.audiences} "
                                  f"(status.audiences {list(status.audiences or [])}); its token authenticator "
                                  "is not audience-aware")
        user = status.user
        username = getattr(user, "username", None) or ""
        workload = "" if username in self.allowed_users else self._workload_of(username)
        if user is None or (username not in self.allowed_users and not workload):
            raise Unauthenticated(f"TokenReview: user {username!r} is neither a ztunnel nor a waypoint's "
                                  "service account")
        nodes = (user.extra or {}).get(NODE_NAME_EXTRA) or []
        if not nodes:
            raise Unauthenticated("TokenReview: token is not bound to a node (no node-name claim)")
        if nodes[0] != claimed_node:
            raise Unauthenticated(f"TokenReview: token belongs to node {nodes[0]!r}, not {claimed_node!r}")
        ns, _, sa = username[len(SA_PREFIX):].partition(":") if username.startswith(SA_PREFIX) else ("", "", "")
        extra = user.extra or {}
        bound = Bound(ns, sa, (extra.get(POD_NAME_EXTRA) or [""])[0], (extra.get(POD_UID_EXTRA) or [""])[0],
                      nodes[0]) if ns and sa else None
        return Caller(nodes[0], workload, bound)

    async def verify(self, token: str, claimed_node: str) -> str:
        """`review`, off the event loop, cached and bounded (`Reviews`), the cache only while the
        token's pod, service account and node are still watched (`observe`)."""
        return await self.reviews.check(f"{claimed_node}\n{token}", functools.partial(self.review, token, claimed_node),
                                        self._still)
