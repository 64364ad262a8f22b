"""Who may read the debug API. It shows every proxy's config (every workload, policy and address),
so it is not for whoever reaches the controller's port:

- `TokenFileReaders` (the lab): one admin token in a file the controller creates (0600) in the lab
  dir; the CLI on the host reads it, as it reads the lab's other files.
- `TokenReviewReaders` (a cluster): the caller's Kubernetes bearer token (the kubeconfig user's),
  checked by a TokenReview, and then the user or one of its groups must be allowed
  (`--debug-readers`, default the cluster admins' group `system:masters`).

Both raise `Unauthenticated` or `Forbidden` naming what is wrong; the servicer turns it into
UNAUTHENTICATED or PERMISSION_DENIED (and `CredentialCheckBusy`, too many reviews in flight, into
UNAVAILABLE).
"""

from __future__ import annotations

import functools
import hmac
import os
import secrets
from pathlib import Path
from typing import Any, Protocol

from controller.ca.credentials import MAX_PENDING_REVIEWS, Reviews


class Unauthenticated(Exception):
    pass


class Forbidden(Exception):
    pass


class ReaderAuth(Protocol):
    async def check(self, token: str) -> str:
        """The reader's name, or raise Unauthenticated / Forbidden."""


class TokenFileReaders:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(32) + "\n")
        self._token = self.path.read_text().strip()
        if not self._token:
            raise ValueError(f"debug token file {self.path} is empty")

    async def check(self, token: str) -> str:
        if not token or not hmac.compare_digest(token.encode(), self._token.encode()):
            raise Unauthenticated(f"not the debug token (the lab's is in {self.path})")
        return "lab-admin"


class TokenReviewReaders:
    def __init__(self, api_client: Any, readers: tuple[str, ...] = ("group:system:masters",),
                 max_pending: int = MAX_PENDING_REVIEWS) -> None:
        from kubernetes import client as k8s
        self.reviews: Reviews[str] = Reviews(max_pending=max_pending, name="reader-review")
        self._api = k8s.AuthenticationV1Api(api_client)
        self._k8s = k8s
        bad = [r for r in readers if not r.startswith(("user:", "group:"))]
        if bad:
            raise ValueError(f"--debug-readers: {', '.join(bad)}: each must be user:NAME or group:NAME")
        self.users = {r[5:] for r in readers if r.startswith("user:")}
        self.groups = {r[6:] for r in readers if r.startswith("group:")}

    def review(self, token: str) -> str:
        # No audiences: the API server's own, which a kubeconfig user's token is for.
        status = self._api.create_token_review(
            self._k8s.V1TokenReview(spec=self._k8s.V1TokenReviewSpec(token=token))).status
        if status is None or not status.authenticated:
            raise Unauthenticated(f"TokenReview: {getattr(status, 'error', None) or 'not authenticated'}")
        name = status.user.username or ""
        groups = set(status.user.groups or ())
        if name in self.users or groups & self.groups:
            return name
        raise Forbidden(f"user {name!r} (groups {', '.join(sorted(groups)) or '-'}) may not read the debug API; "
                        f"allowed: users {sorted(self.users)}, groups {sorted(self.groups)} (--debug-readers)")

    async def check(self, token: str) -> str:
        if not token:
            raise Unauthenticated("no bearer token")
        # Cached and bounded like the node credential's reviews (`Reviews`): a flood of made-up
        # tokens queues no more than `max_pending` calls before they are refused at once.
        return await self.reviews.check(token, functools.partial(self.review, token))
