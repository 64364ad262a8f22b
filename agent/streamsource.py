"""The agent's pods from the controller's config stream: this node's Workloads.

The controller already decided enrolment (`Workload.enrolled`, the same rule for every component
of the mesh), so the agent does not re-run it here; it only turns each Workload into a `LocalPod`
and, for pods that are not enrolled, notes an opt-out label so the status file can say why.

Where a pod's netns and cgroup come from (`paths`):

* "controller" -- the Workload's `netns`/`cgroup` fields. Only the lab may use this: there the
  lab itself writes them (as annotations the controller copies). In a cluster those fields would
  come from the pod's own annotations, and a pod must never choose which netns the agent captures.
* "host" (the default) -- found on this host from the pod UID (agent/kube_pods.py), exactly as
  the Kubernetes source does; the Workload's fields are ignored. Pods whose sandbox is not there
  yet are looked for again every `resync` seconds.

The stream runs a ConfigClient (asyncio) on a thread of its own; `views()` yields from it on the
agent's pod-source thread. With `cache_path`, the last good Workloads survive a restart, so an agent
restarted while the controller is down enrols from its cache at once. Per-pod problems (a pod the
agent cannot act on) never reject an update: they end up in the agent's status file. Only an
update that fails to decode is NACKed, by the ConfigClient itself.
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from agent import enrolment
from agent.enrolment import LocalPod, PodRef
from ambit.configclient import ConfigClient, ConfigUpdate, NodeInfo
from ambit.configclient.credential import node_metadata
from ambit.configclient.report import StatusReporter
from ambit.configclient.tls import ControllerTrust
from ambit.model import Workload

log = logging.getLogger("ambit.agent.stream")

PATHS = ("host", "controller")


@dataclass
class WorkloadView:
    """This node's pods as the controller sees them; `revision` is its config version."""

    revision: str
    pods: list[LocalPod]
    from_cache: bool = False

    def local_pods(self, node: str) -> list[LocalPod]:
        return self.pods


def workload_pods(node: str, workloads: Iterable[Workload]) -> list[LocalPod]:
    """LocalPod records of the Workloads on `node`, with the netns/cgroup the Workloads carry."""
    out: list[LocalPod] = []
    for w in sorted(workloads, key=lambda w: (w.namespace, w.name, w.uid)):
        if w.node != node:      # the controller scopes by node already; never act on another's pod
            continue
        key = f"{w.namespace}/{w.name}"
        if not w.enrolled:
            why = enrolment.OPTED_OUT_REASON if enrolment.pod_opted_out(w.labels) else ""
            out.append(LocalPod(key, enrolled=False, reason=why, uid=w.uid))
            continue
        if not w.ips:           # the controller sends running pods only; without an IP nothing to capture
            out.append(LocalPod(key, enrolled=True, uid=w.uid))
            continue
        ref = PodRef(uid=w.uid, name=w.name, namespace=w.namespace, ip=w.ips[0],
                     service_account=w.service_account or "default", netns=w.netns, cgroup=w.cgroup,
                     annotations=enrolment.capture_annotations(w.annotations),
                     labels=tuple(sorted(w.labels.items())), probe_ports=tuple(w.probe_ports))
        out.append(LocalPod(key, enrolled=True, ref=ref))
    return out


def view_signature(view: WorkloadView) -> str:
    """What tells one view from the last: the agent acts only on a view whose signature changed."""
    return json.dumps([view.revision, [[p.key, p.enrolled, p.reason, p.uid, p.ref and asdict(p.ref)]
                                       for p in view.pods]], sort_keys=True, default=str)


class StreamPodSource:
    """Subscribes as `agent/<node>` to `ambit.io/Workload` at `target` and yields WorkloadViews."""

    def __init__(self, target: str, node: str, cache_path: str | Path | None = None, *,
                 paths: str = "host", sandboxes: Any = None, resync: float = 2.0, instance_id: str = "",
                 token_file: str | Path | None = None, report_interval: float = 10.0,
                 trust: ControllerTrust | None = None):
        if paths not in PATHS:
            raise ValueError(f"StreamPodSource.paths: {paths!r} is not one of {', '.join(PATHS)}")
        self.target = target
        self.node = node
        self.cache_path = Path(cache_path) if cache_path else None
        self.paths = paths
        self.sandboxes = sandboxes          # an agent.kube_pods.SandboxFinder (made lazily, "host" only)
        self.resync = resync
        self.report_interval = report_interval
        # The node credential the controller requires on the stream (the one ztunnel gives the CA).
        self.token_file = Path(token_file) if token_file else None
        self.trust = trust                  # the pinned controller root (TLS), ambit.configclient.tls
        self.node_info = NodeInfo("agent", node, instance_id=instance_id or uuid.uuid4().hex[:8]).validate()
        self.client: ConfigClient | None = None
        self._updates: queue.Queue[tuple[str, dict[str, Workload], bool]] = queue.Queue()
        self._sandbox_cache: Any = None
        self._failed: BaseException | None = None

    # -- the stream (runs on its own thread, in its own event loop) ------------------------------
    def _on_change(self, update: ConfigUpdate) -> None:
        # Never raises: what the agent cannot do for one pod is that pod's status, not a NACK.
        state = {n: r for n, r in update.state.items() if isinstance(r, Workload)}
        self._updates.put((update.system_version, state, update.from_cache))

    async def _stream(self, stop: threading.Event) -> None:
        md = node_metadata(self.token_file, self.node) if self.token_file is not None else None
        self.client = ConfigClient(self.target, self.node_info, [Workload.TYPE], self._on_change,
                                   cache_path=self.cache_path, metadata=md, trust=self.trust)
        await self.client.start()
        # Its build version (and what it holds) to the controller's debug API, so `ambit version`
        # and `proxy-status` judge the node agent's skew as they do the proxies'.
        reporter = StatusReporter(self.target, self.node_info, self._report, interval=self.report_interval,
                                  metadata=md, trust=self.trust)
        await reporter.start()
        try:
            while not stop.is_set():
                await asyncio.sleep(0.1)
        finally:
            await reporter.stop()
            await self.client.stop()

    def _report(self) -> dict[str, Any]:
        c = self.client
        return {"node": self.node, "connected": bool(c is not None and c.connected),
                "config_versions": c.versions() if c is not None else {}}

    def _run_stream(self, stop: threading.Event) -> None:
        try:
            asyncio.run(self._stream(stop))
        except BaseException as e:  # noqa: BLE001 - handed to the consuming thread
            self._failed = e

    # -- views -------------------------------------------------------------------------------------
    def views(self, stop: threading.Event) -> Iterator[WorkloadView]:
        t = threading.Thread(target=self._run_stream, args=(stop,), name="config-stream", daemon=True)
        t.start()
        latest: tuple[str, dict[str, Workload], bool] | None = None
        last_sig = None
        next_resync = 0.0
        try:
            while not stop.is_set():
                if self._failed is not None:
                    raise RuntimeError(f"config stream to {self.target}: {self._failed}") from self._failed
                try:
                    item: tuple[str, dict[str, Workload], bool] | None = self._updates.get(timeout=0.1)
                    while not self._updates.empty():    # only the newest state matters
                        item = self._updates.get_nowait()
                except queue.Empty:
                    item = None
                latest = item or latest
                if latest is None:
                    continue
                if item is None and (self.paths != "host" or time.monotonic() < next_resync):
                    continue
                next_resync = time.monotonic() + self.resync
                view = self._view(*latest)
                # The version is part of the signature: the status file's revision must be the
                # newest config held (the one a restarted agent reloads from its cache), even when
                # that version changed nothing on this node.
                sig = view_signature(view)
                if sig != last_sig:     # a config change, or a sandbox that (dis)appeared
                    last_sig = sig
                    yield view
        finally:
            t.join(timeout=5)

    def _view(self, version: str, state: dict[str, Workload], from_cache: bool) -> WorkloadView:
        pods = workload_pods(self.node, state.values())
        if self.paths == "host":
            pods = self._host_paths(pods)
        return WorkloadView(revision=version, pods=pods, from_cache=from_cache)

    def _host_paths(self, pods: list[LocalPod]) -> list[LocalPod]:
        """Replace every enrolled pod's netns/cgroup with what this host says (or nothing yet)."""
        from agent.kube_pods import SandboxCache, SandboxFinder
        if self._sandbox_cache is None:
            self._sandbox_cache = SandboxCache(self.sandboxes or SandboxFinder())
        found = self._sandbox_cache.resolve({p.ref.uid: p.key for p in pods if p.enrolled and p.ref is not None})
        out = []
        for p in pods:
            if p.ref is not None:
                sb = found.get(p.ref.uid)
                p = replace(p, ref=replace(p.ref, netns=str(sb.netns) if sb else "", cgroup=str(sb.cgroup) if sb else ""))
            out.append(p)
        return out
