"""A snapshot of objects indexed the way translation looks them up, plus label helpers."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

Obj = dict[str, Any]

WAYPOINT_LABELS = ("ambit.io/use-waypoint", "istio.io/use-waypoint")
WAYPOINT_NS_LABELS = ("ambit.io/use-waypoint-namespace", "istio.io/use-waypoint-namespace")
NETNS_ANNOTATION = "lab.ambit.io/netns"
CGROUP_ANNOTATION = "lab.ambit.io/cgroup"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"


def md(obj: Obj) -> Obj:
    return obj.get("metadata") or {}


def name_of(obj: Obj) -> str:
    return md(obj).get("name", "")


def ns_of(obj: Obj) -> str:
    return md(obj).get("namespace") or "default"


def labels_of(obj: Obj) -> dict[str, str]:
    return dict(md(obj).get("labels") or {})


def first_label(labels: dict[str, str], keys: tuple[str, ...]) -> str | None:
    for k in keys:
        if k in labels:
            return labels[k]
    return None


def selector_matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def created_at(obj: Obj) -> float:
    """creationTimestamp as seconds since the epoch; 0 (oldest) when unset or unreadable.

    Compared as an instant, not as text: RFC 3339, which `ambit apply` admits, also writes
    fractional seconds and offsets ("...T01:00:00+02:00" is before "...T00:00:00Z"), and text
    order gets those wrong."""
    text = md(obj).get("creationTimestamp")
    if not isinstance(text, str) or not text:
        return 0.0
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def age_key(obj: Obj) -> tuple[float, str, str]:
    """Oldest first, then by namespace/name: the tie-break Istio and Gateway API both use."""
    return (created_at(obj), ns_of(obj), name_of(obj))


@dataclass
class Index:
    by_kind: dict[str, list[Obj]] = field(default_factory=lambda: defaultdict(list))
    namespaces: dict[str, Obj] = field(default_factory=dict)

    @classmethod
    def build(cls, objects: list[Obj], age: Callable[[Obj], tuple[float, str, str]] = age_key) -> Index:
        """`age`: `age_key`, or the same remembered per object (controller.translate.memo)."""
        idx = cls()
        for o in objects:
            idx.by_kind[o["kind"]].append(o)
            if o["kind"] == "Namespace":
                idx.namespaces[name_of(o)] = o
        for lst in idx.by_kind.values():
            lst.sort(key=age)
        return idx

    def kind(self, kind: str) -> list[Obj]:
        return self.by_kind.get(kind, [])

    def ns_labels(self, ns: str) -> dict[str, str]:
        o = self.namespaces.get(ns)
        return labels_of(o) if o else {}


def waypoint_ref(obj_labels: dict[str, str], ns: str, fallback: str = "") -> str:
    """`ns/name` from a use-waypoint label ("none" opts out), else `fallback`."""
    value = first_label(obj_labels, WAYPOINT_LABELS)
    if value is None:
        return fallback
    if value == "none" or not value:
        return ""
    wp_ns = first_label(obj_labels, WAYPOINT_NS_LABELS) or ns
    return f"{wp_ns}/{value}"


def namespace_waypoint(idx: Index, ns: str) -> str:
    return waypoint_ref(idx.ns_labels(ns), ns)
