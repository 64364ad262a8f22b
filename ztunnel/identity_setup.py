"""Wiring ztunnel's identity manager to the controller's CA.

The CA is served on the same gRPC server as the config stream (`controller/ca_setup.py`), so by
default ztunnel asks the config stream's target for certificates too. The node credential is a
file: in the lab, the per-node bootstrap token the controller writes to
`<labdir>/<node>/bootstrap-token`; in a cluster, the projected service-account token. It is re-read
on every request, so a rotated token (or one written after ztunnel started) is picked up without a
restart.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from ambit.backoff import Backoff
from ambit.configclient import ConfigUpdate, tls
from ambit.configclient.credential import read_token
from ambit.configclient.tls import ControllerTrust
from ambit.dataplane.identity import (
    DEFAULT_TTL,
    CertStore,
    GrpcCertificateFetcher,
    IdentityManager,
)
from ambit.model import Workload
from ztunnel.meshstate import ConfigView, MeshState

log = logging.getLogger("ambit.ztunnel.identity")

# First certificates matter more than CA load in a node's first seconds: start retrying fast.
BACKOFF = Backoff(initial=0.25, maximum=60.0)


def build(target: str, node: str, token_file: Path, ttl: float = DEFAULT_TTL, cache_dir: Path | None = None,
          trust: ControllerTrust | None = None) -> tuple[IdentityManager, tls.PinnedChannel]:
    """An IdentityManager fetching from the CA at `target` (`host:port` or `unix:PATH`) as `node`,
    over TLS against `trust` (the pinned controller root), keeping its certificates in `cache_dir`
    if given (see `CertStore`), and renewing them when the pinned bundle changes."""
    channel = tls.PinnedChannel(target, trust)
    fetcher = GrpcCertificateFetcher(channel, node, lambda: read_token(token_file))
    store = CertStore(cache_dir) if cache_dir is not None else None
    if store is not None:       # files of identities whose pods left while no ztunnel ran
        store.prune(time.time())
    # The pinned bundle moves first in a root rotation: certificates follow it (manager docstring).
    roots = trust.roots if trust is not None else None
    return IdentityManager(fetcher, ttl=ttl, backoff=BACKOFF, store=store, pinned_roots=roots), channel


def retry_on_workload_updates(config: MeshState, identities: IdentityManager) -> None:
    """The CA authorizes a node for a pod's identity only once the controller sees the pod there;
    the same translation reaches ztunnel as a Workload update. So when one arrives, identities still
    waiting for their first certificate try again at once instead of after their backoff."""

    def on_change(_view: ConfigView, update: ConfigUpdate) -> None:
        if update.type_url == Workload.TYPE:
            retried = identities.retry_failed()
            if retried:
                log.info("workloads changed: retrying certificates for %s", ", ".join(retried))

    config.on_change(on_change)
