"""Which pods on this node are in the mesh: a pure function of pods and namespaces.

The enrolment rule itself is `ambit.enrolment` (shared with the controller): a pod or its namespace
says `dataplane-mode: ambient` and the pod does not opt out with `none`. Only running pods with an
IP on this node count. The sources that hand the agent Kubernetes objects (the lab store, the API
server) apply it here; with the config stream the controller has applied it (`Workload.enrolled`).
Both kinds of source end in `LocalPod` records, and the agent acts on those alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agent.capture.dns import ANN_DNS_CAPTURE
from ambit.enrolment import SANDBOX_PHASES, is_enrolled, opted_out
from ambit.podannotations import ANN_BYPASS_INBOUND
from ambit.probes import probe_ports

OPTED_OUT_REASON = "opted out by label"


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
    probe_ports: tuple[int, ...] = ()   # kubelet probe ports: node-originated packets pass there

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class LocalPod:
    """One pod of this node as the agent acts on it, whichever source described it.

    `enrolled` is the decision (made by `local_pods` below, or by the controller); `ref` is what
    capturing needs (None while the pod is not running with an IP); `reason` says why a pod is not
    enrolled when that is worth showing (an opt-out), for the agent's status file. Every pod of the
    node the source knows has a record, enrolled or not.
    """

    key: str                    # "namespace/name"
    enrolled: bool
    ref: PodRef | None = None
    reason: str = ""
    # The pod's uid when there is no ref: the source knows the pod (it exists, and this is its
    # decision) even before it runs with an IP. The agent keeps a pod it captured at sandbox
    # creation until a source says otherwise (agent/__main__.py, `_kept_by_sandbox`).
    uid: str = ""


def pod_opted_out(labels: dict[str, str]) -> bool:
    return opted_out(labels)


def is_capture_annotation(key: str) -> bool:
    """Whether an annotation shapes capture: `ambit.io/exclude-*` and Istio's
    `ambient.istio.io/dns-capture` and `ambient.istio.io/bypass-inbound-capture`; a change of one
    re-applies the pod's capture."""
    return key.startswith("ambit.io/") or key in (ANN_DNS_CAPTURE, ANN_BYPASS_INBOUND)


def capture_annotations(annotations: dict[str, str]) -> tuple[tuple[str, str], ...]:
    """The annotations that shape capture, in PodRef's comparable form."""
    return tuple(sorted((k, v) for k, v in annotations.items() if is_capture_annotation(k)))


def pod_ref(pod: dict[str, Any]) -> PodRef | None:
    md, spec, status = pod.get("metadata", {}), pod.get("spec", {}), pod.get("status", {})
    ip = status.get("podIP")
    if not ip or status.get("phase", "Running") not in SANDBOX_PHASES:
        return None
    ann = md.get("annotations") or {}
    return PodRef(uid=md.get("uid") or f"{md.get('namespace')}.{md.get('name')}", name=md["name"],
                  namespace=md.get("namespace", "default"), ip=ip,
                  service_account=spec.get("serviceAccountName") or "default",
                  netns=ann.get("lab.ambit.io/netns", ""), cgroup=ann.get("lab.ambit.io/cgroup", ""),
                  annotations=capture_annotations(ann),
                  labels=tuple(sorted((md.get("labels") or {}).items())),
                  probe_ports=tuple(probe_ports(pod)))


def local_pods(node: str, pods: list[dict[str, Any]], namespaces: dict[str, dict[str, str]]) -> list[LocalPod]:
    """The records of the pods on `node`: enrolled (with a ref once running with an IP), or not
    (with the reason when it is an opt-out)."""
    out: list[LocalPod] = []
    for pod in pods:
        if (pod.get("spec") or {}).get("nodeName") != node:
            continue
        md = pod.get("metadata", {})
        labels = md.get("labels") or {}
        ns_labels = namespaces.get(md.get("namespace", "default"), {})
        key = f"{md.get('namespace', 'default')}/{md.get('name')}"
        uid = md.get("uid") or f"{md.get('namespace')}.{md.get('name')}"
        if not is_enrolled(labels, ns_labels, bool((pod.get("spec") or {}).get("hostNetwork"))):
            why = OPTED_OUT_REASON if opted_out(labels) and is_enrolled({}, ns_labels) else ""
            out.append(LocalPod(key, enrolled=False, reason=why, uid=uid))
            continue
        out.append(LocalPod(key, enrolled=True, ref=pod_ref(pod), uid=uid))
    return out


def to_capture(records: list[LocalPod]) -> dict[str, PodRef]:
    """uid -> PodRef of the records that must be captured."""
    return {r.ref.uid: r.ref for r in records if r.enrolled and r.ref is not None}


def known_uids(records: list[LocalPod]) -> tuple[set[str], set[str]]:
    """(uids of every pod the records show, uids of those the source says not to capture)."""
    uids = {r.ref.uid if r.ref is not None else r.uid for r in records}
    return uids - {""}, {r.ref.uid if r.ref is not None else r.uid for r in records if not r.enrolled} - {""}


def desired(node: str, pods: list[dict[str, Any]], namespaces: dict[str, dict[str, str]]) -> dict[str, PodRef]:
    """uid -> PodRef for every pod on `node` that must be captured."""
    return to_capture(local_pods(node, pods, namespaces))


def missing_paths(ref: PodRef) -> str:
    """Why the agent cannot act on an enrolled pod yet ("" if it can): it needs both paths."""
    missing = [what for what, v in (("netns", ref.netns), ("cgroup", ref.cgroup)) if not v]
    if not missing:
        return ""
    return f"{ref.key}: its {' and '.join(missing)} is not known (not on this host yet, or not reported)"


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
