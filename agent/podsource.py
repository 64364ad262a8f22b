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

import copy
import json
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from agent import enrolment
from agent.enrolment import LocalPod

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
        from ambit.lab.store import LabStore
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
    """One core/v1 collection the agent watches. `selector` is a field selector template ({node})."""

    plural: str
    kind: str
    lister: str                 # the CoreV1Api method that lists (and, with watch=True, watches) it
    selector: str = ""

    def field_selector(self, node: str) -> str:
        return self.selector.format(node=node)


def selector_matches(obj: dict[str, Any], selector: str) -> bool:
    """Does `obj` match an equality field selector like `spec.nodeName=n1` (comma = and)?

    The API server applies the selector; the reflector applies it again so that what it holds is
    scoped even if a server (or a proxy in front of it) ignored the parameter.
    """
    for term in filter(None, selector.split(",")):
        path, _, want = term.partition("=")
        cur: Any = obj
        for part in path.split("."):
            cur = cur.get(part) if isinstance(cur, dict) else None
        if str(cur if cur is not None else "") != want:
            return False
    return True


# The table RBAC is derived from (deploy manifests, tests/unit/deploy): every collection the agent
# lists and watches, with the field selector that keeps it to this node.
RESOURCES: tuple[Resource, ...] = (
    Resource("pods", "Pod", "list_pod_for_all_namespaces", "spec.nodeName={node}"),
    Resource("namespaces", "Namespace", "list_namespace"),
    Resource("nodes", "Node", "list_node", "metadata.name={node}"),
)
RBAC_GROUP = ""                 # all of RESOURCES are in the core group
RBAC_VERBS = ("list", "watch")


@dataclass
class ReflectorState:
    """What one list+watch loop knows and has done; for tests and status."""

    objects: dict[str, dict[str, Any]] = field(default_factory=dict)     # uid -> object
    resource_version: str = ""
    synced: bool = False
    lists: int = 0
    relists: int = 0            # lists after 410 Gone
    watches: int = 0
    reconnects: int = 0         # watches after an error (dropped connection, server error)
    events: int = 0
    bookmarks: int = 0
    last_error: str = ""


class _Gone(Exception):
    pass


class _Reflector:
    """list (paged) -> watch from the list's resourceVersion -> re-watch from the newest one seen.

    410 Gone relists (replacing every object, so deletions missed in the gap disappear too); any
    other failure reconnects with jittered backoff from the last resourceVersion, so no event is
    lost and none is applied twice.
    """

    def __init__(self, api: Any, res: Resource, node: str, on_change: Callable[[], None], *,
                 watch_timeout: int, backoff: tuple[float, float], page_size: int):
        self.api = api
        self.res = res
        self.selector = res.field_selector(node)
        self.on_change = on_change
        self.watch_timeout = watch_timeout
        self.backoff = backoff
        self.page_size = page_size
        self.state = ReflectorState()
        self.lock = threading.Lock()
        self._resp: Any = None

    def _kw(self) -> dict[str, Any]:
        return {"field_selector": self.selector} if self.selector else {}

    def run(self, halt: threading.Event) -> None:
        import urllib3
        from kubernetes.client.exceptions import ApiException

        from ambit.configclient.backoff import Backoff
        st = self.state
        backoff = Backoff(*self.backoff)
        relist = True
        while not halt.is_set():
            try:
                if relist:
                    self._list()
                    relist = False
                    backoff.reset()
                self._watch_once(halt)
                backoff.reset()                 # the server ended the watch: watch again now
            except _Gone:
                st.relists += 1
                relist = True
                log.info("%s: resourceVersion %s expired; relisting", self.res.plural, st.resource_version)
            except (ApiException, urllib3.exceptions.HTTPError, OSError, ValueError) as e:
                if halt.is_set():
                    return
                if isinstance(e, ApiException) and e.status == 410:
                    st.relists += 1
                    relist = True
                    continue
                st.last_error = f"{type(e).__name__}: {str(e).strip()[:300]}"
                st.reconnects += 1
                log.warning("%s: %s; retrying", self.res.plural, st.last_error)
                halt.wait(backoff.next_delay())

    def _list(self) -> None:
        from kubernetes.client.exceptions import ApiException
        lister = getattr(self.api, self.res.lister)
        items: list[dict[str, Any]] = []
        cont = ""
        while True:
            try:
                resp = lister(limit=self.page_size, _continue=cont or None, _preload_content=False,
                              _request_timeout=(10, 60), **self._kw())
            except ApiException as e:
                if e.status == 410 and cont:    # the continue token expired mid-list: start over
                    items, cont = [], ""
                    continue
                raise
            data = json.loads(resp.data)
            items += data.get("items") or []
            md = data.get("metadata") or {}
            cont = md.get("continue") or ""
            if not cont:
                break
        items = [o for o in items if selector_matches(o, self.selector)]
        with self.lock:
            self.state.objects = {self._key(o): self._typed(o) for o in items}
            self.state.resource_version = md.get("resourceVersion", "")
            self.state.lists += 1
            self.state.synced = True
        self.on_change()

    def _watch_once(self, halt: threading.Event) -> None:
        """One watch request, until the server ends it (timeoutSeconds) or it fails.

        Events are parsed from the raw stream, not deserialized into the client's models: those
        validate strictly and would turn a field the model does not know into a lost event.
        """
        from kubernetes.watch.watch import iter_resp_lines
        st = self.state
        resp = getattr(self.api, self.res.lister)(
            watch=True, resource_version=st.resource_version, timeout_seconds=self.watch_timeout,
            allow_watch_bookmarks=True, _preload_content=False,
            _request_timeout=(10, self.watch_timeout + 30), **self._kw())
        self._resp = resp
        st.watches += 1
        try:
            if halt.is_set():
                return
            for line in iter_resp_lines(resp):
                if halt.is_set():
                    return
                if line.strip():
                    ev = json.loads(line)
                    self._event(ev.get("type", ""), ev.get("object") or {})
        finally:
            self._resp = None
            resp.release_conn()

    def _event(self, etype: str, obj: dict[str, Any]) -> None:
        if etype == "ERROR":
            if obj.get("code") == 410:
                raise _Gone()
            raise ValueError(f"{self.res.plural}: watch error: {obj.get('message') or obj}")
        if etype not in ("ADDED", "MODIFIED", "DELETED", "BOOKMARK"):
            raise ValueError(f"{self.res.plural}: unknown watch event type {etype!r}")
        rv = (obj.get("metadata") or {}).get("resourceVersion")
        st = self.state
        changed = False
        with self.lock:
            if etype == "BOOKMARK":
                st.bookmarks += 1
            else:
                st.events += 1
                key = self._key(obj)
                if etype != "DELETED" and selector_matches(obj, self.selector):
                    st.objects[key] = self._typed(obj)
                    changed = True
                else:                       # deleted, or no longer matching the selector
                    changed = st.objects.pop(key, None) is not None
            if rv:
                st.resource_version = rv
        if changed:
            self.on_change()

    def abort(self) -> None:
        resp = self._resp
        if resp is not None:
            try:
                resp.shutdown()     # unblocks a read waiting for the next event
            except Exception:       # noqa: BLE001 - best effort while stopping
                pass

    def _typed(self, obj: dict[str, Any]) -> dict[str, Any]:
        obj.setdefault("apiVersion", "v1")      # list items of built-in kinds carry no type fields
        obj.setdefault("kind", self.res.kind)
        (obj.get("metadata") or {}).pop("managedFields", None)
        return obj

    @staticmethod
    def _key(obj: dict[str, Any]) -> str:
        md = obj.get("metadata") or {}
        return md.get("uid") or f"{md.get('namespace', '')}/{md.get('name', '')}"


class KubePodSource:
    """This node's pods, every namespace and this node's Node object, from the Kubernetes API.

    One list+watch reflector per collection (`RESOURCES`); a view is yielded only once every
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
        self.reflectors: dict[str, _Reflector] = {}
        self._cond = threading.Condition()
        self._changes = 0
        self._sandbox_cache: Any = None       # an agent.kube_pods.SandboxCache over `sandboxes`

    def _changed(self) -> None:
        with self._cond:
            self._changes += 1
            self._cond.notify_all()

    def _api(self) -> Any:
        from kubernetes import client
        if self.api_client is None:
            self.api_client = default_api_client()
        return client.CoreV1Api(self.api_client)

    def views(self, stop: threading.Event) -> Iterator[NodeView]:
        api = self._api()
        if self.sandboxes is None:
            from agent.kube_pods import SandboxFinder
            self.sandboxes = SandboxFinder()
        self.reflectors = {r.plural: _Reflector(api, r, self.node, self._changed, watch_timeout=self.watch_timeout,
                                                backoff=self.backoff, page_size=self.page_size)
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
        rf = self.reflectors[plural]
        with rf.lock:
            return copy.deepcopy(list(rf.state.objects.values()))

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
    from kubernetes import client, config
    cfg = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=cfg)
    except config.ConfigException:
        config.load_kube_config(client_configuration=cfg)
    return client.ApiClient(cfg)


def _wants_sandbox(pod: dict[str, Any], namespaces: dict[str, dict[str, str]]) -> bool:
    """Worth a look on the host: a running, enrolled pod with its own netns."""
    md, spec, status = pod.get("metadata") or {}, pod.get("spec") or {}, pod.get("status") or {}
    if spec.get("hostNetwork") or status.get("phase") != "Running" or not status.get("podIP"):
        return False
    return (enrolment.namespace_enrolled(namespaces.get(md.get("namespace", "default"), {}))
            and not enrolment.pod_opted_out(md.get("labels") or {}))


def _signature(view: NodeView) -> str:
    return json.dumps([view.pods, view.namespaces, view.nodes], sort_keys=True, default=str)
