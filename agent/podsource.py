"""Where the agent learns about the pods on its node: one interface, three sources.

With a controller, its config stream (agent/streamsource.py: this node's Workloads, enrolment
already decided). Without one: in the lab, the lab store (a file the CLI writes); in a cluster, the
Kubernetes API, with pods scoped to this node by a field selector. Every source yields full views;
the agent diffs them itself, so a missed event can never leave a pod half-enrolled. A view reduces
to `LocalPod` records (`local_pods`), which is all the agent acts on.

The two Kubernetes-shaped sources hand the agent each pod's netns and cgroup in the annotations `lab.ambit.io/netns` and
`lab.ambit.io/cgroup` (`agent.enrolment.pod_ref` reads them). In the lab the lab writes them; in a
cluster `KubePodSource` finds them on the host (agent/kube_pods.py) and always overwrites what the
API server says: a pod's own annotations must never choose which netns the agent captures.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from agent import enrolment
from agent.enrolment import LocalPod
from ambit.enrolment import SANDBOX_PHASES, is_enrolled
from ambit.kube.resource import Resource as KubeResource

if TYPE_CHECKING:
    from ambit.kube.reflector import Change, Reflector

log = logging.getLogger("ambit.agent.podsource")

NETNS_ANNOTATION = "lab.ambit.io/netns"
CGROUP_ANNOTATION = "lab.ambit.io/cgroup"
_SANDBOX_ANNOTATION_PREFIX = "lab.ambit.io/"


class PodView(Protocol):
    """One full picture of this node's pods, as some source saw it."""

    revision: str

    def local_pods(self, node: str) -> list[LocalPod]: ...


@dataclass
class NodeView:
    """Kubernetes objects (lab store, API server): the agent's enrolment rule decides."""

    revision: str
    pods: list[dict[str, Any]]                  # Kubernetes Pod objects (this node's, at least)
    namespaces: dict[str, dict[str, str]]       # namespace -> labels
    nodes: dict[str, dict[str, Any]]            # node name -> Node object

    def local_pods(self, node: str) -> list[LocalPod]:
        return enrolment.local_pods(node, self.pods, self.namespaces)


class PodSource(Protocol):
    def views(self, stop: threading.Event) -> Iterator[PodView]: ...


class LabPodSource:
    def __init__(self, store_path: Path, interval: float = 0.05):
        from ambit.labstore import LabStore
        self.store = LabStore(store_path)
        self.interval = interval

    def views(self, stop: threading.Event) -> Iterator[NodeView]:
        for snap in self.store.watch(self.interval, stop.is_set):
            yield NodeView(
                revision=str(snap.revision),
                pods=snap.list("Pod"),
                namespaces={o["metadata"]["name"]: o["metadata"].get("labels") or {} for o in snap.list("Namespace")},
                nodes={o["metadata"]["name"]: o for o in snap.list("Node")},
            )


# -- Kubernetes -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Resource:
    """One core/v1 collection the agent watches. `selector` is a field selector template ({node}):
    the API server scopes the collection to this node, and the reflector checks it again."""

    plural: str
    kind: str
    namespaced: bool
    selector: str = ""

    def field_selector(self, node: str) -> str:
        return self.selector.format(node=node)

    def for_node(self, node: str) -> KubeResource:
        """What this node's reflector lists and watches."""
        return KubeResource(RBAC_GROUP, ("v1",), self.plural, self.kind, self.namespaced,
                            field_selector=self.field_selector(node))


# The table RBAC is derived from (deploy manifests, tests/unit/deploy): every collection the agent
# lists and watches, with the field selector that keeps it to this node.
RBAC_GROUP = ""                 # all of RESOURCES are in the core group
RBAC_VERBS = ("list", "watch")
RESOURCES: tuple[Resource, ...] = (
    Resource("pods", "Pod", True, "spec.nodeName={node}"),
    Resource("namespaces", "Namespace", False),
    Resource("nodes", "Node", False, "metadata.name={node}"),
)


class KubePodSource:
    """This node's pods, every namespace and this node's Node object, from the Kubernetes API.

    One list+watch reflector (ambit.kube.reflector) per collection (`RESOURCES`); a view is yielded only once every
    collection is listed (a view with pods but no namespaces would unenrol everything), then after
    every change, with bursts coalesced (`debounce`). Each pod in a view carries the netns and
    cgroup of its sandbox, found on this host; pods whose sandbox is not there yet are re-examined
    every `resync` seconds, and a new view is yielded when one appears or changes.
    """

    def __init__(self, node: str, api_client: Any = None, *, sandboxes: Any = None,
                 watch_timeout: int = 300, backoff: tuple[float, float] = (0.5, 30.0),
                 page_size: int = 500, debounce: float = 0.05, resync: float = 2.0):
        self.node = node
        self.api_client = api_client
        self.sandboxes = sandboxes          # an agent.kube_pods.SandboxFinder (made lazily)
        self.watch_timeout = watch_timeout
        self.backoff = backoff
        self.page_size = page_size
        self.debounce = debounce
        self.resync = resync
        self.reflectors: dict[str, Reflector] = {}
        self._cond = threading.Condition()
        self._changes = 0
        self._sandbox_cache: Any = None       # an agent.kube_pods.SandboxCache over `sandboxes`

    def _changed(self, change: Change | None = None) -> None:
        with self._cond:
            self._changes += 1
            self._cond.notify_all()

    def views(self, stop: threading.Event) -> Iterator[NodeView]:
        from ambit.kube.reflector import Reflector
        if self.api_client is None:
            self.api_client = default_api_client()
        if self.sandboxes is None:
            from agent.kube_pods import SandboxFinder
            self.sandboxes = SandboxFinder()
        self.reflectors = {r.plural: Reflector(self.api_client, r.for_node(self.node), self._changed,
                                               watch_timeout=self.watch_timeout, backoff=self.backoff,
                                               page_size=self.page_size, logger=log)
                           for r in RESOURCES}
        halt = threading.Event()
        threads = [threading.Thread(target=rf.run, args=(halt,), daemon=True, name=f"kube-{plural}")
                   for plural, rf in self.reflectors.items()]
        threads.append(threading.Thread(target=self._stopper, args=(stop, halt), daemon=True, name="kube-stop"))
        for t in threads:
            t.start()
        try:
            seen, last = -1, None
            while not stop.is_set():
                with self._cond:
                    self._cond.wait_for(lambda seen=seen: stop.is_set() or (self._synced() and self._changes != seen),
                                        timeout=self.resync)
                if stop.is_set():
                    return
                if not self._synced():
                    continue
                if self._changes != seen:
                    stop.wait(self.debounce)            # let a burst of events settle
                seen = self._changes
                view = self._view(seen)
                sig = _signature(view)
                if sig != last:                         # a change, or a sandbox that (dis)appeared
                    last = sig
                    yield view
        finally:
            halt.set()
            self._abort()
            for t in threads:
                t.join(timeout=5)

    def _stopper(self, stop: threading.Event, halt: threading.Event) -> None:
        while not halt.is_set():
            if stop.wait(0.2):
                break
        halt.set()
        self._abort()

    def _abort(self) -> None:
        for rf in self.reflectors.values():
            rf.abort()

    def _synced(self) -> bool:
        return bool(self.reflectors) and all(rf.state.synced for rf in self.reflectors.values())

    def _snapshot(self, plural: str) -> list[dict[str, Any]]:
        return self.reflectors[plural].objects()

    def _view(self, n: int) -> NodeView:
        namespaces = {o["metadata"]["name"]: o["metadata"].get("labels") or {} for o in self._snapshot("namespaces")}
        pods = self._snapshot("pods")
        pods.sort(key=lambda p: (p["metadata"].get("namespace", ""), p["metadata"]["name"]))
        self._attach_sandboxes(pods, namespaces)
        nodes = {o["metadata"]["name"]: o for o in self._snapshot("nodes")}
        rvs = ".".join(self.reflectors[r.plural].state.resource_version for r in RESOURCES)
        return NodeView(revision=f"{n}:{rvs}", pods=pods, namespaces=namespaces, nodes=nodes)

    def _attach_sandboxes(self, pods: list[dict[str, Any]], namespaces: dict[str, dict[str, str]]) -> None:
        from agent.kube_pods import SandboxCache
        if self._sandbox_cache is None or self._sandbox_cache.finder is not self.sandboxes:
            self._sandbox_cache = SandboxCache(self.sandboxes)
        wanted: dict[str, str] = {}
        for pod in pods:
            md = pod.setdefault("metadata", {})
            md["annotations"] = {k: v for k, v in (md.get("annotations") or {}).items()
                                 if not k.startswith(_SANDBOX_ANNOTATION_PREFIX)}
            uid = md.get("uid", "")
            if uid and _wants_sandbox(pod, namespaces):
                wanted[uid] = f"{md.get('namespace')}/{md.get('name')}"
        found = self._sandbox_cache.resolve(wanted)
        for pod in pods:
            sb = found.get(pod["metadata"].get("uid", ""))
            if sb is not None:
                pod["metadata"]["annotations"][NETNS_ANNOTATION] = str(sb.netns)
                pod["metadata"]["annotations"][CGROUP_ANNOTATION] = str(sb.cgroup)


def default_api_client() -> Any:
    """In-cluster credentials (the DaemonSet's service account), else $KUBECONFIG / ~/.kube/config."""
    from ambit.kube.client import make_api_client
    return make_api_client()


def __getattr__(name: str) -> Any:
    """`ReflectorState` (what a reflector knows), without importing the kubernetes client up front."""
    if name == "ReflectorState":
        from ambit.kube.reflector import ReflectorState
        return ReflectorState
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _wants_sandbox(pod: dict[str, Any], namespaces: dict[str, dict[str, str]]) -> bool:
    """Worth a look on the host: an enrolled pod with its own netns, up (`SANDBOX_PHASES`)."""
    md, spec, status = pod.get("metadata") or {}, pod.get("spec") or {}, pod.get("status") or {}
    if spec.get("hostNetwork") or status.get("phase") not in SANDBOX_PHASES or not status.get("podIP"):
        return False
    return is_enrolled(md.get("labels") or {}, namespaces.get(md.get("namespace", "default"), {}))


def _signature(view: NodeView) -> str:
    return json.dumps([view.pods, view.namespaces, view.nodes], sort_keys=True, default=str)
