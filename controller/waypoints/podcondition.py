"""Each replica writes the ListenersBound condition (controller/waypoints/bindcondition.py) of the
ingress pods that report to it, and the leader reads them all back off the watched Pods.

- `observe` (a post-snapshot hook, on every replica): the watched Pods labelled with a Gateway's
  name, and their condition as the API server holds it.
- `offer` (on every report, from the gRPC handler: it must not block): a report whose condition
  differs from the pod's is queued, and `flush` (a thread of its own) writes it with a strategic
  merge patch of `pods/status` (conditions merge by type: the kubelet's are left alone), with the
  pod's uid as precondition (a pod re-created under the same name is not written to). Comparing
  with the pod rather than with the previous report is what makes it right whichever replica the
  ingress reports to: a new container in the same pod, or an ingress that reconnected to another
  replica (its writer died), has its first report compared with what the pod says now. A write the
  watch has not shown yet is not repeated for `rewrite_after` seconds.
- `of_gateway` (the leader's Gateway status, `ingress_status.bind_failures`): (pod, report-like
  state) of each pod of a Gateway that carries the condition. A deleted pod takes its condition
  with it.

Only a pod the controller watches, in the Gateway's namespace and labelled with its name, is
written: the report's node identity is already authorised to that pod when node credentials are
on (controller/configserver/auth.py), and without them (--insecure-config-stream) a report still
cannot write any other pod. A report naming a pod that is not there (an ingress outside the
cluster, or one whose pods lack the label: only possible without node credentials) is logged,
once per pod, and counts from the memory of the replica holding it (`unreported`): in the
Gateway status only while that replica leads, as before pods carried it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import urllib3
from kubernetes.client.exceptions import ApiException

from ambit.configclient.node import NodeInfo
from controller.translate.waypoints import GATEWAY_NAME_LABELS
from controller.waypoints.bindcondition import (
    condition_of,
    condition_on,
    failures,
    gateway_of_pod,
    same,
    with_times,
)

log = logging.getLogger(__name__)
Obj = dict[str, Any]
PodKey = tuple[str, str]        # namespace, name
# what it calls (a strategic merge patch of pods/status), for `ambit install`'s ClusterRole
RBAC_RULE = {"apiGroups": [""], "resources": ["pods/status"], "verbs": ["patch"]}
MAX_WARNED = 1000               # pods a missing-pod warning is remembered for (then forgotten, and repeated)


@dataclass(frozen=True)
class PodView:
    gateway: str                # "ns/name" by the gateway-name label
    uid: str
    condition: Obj | None       # its ListenersBound condition, as watched


class PodConditionWriter:
    def __init__(self, api: Any, rewrite_after: float = 10.0, clock: Callable[[], float] = time.monotonic,
                 labels: Iterable[str] = GATEWAY_NAME_LABELS) -> None:
        self.api, self.rewrite_after, self.clock = api, rewrite_after, clock
        self.labels = tuple(labels)
        self._lock = threading.Lock()
        self._pods: dict[PodKey, PodView] = {}
        self._by_gateway: dict[str, list[tuple[str, Obj]]] = {}
        self._pending: dict[PodKey, tuple[str, Obj]] = {}
        self._sent: dict[PodKey, tuple[Obj, float]] = {}
        self._warned: set[PodKey] = set()
        self.wake = threading.Event()

    # -- what the pods say (every replica) -----------------------------------------------------------
    def observe(self, objects: Iterable[Obj], _tr: Any = None) -> None:
        """Take the snapshot's Pods (a post-snapshot hook)."""
        pods: dict[PodKey, PodView] = {}
        by_gateway: dict[str, list[tuple[str, Obj]]] = {}
        for o in objects:
            if o.get("kind") != "Pod" or (o.get("apiVersion") or "v1") != "v1":
                continue
            gw = gateway_of_pod(o, self.labels)
            if not gw:
                continue
            md = o.get("metadata") or {}
            cond = condition_on(o)
            pods[(gw.split("/", 1)[0], md.get("name") or "")] = PodView(gw, md.get("uid") or "", cond)
            if cond is not None and cond.get("status") in ("True", "False"):
                by_gateway.setdefault(gw, []).append((md.get("name") or "", {"ingress": failures(cond)}))
        with self._lock:
            self._pods, self._by_gateway = pods, by_gateway
            self._sent = {k: v for k, v in self._sent.items() if k in pods}
            self._warned -= set(pods)       # a pod that appears is warned about again if it goes
            pending = bool(self._pending)
        if pending:                         # a report that came before its pod was watched
            self.wake.set()

    def of_gateway(self, ref: str) -> list[tuple[str, Obj]]:
        """(pod name, {"ingress": unbound entries}) of each pod of Gateway `ref` with the condition."""
        with self._lock:
            return list(self._by_gateway.get(ref, ()))

    def watches(self, ref: str, pod: str) -> bool:
        """Is `pod` a watched pod of Gateway `ref` (so its condition, not a report in memory, counts)?"""
        with self._lock:
            view = self._pods.get((ref.split("/", 1)[0], pod))
        return view is not None and view.gateway == ref

    def unreported(self, reports: Iterable[tuple[str, Obj]], ref: str) -> list[tuple[str, Obj]]:
        """The pods' conditions of Gateway `ref`, and the reports held in memory (`reports`: pod,
        state) of its pods that are not watched, whose failures have nowhere else to go."""
        return self.of_gateway(ref) + [(pod, st) for pod, st in reports if not self.watches(ref, pod)]

    # -- what the reports say (the replica they reach) -------------------------------------------------
    def offer(self, node: NodeInfo, state: dict[str, Any]) -> None:
        """A report arrived (any proxy's): queue its pod's condition if the pod says otherwise."""
        if node.kind != "waypoint" or "/" not in node.waypoint:
            return
        cond = condition_of(state)
        if cond is None:
            return
        key = (node.waypoint.split("/", 1)[0], node.name)
        with self._lock:
            view = self._pods.get(key)
            if view is not None and view.gateway == node.waypoint and same(view.condition, cond):
                return
            self._pending[key] = (node.waypoint, cond)
        self.wake.set()

    def flush(self) -> None:
        """Write the queued conditions (on the writer's thread: each is a request to the API)."""
        with self._lock:
            pending, self._pending = self._pending, {}
        for key, (gw, cond) in pending.items():
            self._write(key, gw, cond)

    def _write(self, key: PodKey, gw: str, cond: Obj) -> None:
        ns, name = key
        with self._lock:
            view = self._pods.get(key)
            if view is None or view.gateway != gw:
                if cond["status"] == "False" and key not in self._warned and len(self._warned) < MAX_WARNED:
                    self._warned.add(key)
                    log.warning("ingress pod %s/%s of Gateway %s reports listener ports it cannot bind (%s), but no "
                                "pod %s/%s labelled gateway.networking.k8s.io/gateway-name=%s is watched to write "
                                "it onto: it stays in this replica's memory, and the Gateway status shows it only "
                                "while this replica leads", ns, name, gw, cond["message"], ns, name,
                                gw.split("/", 1)[1])
                return
            if same(view.condition, cond):
                return
            sent = self._sent.get(key)
            if sent is not None and same(sent[0], cond) and self.clock() - sent[1] < self.rewrite_after:
                return      # written; the watch has not shown it yet
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        body = {"metadata": {"uid": view.uid} if view.uid else {},
                "status": {"conditions": [with_times(view.condition, cond, now)]}}
        what = f"pod {ns}/{name} condition {cond['type']}={cond['status']}"
        try:
            req = self.api.param_serialize(
                method="PATCH", resource_path=f"/api/v1/namespaces/{ns}/pods/{name}/status",
                header_params={"Content-Type": "application/strategic-merge-patch+json"}, body=body,
                auth_settings=["BearerToken"])
            resp = self.api.call_api(*req, _request_timeout=(10.0, 30.0))
            status, data = resp.status, resp.read()
        except ApiException as e:
            status, data = e.status or 0, (e.body or b"")
        except (urllib3.exceptions.HTTPError, OSError) as e:
            log.warning("writing %s: %s (the next report retries)", what, e)
            return
        if status >= 300:
            reason = _reason(data)
            log.warning("writing %s: HTTP %s%s (the next report retries)", what, status, f": {reason}" if reason else "")
            return
        with self._lock:
            self._sent[key] = (cond, self.clock())
        log.info("wrote %s", what)


def _reason(data: Any) -> str:
    try:
        return str(json.loads(data).get("message") or "")[:300]
    except (ValueError, AttributeError, TypeError):
        return ""
