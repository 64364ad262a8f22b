"""Which tap events a reader wants (pure): the `ambit tap` filters. The CLI applies them to the lab's
admin taps; in a cluster the proxies apply them before anything leaves the node (the controller's
tap feed, controller/debug/tap.py), and the controller again per reader."""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from typing import Any

Event = dict[str, Any]


@dataclass(frozen=True)
class Filter:
    namespace: str = ""             # either side in this namespace ("" : all)
    to: str = ""                    # destination: WORKLOAD, NS/WORKLOAD, pod/POD, svc/SERVICE
    from_: str = ""                 # source: the same forms
    pod: str = ""                   # either side is this pod
    status: str = ""                # 5xx | 4xx | 403 | 2xx,3xx (comma: any)
    verdict: str = ""               # allowed | denied | error
    layer: str = ""                 # L4 | L7


def _name_matches(side: Event, spec: str) -> bool:
    """WORKLOAD matches the workload or a pod of it (`echo` matches pod `echo-5b7f9c-x2x`);
    NS/WORKLOAD also checks the namespace; pod/NAME only the pod; svc/NAME the destination Service."""
    kind, _, rest = spec.partition("/") if spec.split("/", 1)[0] in ("pod", "po", "svc", "service") else ("", "", spec)
    ns, _, name = rest.rpartition("/")
    if ns and side.get("namespace") != ns:
        return False
    if kind in ("svc", "service"):
        svc = _text(side.get("service"))
        return svc.rsplit("/", 1)[-1] == name or svc == rest
    pod, wl = _text(side.get("pod")), _text(side.get("workload"))
    if kind in ("pod", "po"):
        return pod == name
    return name in (wl, pod) or (pod.startswith(name + "-") and bool(_POD_SUFFIX.match(pod[len(name) + 1:])))


# What a controller appends to a workload's name to make a pod's: Deployment `-<hash>-<5>`,
# ReplicaSet/DaemonSet `-<5>`, StatefulSet `-<ordinal>` (so `echo` is not a pod of `echo-v1`).
_POD_SUFFIX = re.compile(r"^(?:[a-z0-9]{6,10}-[a-z0-9]{5}|[a-z0-9]{5}|\d+)$")


def _status_matches(status: int, spec: str) -> bool:
    for part in spec.split(","):
        part = part.strip().lower()
        if len(part) == 3 and part.endswith("xx") and part[0].isdigit():
            if status // 100 == int(part[0]):
                return True
        elif part.isdigit() and status == int(part):
            return True
    return False


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _side(value: Any) -> Event:
    return value if isinstance(value, dict) else {}


def _status_of(value: Any) -> int | None:
    """An event's HTTP status as an int: a proxy's JSON, so anything else (a list, "abc") is none."""
    if type(value) is int:
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 3:
        return int(value)
    return None


def event_matches(ev: Event, f: Filter) -> bool:
    """Does this tap event pass every filter given? An event is a proxy's JSON (in a cluster it
    reaches the controller over the node's feed): a field of the wrong type never matches, and
    never raises."""
    if ev.get("type") != "flow":
        return False
    src, dst = _side(ev.get("src")), _side(ev.get("dst"))
    if f.namespace and f.namespace not in (src.get("namespace"), dst.get("namespace")):
        return False
    if f.to and not _name_matches(dst, f.to):
        return False
    if f.from_ and not _name_matches(src, f.from_):
        return False
    if f.pod and f.pod not in (src.get("pod"), dst.get("pod")):
        return False
    if f.status and ((status := _status_of(ev.get("status"))) is None or not _status_matches(status, f.status)):
        return False
    if f.verdict and ev.get("verdict") != f.verdict:
        return False
    return not (f.layer and _text(ev.get("layer")).upper() != f.layer.upper())


def validate_status(spec: str) -> str:
    if not spec:        # the default (argparse passes string defaults through `type` too)
        return spec
    for part in spec.split(","):
        p = part.strip().lower()
        ok = (len(p) == 3 and p[0] in "12345" and (p[1:] == "xx" or p[1:].isdigit()))
        if not ok:
            raise argparse.ArgumentTypeError(f"--status {spec!r}: expected e.g. 5xx, 4xx, 403 or 2xx,3xx")
    return spec


def to_proto(f: Filter) -> Any:
    from ambit.api import debug_pb2
    return debug_pb2.TapFilter(namespace=f.namespace, to=f.to, pod=f.pod, status=f.status, verdict=f.verdict,
                               layer=f.layer, **{"from": f.from_})


def from_proto(m: Any) -> Filter:
    """A Filter from the wire; an invalid --status is refused (ValueError naming the field)."""
    try:
        validate_status(m.status)
    except argparse.ArgumentTypeError as e:
        raise ValueError(f"TapFilter.status: {e}") from None
    if m.verdict not in ("", "allowed", "denied", "error"):
        raise ValueError(f"TapFilter.verdict: {m.verdict!r} is not allowed, denied or error")
    if m.layer.upper() not in ("", "L4", "L7"):
        raise ValueError(f"TapFilter.layer: {m.layer!r} is not L4 or L7")
    return Filter(namespace=m.namespace, to=m.to, from_=getattr(m, "from"), pod=m.pod, status=m.status,
                  verdict=m.verdict, layer=m.layer)


def matches_any(ev: Event, filters: list[Filter]) -> bool:
    return any(event_matches(ev, f) for f in filters)
