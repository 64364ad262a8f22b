"""Where the agent learns about the pods on its node: one interface, two sources.

In the lab, the lab store (a file the CLI writes). In a cluster, the Kubernetes API, with pods
scoped to this node by a field selector. Both yield full views; the agent diffs them itself, so a
missed event can never leave a pod half-enrolled.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol


@dataclass
class NodeView:
    revision: str
    pods: list[dict[str, Any]]                  # Kubernetes Pod objects (this node's, at least)
    namespaces: dict[str, dict[str, str]]       # namespace -> labels
    nodes: dict[str, dict[str, Any]]            # node name -> Node object


class PodSource(Protocol):
    def views(self, stop: threading.Event) -> Iterator[NodeView]: ...


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


class KubePodSource:
    """Pods on one node and all namespaces, through the Kubernetes API (list + watch).

    Uses the official client's watch with resourceVersion tracking; a 410 Gone or a dropped
    connection falls back to a fresh list, and every change yields a full view.
    """

    def __init__(self, node: str, api_client: Any = None):
        self.node = node
        self.api_client = api_client

    def views(self, stop: threading.Event) -> Iterator[NodeView]:  # pragma: no cover - cluster only
        import queue

        from kubernetes import client, watch
        api = client.CoreV1Api(self.api_client)
        state: dict[str, dict[str, Any]] = {"pods": {}, "ns": {}}
        changes: queue.Queue[str] = queue.Queue()

        def run(kind: str, lister: Any, **kw: Any) -> None:
            rv = ""
            while not stop.is_set():
                try:
                    if not rv:
                        lst = lister(**kw)
                        state[kind] = {o.metadata.uid: api.api_client.sanitize_for_serialization(o) for o in lst.items}
                        rv = lst.metadata.resource_version
                        changes.put(kind)
                    for ev in watch.Watch().stream(lister, resource_version=rv, timeout_seconds=60,
                                                   allow_watch_bookmarks=True, **kw):
                        obj = ev["object"]
                        rv = obj.metadata.resource_version
                        if ev["type"] == "BOOKMARK":
                            continue
                        d = api.api_client.sanitize_for_serialization(obj)
                        if ev["type"] == "DELETED":
                            state[kind].pop(obj.metadata.uid, None)
                        else:
                            state[kind][obj.metadata.uid] = d
                        changes.put(kind)
                except client.ApiException as e:
                    if e.status == 410:
                        rv = ""
                    stop.wait(1.0)
                except Exception:
                    stop.wait(1.0)

        threading.Thread(target=run, args=("pods", api.list_pod_for_all_namespaces),
                         kwargs={"field_selector": f"spec.nodeName={self.node}"}, daemon=True).start()
        threading.Thread(target=run, args=("ns", api.list_namespace), daemon=True).start()
        n = 0
        while not stop.is_set():
            try:
                changes.get(timeout=0.5)
            except queue.Empty:
                continue
            n += 1
            yield NodeView(revision=str(n), pods=list(state["pods"].values()),
                           namespaces={o["metadata"]["name"]: o["metadata"].get("labels") or {}
                                       for o in state["ns"].values()}, nodes={})
