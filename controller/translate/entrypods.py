"""A ServiceEntry's `workloadSelector`: the pods of its namespace that are its endpoints.

Istio's ambient registry (pilot/pkg/serviceregistry/ambient, with PILOT_ENABLE_SERVICEENTRY_SELECT_PODS
on, its default) gives a pod every ServiceEntry of the pod's own namespace whose selector its labels
carry: the pod is then an endpoint of each of the entry's hosts, and ztunnel balances a connection
to the host's VIP over those pods as over a Kubernetes Service's. The rules kept here:

- **Own namespace only.** An entry never selects a pod of another namespace (a namespace's object
  cannot claim another's workloads).
- **Non-empty.** A selector without labels selects no pod (Istio's `FilterSelectsNonEmpty`; its
  validation only warns about it, and `ambit analyze` says it selects nothing).
- **Readiness as a Kubernetes Service's.** Running pods with an address, not being deleted, are
  endpoints; one whose Ready condition is not True is listed not ready (ztunnel and waypoints skip
  it), so a pod that becomes unready, stops matching or goes away leaves the host's rotation.
- **Ports.** A port of the entry reaches, on each pod, the pod's TCP container port of the same
  name (a container's, or a restartable init container's: a native sidecar); without one, the
  port's `targetPort`, else its own number (Istio's `constructServices` for ServiceEntry sources:
  no named targetPorts, the entry's port name is matched instead).

Why endpoints with the pod's uid: ztunnel and the waypoints then know them as mesh workloads and
reach them over HBONE to the pod's identity whatever the entry's `location` (Istio's ambient reads
no `location`); the pods' Workloads list the hosts among their Services (bound waypoints, metrics).
"""

from __future__ import annotations

from typing import Any

from ambit.model import Endpoint, ServicePort
from controller.translate.index import Index, labels_of, md, ns_of, selector_matches
from controller.translate.workloads import is_running, pod_ips, pod_ready

Obj = dict[str, Any]


def entry_selector(spec: Obj) -> dict[str, str] | None:
    """The entry's selector labels ({} when it selects by nothing), or None without workloadSelector."""
    sel = spec.get("workloadSelector")
    if sel is None:
        return None
    return dict((sel or {}).get("labels") or {})


def named_tcp_port(pod: Obj, name: str) -> int:
    """The pod's TCP container port called `name` (containers first, then native sidecars:
    init containers with restartPolicy Always), or 0. Unset protocol is TCP, as the API defaults it."""
    spec = pod.get("spec") or {}
    sidecars = [c for c in spec.get("initContainers") or [] if c.get("restartPolicy") == "Always"]
    for c in [*(spec.get("containers") or []), *sidecars]:
        for p in c.get("ports") or []:
            if p.get("name") == name and (p.get("protocol") or "TCP") == "TCP" and p.get("containerPort"):
                return int(p["containerPort"])
    return 0


class EntryPods:
    """The running pods of each namespace, gathered once per translation and only if an entry
    selects (most snapshots have no selecting entry, and reading every pod again would cost)."""

    def __init__(self, idx: Index) -> None:
        self._idx = idx
        self._by_ns: dict[str, list[Obj]] | None = None

    def selected(self, namespace: str, selector: dict[str, str]) -> list[Obj]:
        """The running pods of `namespace` carrying every label of `selector` (none when it is empty)."""
        if not selector:
            return []
        if self._by_ns is None:
            self._by_ns = {}
            for pod in self._idx.kind("Pod"):
                if is_running(pod):
                    self._by_ns.setdefault(ns_of(pod), []).append(pod)
        return [p for p in self._by_ns.get(namespace, []) if selector_matches(selector, labels_of(p))]


def pod_endpoint(pod: Obj, ports: list[ServicePort]) -> Endpoint:
    """The pod as an endpoint of an entry with `ports`: its own port for each entry port whose name
    it declares (the others fall back to targetPort or the number: `ambit.model.target_port`), its
    labels (DestinationRule subsets of the host select by them), ready as its Ready condition."""
    own = [ServicePort(p.port, tp, p.name, p.protocol) for p in ports if (tp := named_tcp_port(pod, p.name))]
    return Endpoint(workload_uid=md(pod).get("uid", ""), ip=pod_ips(pod)[0],
                    node=(pod.get("spec") or {}).get("nodeName", ""), ready=pod_ready(pod), ports=own,
                    labels=labels_of(pod))
