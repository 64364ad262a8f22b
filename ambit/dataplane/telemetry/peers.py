"""What Istio's metric labels say about one side of a request, derived from a `Workload`.

Istio's rules (its standard-metrics reference and the canonical-service labels of its telemetry):
- `*_workload` is the workload's name, the controller that owns the pod: a Deployment's pod
  `echo-v1-7d9c8b5f4-x2x8q` (labelled `pod-template-hash=7d9c8b5f4`) is workload `echo-v1`. The
  config stream carries pods, not owners, so the name is derived the way Istio derives it when it
  has no owner reference: strip the ReplicaSet hash and the pod suffix. A bare pod is its own
  workload.
- `*_canonical_service`: label `service.istio.io/canonical-name`, else `app.kubernetes.io/name`,
  else `app`, else the workload name.
- `*_canonical_revision`: `service.istio.io/canonical-revision`, else `app.kubernetes.io/version`,
  else `version`, else `latest`.
- `*_app` / `*_version`: the `app` / `version` labels (their `app.kubernetes.io/*` forms as a
  fallback).
- `*_cluster`: the cluster id (Istio's `global.multiCluster.clusterName`, default `Kubernetes`).
Anything unknown is reported as "unknown", as Istio does.

Shared by ztunnel's TCP metrics (ambit/dataplane/telemetry/metrics.py) and the waypoint's HTTP
metrics (waypoint/telemetry/metrics.py), so both report the same values for the same pod.
"""

from __future__ import annotations

from dataclasses import dataclass

from ambit.dataplane.idcache import IdCache
from ambit.model import Workload

UNKNOWN = "unknown"
DEFAULT_CLUSTER = "Kubernetes"          # Istio's default cluster id
CANONICAL_NAME = ("service.istio.io/canonical-name", "app.kubernetes.io/name", "app")
CANONICAL_REVISION = ("service.istio.io/canonical-revision", "app.kubernetes.io/version", "version")
APP = ("app", "app.kubernetes.io/name")
VERSION = ("version", "app.kubernetes.io/version")


def _first(labels: dict[str, str], keys: tuple[str, ...]) -> str:
    for k in keys:
        v = labels.get(k)
        if v:
            return v
    return ""


def workload_name(w: Workload) -> str:
    """The pod's owning workload: `<deployment>-<pod-template-hash>-<suffix>` → `<deployment>`."""
    h = w.labels.get("pod-template-hash")
    if h:
        marker = f"-{h}-"
        i = w.name.rfind(marker)
        if i > 0:
            return w.name[:i]
    return w.name


def canonical_service(w: Workload) -> str:
    return _first(w.labels, CANONICAL_NAME) or workload_name(w)


def canonical_revision(w: Workload) -> str:
    return _first(w.labels, CANONICAL_REVISION) or "latest"


@dataclass(frozen=True)
class Peer:
    """The label values of one side (source or destination), before "unknown" is filled in."""

    workload: str = ""
    namespace: str = ""
    principal: str = ""
    app: str = ""
    version: str = ""
    canonical_service: str = ""
    canonical_revision: str = ""


PeerLabels = tuple[str, str, str, str, str, str]     # workload, namespace, app, version, canonical service, revision
_CACHE_SIZE = 4096
# id(workload) -> its labels; an entry goes when its Workload does (ambit.dataplane.idcache)
_cache: IdCache[PeerLabels] = IdCache(_CACHE_SIZE)
_get = _cache.get


def peer_labels(w: Workload) -> PeerLabels:
    """(workload, namespace, app, version, canonical service, canonical revision) of a workload,
    cached per Workload object: ztunnel labels every connection, and the config stream replaces a
    Workload object (never mutates it) when the pod changes.

    The cache does not keep the Workload alive (IdCache): an entry lives exactly as long as its
    Workload, so a replaced or gone pod's Workload (its labels, annotations, the decoded config
    behind them) is freed with it. Before, the cache held the object itself until 4,096 had been
    seen: on a node whose pods churn it kept about 2 dead Workloads per pod gone (3-4 KB each with
    what they reference), the rise of ztunnel's tracked objects and RSS in the soak
    (docs/operations.md, "Memory over time"). The bound stays for a process seeing more live
    Workloads than that."""
    key = id(w)
    v = _get(key)
    if v is not None:
        return v
    labels = w.labels
    v = (workload_name(w), w.namespace, _first(labels, APP), _first(labels, VERSION),
         _first(labels, CANONICAL_NAME) or workload_name(w), _first(labels, CANONICAL_REVISION) or "latest")
    _cache.put(key, v, w)
    return v


def peer(w: Workload | None, principal: str = "") -> Peer:
    """A side's labels from its workload; `principal` (the SPIFFE id seen on the wire) wins over the
    workload's own identity, and stands alone when the workload is not known."""
    if w is None:
        return Peer(principal=principal)
    return Peer(workload=workload_name(w), namespace=w.namespace, principal=principal or w.identity,
                app=_first(w.labels, APP), version=_first(w.labels, VERSION),
                canonical_service=canonical_service(w), canonical_revision=canonical_revision(w))
