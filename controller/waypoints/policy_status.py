"""`status.ancestors` of Gateway API policies (BackendTLSPolicy), as Gateway API's PolicyStatus
asks: one entry per ancestor with our `controllerName`, conditions `Accepted` and
`ResolvedRefs`; entries of other controllers kept; at most 16 in all.

Ambit's ancestors are the policy's targets themselves (one entry per targetRef, sectionName
included), as Istio's mesh controller writes them: the waypoints applying it are named in the
message. A valid policy's verdicts come from the translation (controller/translate/backendtls.py)
and are written by the waypoint reconciler; a policy whose newest version validation refused gets
`Accepted=False Invalid` on each of its targets, written by the Kubernetes source (which alone
sees the refused version).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from controller.translate.backendtls import Ancestor
from controller.translate.ingress import CONTROLLER_NAME
from controller.validation import FieldError, reasons
from controller.waypoints.gateways import _cond, merge_conditions

Obj = dict[str, Any]
MAX_ANCESTORS = 16          # status.ancestors' maxItems in Gateway API's CRDs
POLICY_KINDS = ("BackendTLSPolicy",)


def _same(a: Obj, b: Obj) -> bool:
    return all(a.get(k) == b.get(k) for k in ("group", "kind", "namespace", "name", "sectionName", "port"))


def ancestors_status(policy: Obj, verdicts: Iterable[Ancestor], now: float | None = None) -> Obj:
    """The policy's whole new status: our ancestors' entries (transition times kept where the
    status did not change), other controllers' kept after them."""
    gen = int((policy.get("metadata") or {}).get("generation") or 0)
    old = [o for o in ((policy.get("status") or {}).get("ancestors") or []) if isinstance(o, dict)]
    others = [o for o in old if o.get("controllerName") != CONTROLLER_NAME]
    mine = []
    for a in verdicts:
        prev = next((o for o in old if o.get("controllerName") == CONTROLLER_NAME
                     and _same(o.get("ancestorRef") or {}, a.ref)), None)
        mine.append({"ancestorRef": dict(a.ref), "controllerName": CONTROLLER_NAME, "conditions": merge_conditions(
            (prev or {}).get("conditions"), [_cond("Accepted", *a.accepted, gen), _cond("ResolvedRefs", *a.resolved, gen)],
            now)})
    return {**(policy.get("status") or {}), "ancestors": (mine + others)[:MAX_ANCESTORS]}


def refused_policy_status(policy: Obj, errors: Sequence[FieldError], in_force: Obj | None,
                          now: float | None = None) -> Obj | None:
    """The status of a policy whose newest version validation refused: `Accepted=False Invalid`
    on each of its targets (the refused version's, else the version in force's); None when it
    names none usable."""
    def targets(obj: Obj | None) -> list[Obj]:
        refs = ((obj or {}).get("spec") or {}).get("targetRefs")
        return [{k: r[k] for k in ("group", "kind", "name", "sectionName") if isinstance(r.get(k), str)}
                for r in (refs if isinstance(refs, list) else []) if isinstance(r, dict) and isinstance(r.get("name"), str)]
    refs = targets(policy) or targets(in_force)
    if not refs:
        return None
    kept = "nothing of it is applied" if in_force is None else \
        f"its last valid version (generation {int((in_force.get('metadata') or {}).get('generation') or 0)}) stays in force"
    message = f"refused by ambit: {reasons(errors)}; {kept}"[:32768]
    resolved = (True, "ResolvedRefs", "not checked: the policy is refused")
    return ancestors_status(policy, [Ancestor(r, (False, "Invalid", message), resolved) for r in refs], now)


def untimed_ancestors(status: Obj | None) -> Obj:
    """A status without transition times, to tell whether a write would change anything."""
    s = dict(status or {})
    s["ancestors"] = [{**x, "conditions": [{k: v for k, v in c.items() if k != "lastTransitionTime"}
                                           for c in x.get("conditions") or []]}
                      for x in s.get("ancestors") or [] if isinstance(x, dict)]
    return s


def policy_updates(objects: Iterable[Obj], ancestors: dict[str, list[Ancestor]],
                   refused: Iterable[tuple[str, str, str]] = ()) -> dict[tuple[str, str, str], Obj]:
    """(kind, ns, name) -> new status, for the policies whose status should change; `refused`
    ones (validation's: the Kubernetes source writes theirs) are left alone."""
    skip = set(refused)
    out = {}
    for o in objects:
        if o.get("kind") not in POLICY_KINDS:
            continue
        md = o.get("metadata") or {}
        key = (o["kind"], md.get("namespace") or "default", md.get("name") or "")
        verdicts = ancestors.get(f"{key[0]}/{key[1]}/{key[2]}")
        if key in skip or verdicts is None:
            continue
        want = ancestors_status(o, verdicts)
        if untimed_ancestors(want) != untimed_ancestors(o.get("status")):
            out[key] = want
    return out
