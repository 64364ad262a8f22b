"""`ambit.io/` labels and annotations that Ambit does not read where they are written.

Namespaces, Pods and Services are not Ambit's kinds, so nothing refuses a key on them. A typo
(`ambit.io/exclude-outbound-port`), or a key written as an annotation where Ambit reads a label
(`ambit.io/use-waypoint`), or on a kind that does not take it, is simply ignored: the pod's
traffic is captured after all, or does not go through the waypoint, and nothing says why. Istio's
analyzer reports its own keys the same way (IST0108 UnknownAnnotation, IST0107 MisplacedAnnotation).

Only Ambit's own prefix is checked: `istio.io/` keys may be read by Istio's components, which can
run beside Ambit. Keys Ambit writes itself on the objects it renders (`ambit.io/managed-by` ...)
are not reported anywhere.
"""

from __future__ import annotations

import difflib
from typing import Any

from controller.validation import object_ref

Obj = dict[str, Any]
UNKNOWN_KEY = "UnknownAmbitKey"      # the advisory's cause (`ambit analyze` AMB0138)
PREFIX = "ambit.io/"

# (where, kind) -> the keys Ambit reads there (docs/configuration.md "Core kinds")
READ: dict[tuple[str, str], frozenset[str]] = {
    ("labels", "Namespace"): frozenset({"dataplane-mode", "use-waypoint", "use-waypoint-namespace",
                                        "ingress-use-waypoint"}),
    ("labels", "Pod"): frozenset({"dataplane-mode", "use-waypoint", "use-waypoint-namespace"}),
    ("labels", "Service"): frozenset({"use-waypoint", "use-waypoint-namespace", "ingress-use-waypoint"}),
    ("annotations", "Pod"): frozenset({"exclude-outbound-ports", "exclude-outbound-ip-ranges",
                                       "exclude-inbound-ports"}),
}
# what Ambit writes itself (rendered objects, the agent's repair label)
WRITTEN = frozenset({"managed-by", "version", "overlay-fields", "waypoint-controller", "gateway-controller",
                     "waypoint-for", "uncaptured"})
_ALL = sorted(set().union(*READ.values()))
_A = {"labels": "a label", "annotations": "an annotation"}


def _why(key: str, where: str, kind: str) -> str | None:
    name = key[len(PREFIX):]
    if name in READ.get((where, kind), ()) or name in WRITTEN:
        return None
    other = "annotations" if where == "labels" else "labels"
    if name in READ.get((other, kind), ()):
        return f"{key} is read as {_A[other]} on a {kind}, not as {_A[where]}: this one is ignored"
    kinds = sorted(k for (w, k), names in READ.items() if w == where and name in names)
    if kinds:
        return f"{key} is read on {' and '.join(f'{k}s' for k in kinds)}, not on a {kind}: this one is ignored"
    close = difflib.get_close_matches(name, _ALL, n=1, cutoff=0.75)
    hint = f' (did you mean "{PREFIX}{close[0]}"?)' if close else ""
    return f"Ambit reads no {where[:-1]} {key}{hint}: it is ignored"


def unknown_keys(good: list[Obj]) -> list[tuple[str, str, str]]:
    """(object ref, field path, why) for each `ambit.io/` label or annotation of a Namespace, Pod or
    Service that Ambit does not read there."""
    out = []
    for o in good:
        kind = o.get("kind")
        if kind not in ("Namespace", "Pod", "Service"):
            continue
        md = o.get("metadata") or {}
        for where in ("labels", "annotations"):
            for key in sorted(md.get(where) or {}):
                if isinstance(key, str) and key.startswith(PREFIX):
                    why = _why(key, where, kind)
                    if why:
                        out.append((object_ref(o), f"metadata.{where}[{key}]", why))
    return out
