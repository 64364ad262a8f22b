"""VirtualService delegation (`http[].delegate`), as Istio merges it (pilot/pkg/model/virtualservice.go
`mergeVirtualServicesIfNeeded`, `mergeHTTPRoute`, `mergeHTTPMatchRequests`, `hasConflict`).

A platform team owns a *root* VirtualService (it has `hosts`, often `gateways`) whose route hands a
part of the traffic, e.g. a path prefix, to a *delegate* VirtualService an app team owns (no
`hosts`, no `gateways`, `http` routes only; validation refuses the rest, as Istio does). The root's
route is replaced, in place, by the delegate's routes, each merged with it:

- the delegate is `delegate.name` in `delegate.namespace`, by default the root's namespace. A
  delegate that does not exist, has `hosts` (it is then no delegate), or whose `exportTo` does not
  reach the root's namespace leaves the root's route out: its requests go on to the next route (404
  when none matches). Only one level: a delegate's own `delegate` is refused by validation.
  Changes to either side apply at once: translation is a function of the whole snapshot.
- matches: a delegate route without match takes the root route's matches; a root route without
  match keeps the delegate route's. Otherwise every delegate match must fit inside a root match
  (uri/scheme/method/authority: an exact within a prefix or the same exact, a prefix extending the
  root's prefix, no regex on both sides; same `ignoreUriCase` and `port`; the root's
  `sourceNamespace`; no header, query parameter or source label the root matches differently;
  `gateways` among the root's), and is merged with each root match it fits (its own fields win,
  the root's fill the rest). A delegate route with a match that fits no root match is left out.
- the delegate route's own `rewrite`, `timeout`, `retries`, `fault`, `mirror(s)`,
  `mirrorPercentage`, `corsPolicy`, `headers` win; those it leaves unset are the root route's. Its
  destinations are its own (short names resolved in the delegate's namespace); names join
  ("root-delegate").

The merged routes belong to the root (its `source`, its hosts and gateways); a delegate on its
own routes nothing. What is left out is said by `notes` (`ambit apply`, `ambit analyze`, the
objects' `Enforced` status condition, through controller.waypoints.advisories).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from controller.kinds.istio_rules import resolve_gateway_name
from controller.translate.index import name_of, ns_of
from controller.translate.visibility import export_text, visible_to
from controller.validation import object_ref

Obj = dict[str, Any]
Fqdn = Callable[[str, str], str]

# HTTPRoute fields a delegate route takes from its root route when it leaves them unset (mergeHTTPRoute)
INHERITED = ("rewrite", "directResponse", "timeout", "retries", "fault", "mirror", "mirrorPercent",
             "mirrorPercentage", "corsPolicy", "mirrors", "headers")
_STRINGS = ("uri", "scheme", "method", "authority")
_MAPS = ("headers", "withoutHeaders", "queryParams", "sourceLabels")
_LOWER = ("headers", "withoutHeaders")      # header names are case-insensitive


@dataclass(frozen=True)
class Entry:
    """One `http` route as applied: a root's own, or a delegate's merged with its root route."""

    http: Obj
    ref: str                # the object it was written in (a delegate's route: the delegate)
    path: str               # spec.http[i] there
    delegated: bool = False  # its matches are the merge of the root's and the delegate's


@dataclass(frozen=True)
class Note:
    """A delegation that does not do all it says: the object, the field, why."""

    ref: str
    path: str
    reason: str
    cause: str      # DelegateNotFound | DelegateNotUsed (what may be elsewhere) | DelegateNotApplied


def is_delegate(vs: Obj) -> bool:
    """A VirtualService without hosts: only a root's `delegate` applies it."""
    return not (vs.get("spec") or {}).get("hosts")


class Delegation:
    """The VirtualServices of a snapshot, to expand roots' delegating routes."""

    def __init__(self, vss: Iterable[Obj], fqdn: Fqdn | None = None) -> None:
        self.by_name = {(ns_of(v), name_of(v)): v for v in vss}
        self.fqdn: Fqdn = fqdn or (lambda host, _ns: host)

    def entries(self, vs: Obj, notes: list[Note] | None = None) -> list[Entry]:
        """`vs`'s http routes, each delegating one replaced by its delegate's merged routes (none when
        the delegate cannot be used). What is left out goes to `notes`."""
        ref, ns, out = object_ref(vs), ns_of(vs), []
        said = notes if notes is not None else []
        for i, h in enumerate((vs.get("spec") or {}).get("http") or []):
            d = h.get("delegate")
            if not d:
                out.append(Entry(h, ref, f"spec.http[{i}]"))
                continue
            path = f"spec.http[{i}].delegate"
            target = self.by_name.get((d.get("namespace") or ns, d.get("name", "")))
            why = self._unusable(target, d.get("namespace") or ns, d.get("name", ""), ns)
            if why:
                said.append(Note(ref, path, f"{why}: this route is left out (requests it matches go on to the "
                                 "next route), as in Istio",
                                 "DelegateNotFound" if target is None else "DelegateNotApplied"))
                continue
            assert target is not None
            dref, dns = object_ref(target), ns_of(target)
            for k, sub in enumerate((target.get("spec") or {}).get("http") or []):
                merged = merge_route(h, self._resolved(sub, dns), ns)
                if merged is None:
                    said.append(Note(dref, f"spec.http[{k}].match", f"no match fits inside the matches of {ref} "
                                     f"spec.http[{i}], which delegates to it: this route is left out there, as in "
                                     "Istio (a delegate's matches must narrow its root's)", "DelegateNotApplied"))
                    continue
                out.append(Entry(merged, dref, f"spec.http[{k}]", delegated=True))
        return out

    def _unusable(self, target: Obj | None, dns: str, name: str, root_ns: str) -> str:
        if target is None:
            return f"delegate VirtualService {dns}/{name} does not exist"
        if not is_delegate(target):
            return (f"{object_ref(target)} has hosts, so it is no delegate (a delegate VirtualService has no "
                    "hosts and no gateways)")
        if not visible_to(target, root_ns):
            return f"{object_ref(target)} is not exported to namespace {root_ns} (its exportTo: {export_text(target)})"
        return ""

    def _resolved(self, sub: Obj, ns: str) -> Obj:
        """A delegate route with its destination hosts and gateway names made absolute in the
        delegate's namespace (Istio resolves short names before it merges)."""
        out = dict(sub)
        if sub.get("route"):
            out["route"] = [{**r, "destination": self._host(r.get("destination") or {}, ns)} for r in sub["route"]]
        if sub.get("mirror"):
            out["mirror"] = self._host(sub["mirror"], ns)
        if sub.get("mirrors"):
            out["mirrors"] = [{**m, "destination": self._host(m.get("destination") or {}, ns)} for m in sub["mirrors"]]
        if sub.get("match"):
            out["match"] = [_gateways_in(m, ns) for m in sub["match"]]
        return out

    def _host(self, dest: Obj, ns: str) -> Obj:
        return {**dest, "host": self.fqdn(dest.get("host", ""), ns)} if dest.get("host") else dest

    def notes(self) -> list[Note]:
        """Every delegation left out, and delegates no root uses."""
        out: list[Note] = []
        used: set[tuple[str, str]] = set()
        for vs in self.by_name.values():
            if is_delegate(vs):
                continue
            self.entries(vs, out)
            for h in (vs.get("spec") or {}).get("http") or []:
                if h.get("delegate"):
                    used.add((h["delegate"].get("namespace") or ns_of(vs), h["delegate"].get("name", "")))
        for key, vs in self.by_name.items():
            if is_delegate(vs) and key not in used:
                out.append(Note(object_ref(vs), "spec.hosts", "no hosts, and no VirtualService delegates to it "
                                "(http[].delegate): it routes nothing", "DelegateNotUsed"))
        return out


def _gateways_in(m: Obj, ns: str) -> Obj:
    gws = m.get("gateways")
    if not gws:
        return m
    return {**m, "gateways": [resolve_gateway_name(g, ns) for g in gws]}


def _join(a: str, b: str) -> str:
    return f"{a}-{b}" if a and b else a or b


def merge_route(root: Obj, sub: Obj, root_ns: str) -> Obj | None:
    """A delegate route merged with its root route (mergeHTTPRoute), or None on a match conflict."""
    root_matches = [_gateways_in(m, root_ns) for m in root.get("match") or []]
    matches = merge_matches(root_matches, list(sub.get("match") or []))
    if matches is None:
        return None
    out = {k: v for k, v in sub.items() if k != "delegate"}
    if matches:
        out["match"] = matches
    name = _join(root.get("name", ""), sub.get("name", ""))
    if name:
        out["name"] = name
    for k in INHERITED:
        if out.get(k) is None or (k == "mirrors" and not out.get(k)):
            if root.get(k) is not None:
                out[k] = root[k]
    return out


def merge_matches(root: list[Obj], sub: list[Obj]) -> list[Obj] | None:
    """mergeHTTPMatchRequests: None when a delegate match fits inside no root match."""
    if not root:
        return sub
    if not sub:
        return root
    out = []
    for leaf in sub:
        fits = [merge_match(r, leaf) for r in root if not conflict(r, leaf)]
        if not fits:
            return None
        out += fits
    return out


def merge_match(root: Obj, leaf: Obj) -> Obj:
    """The delegate's match with what it leaves unset taken from the root's (mergeHTTPMatchRequest)."""
    out = dict(leaf)
    name = _join(root.get("name", ""), leaf.get("name", ""))
    if name:
        out["name"] = name
    for k in _STRINGS:
        if out.get(k) is None and root.get(k) is not None:
            out[k] = root[k]
    for k in ("port", "sourceNamespace", "gateways", "statPrefix"):
        if not out.get(k) and root.get(k):
            out[k] = root[k]
    for k in _MAPS:
        merged = {**_keys(root.get(k), k), **_keys(leaf.get(k), k)}
        if merged:
            out[k] = merged
    return out        # ignoreUriCase: the same on both sides (else they conflict)


def _keys(m: Obj | None, field: str) -> Obj:
    return {(n.lower() if field in _LOWER else n): v for n, v in (m or {}).items()}


def conflict(root: Obj, leaf: Obj) -> bool:
    """hasConflict: the delegate's match cannot narrow the root's."""
    if any(string_conflict(root.get(k), leaf.get(k)) for k in _STRINGS):
        return True
    for k in ("headers", "withoutHeaders", "queryParams"):
        rm = _keys(root.get(k), k)
        if any(string_conflict(rm.get(n), v) for n, v in _keys(leaf.get(k), k).items()):
            return True
    if bool(root.get("ignoreUriCase")) != bool(leaf.get("ignoreUriCase")):
        return True
    rp, lp = int(root.get("port") or 0), int(leaf.get("port") or 0)
    if rp and lp and rp != lp:
        return True
    if root.get("sourceNamespace") and leaf.get("sourceNamespace") != root["sourceNamespace"]:
        return True
    rl = root.get("sourceLabels") or {}
    if any(k in rl and rl[k] != v for k, v in (leaf.get("sourceLabels") or {}).items()):
        return True
    rg, lg = root.get("gateways") or [], leaf.get("gateways") or []
    return bool(rg and lg and not set(lg) <= set(rg))


def string_conflict(root: Obj | None, leaf: Obj | None) -> bool:
    """stringMatchConflict: may the leaf's string match not narrow the root's?"""
    if root is None or leaf is None:
        return False
    if root.get("regex") and (leaf.get("regex") or leaf.get("prefix") or leaf.get("exact")):
        return True         # a regex narrows, and is narrowed by, nothing
    if leaf.get("regex") and (root.get("regex") or root.get("prefix") or root.get("exact")):
        return True
    if root.get("exact"):
        return bool(leaf.get("prefix")) or leaf.get("exact") != root["exact"]
    if root.get("prefix"):
        if leaf.get("prefix"):
            return not leaf["prefix"].startswith(root["prefix"])
        if leaf.get("exact"):
            return not leaf["exact"].startswith(root["prefix"])
    return True
