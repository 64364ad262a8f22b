"""Which pods on this node are in the mesh: a pure function of pods and namespaces.

A pod is enrolled when its namespace is labelled `ambit.io/dataplane-mode=ambient` (Istio's
`istio.io/dataplane-mode=ambient` is honoured too, for teams migrating) and the pod does not opt out
with the label `ambit.io/dataplane-mode=none`. Only running pods with an IP on this node count.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MODE_LABELS = ("ambit.io/dataplane-mode", "istio.io/dataplane-mode")
AMBIENT = "ambient"
OPT_OUT = "none"


@dataclass(frozen=True)
class PodRef:
    """What the agent needs to capture one pod; equality means "nothing to redo"."""

    uid: str
    name: str
    namespace: str
    ip: str
    service_account: str
    netns: str
    cgroup: str
    annotations: tuple[tuple[str, str], ...] = ()
    labels: tuple[tuple[str, str], ...] = field(default=(), compare=False)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def namespace_enrolled(labels: dict[str, str]) -> bool:
    return any(labels.get(k) == AMBIENT for k in MODE_LABELS)


def pod_opted_out(labels: dict[str, str]) -> bool:
    return any(labels.get(k) == OPT_OUT for k in MODE_LABELS)


def pod_ref(pod: dict[str, Any]) -> PodRef | None:
    md, spec, status = pod.get("metadata", {}), pod.get("spec", {}), pod.get("status", {})
    ip = status.get("podIP")
    if not ip or status.get("phase", "Running") != "Running":
        return None
    ann = md.get("annotations") or {}
    return PodRef(uid=md.get("uid") or f"{md.get('namespace')}.{md.get('name')}", name=md["name"],
                  namespace=md.get("namespace", "default"), ip=ip,
                  service_account=spec.get("serviceAccountName") or "default",
                  netns=ann.get("lab.ambit.io/netns", ""), cgroup=ann.get("lab.ambit.io/cgroup", ""),
                  annotations=tuple(sorted((k, v) for k, v in ann.items() if k.startswith("ambit.io/"))),
                  labels=tuple(sorted((md.get("labels") or {}).items())))


def desired(node: str, pods: list[dict[str, Any]], namespaces: dict[str, dict[str, str]]) -> dict[str, PodRef]:
    """uid -> PodRef for every pod on `node` that must be captured."""
    out: dict[str, PodRef] = {}
    for pod in pods:
        if (pod.get("spec") or {}).get("nodeName") != node:
            continue
        md = pod.get("metadata", {})
        if not namespace_enrolled(namespaces.get(md.get("namespace", "default"), {})):
            continue
        if pod_opted_out(md.get("labels") or {}):
            continue
        ref = pod_ref(pod)
        if ref is not None:
            out[ref.uid] = ref
    return out


@dataclass
class Plan:
    add: list[PodRef]
    remove: list[str]
    update: list[PodRef]


def plan(current: dict[str, PodRef | None], want: dict[str, PodRef]) -> Plan:
    """What to do to go from `current` (uid -> last applied ref, None if adopted and unknown) to `want`."""
    add = [r for uid, r in want.items() if uid not in current]
    remove = [uid for uid in current if uid not in want]
    update = [r for uid, r in want.items() if uid in current and current[uid] != r]
    return Plan(add=sorted(add, key=lambda r: r.key), remove=sorted(remove),
                update=sorted(update, key=lambda r: r.key))
