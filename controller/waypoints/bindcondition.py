"""An ingress pod's listener binds as a condition on the pod itself (sans-IO: building, parsing,
reading it back off the watched Pods).

Reports (the debug API's Report) reach whichever controller replica the ingress is connected to,
and only the leader writes Gateway status. So in a cluster the replica that receives a report
writes what the Gateway status depends on where every replica sees it: the condition
`ambit.io/ListenersBound` on the reporting pod's status (controller/waypoints/podcondition.py),
`False PortUnavailable` listing each unbound port, its listeners and the OS error, `True Bound`
once all bind. The leader reads the condition back off the Pods it watches (`pod_reports`) and
feeds it to `ingress_status.bind_failures`, whichever replica wrote it. It lives and dies with the
pod, and `kubectl describe pod` shows it.

The report is the proxy's JSON: everything taken from it is checked (ports are integers in
1..65535, listener names Gateway API section names) and bounded (error text printable, `;`-free,
MAX_ERROR characters; MAX_ENTRIES ports; MAX_MESSAGE characters in all), because the message is
both what an operator reads and what the leader parses back (`failures`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

CONDITION_TYPE = "ambit.io/ListenersBound"
UNAVAILABLE, BOUND = "PortUnavailable", "Bound"
MAX_ERROR = 160          # characters of one port's OS error kept
MAX_ENTRIES = 64         # unbound ports named (a Gateway has at most 64 listeners)
MAX_LISTENERS = 64       # listener names in all (the same bound)
MAX_MESSAGE = 16384      # characters of the whole message
_SECTION = re.compile(r"[a-z0-9]([-a-z0-9]{0,251}[a-z0-9])?")     # Gateway API SectionName
_ENTRY = re.compile(r"port (\d{1,5}) \(([-a-z0-9,]+)\): (.*)")

Obj = dict[str, Any]
Entry = tuple[int, tuple[str, ...], str]        # port, listeners, error


def _clean_error(err: Any) -> str:
    """Printable, one line, no `;` (the entries' separator), at most MAX_ERROR characters."""
    text = "".join(c if c.isprintable() else " " for c in str(err or "not bound")).replace(";", ",")
    return " ".join(text.split())[:MAX_ERROR] or "not bound"


def unbound_entries(state: Mapping[str, Any]) -> list[Entry] | None:
    """The unbound ports of an ingress pod's report (state["ingress"], waypoint/ingress_binds.py),
    checked and bounded, sorted by port; None when the report is not an ingress's."""
    entries = state.get("ingress")
    if not isinstance(entries, list):
        return None
    by_port: dict[int, tuple[list[str], str]] = {}
    for e in entries:
        port = e.get("port") if isinstance(e, dict) else None
        if (not isinstance(e, dict) or e.get("bound") is not False or type(port) is not int
                or not 0 < port < 65536):
            continue
        given = e.get("listeners")
        names = [n for n in given if isinstance(n, str) and _SECTION.fullmatch(n)] if isinstance(given, list) else []
        if names:
            listeners, err = by_port.setdefault(port, ([], _clean_error(e.get("error"))))
            listeners.extend(n for n in names if n not in listeners)
    out: list[Entry] = []
    budget = MAX_LISTENERS
    for port in sorted(by_port)[:MAX_ENTRIES]:
        names, err = by_port[port]
        names = sorted(names)[:budget]
        if names:
            budget -= len(names)
            out.append((port, tuple(names), err))
    return out


def _message(entries: list[Entry]) -> str:
    parts = [f"port {p} ({','.join(ls)}): {err}" for p, ls, err in entries]
    kept, size = 0, 0
    for part in parts:
        if size + len(part) + 2 > MAX_MESSAGE - 40:
            break
        kept, size = kept + 1, size + len(part) + 2
    more = [f"and {len(parts) - kept} more port(s)"] if kept < len(parts) else []
    return "; ".join(parts[:kept] + more)


def condition_of(state: Mapping[str, Any]) -> Obj | None:
    """The ListenersBound condition (type, status, reason, message; no times) a report calls for;
    None when the report is not an ingress pod's (it has no `ingress` list)."""
    entries = unbound_entries(state)
    if entries is None:
        return None
    if not entries:
        return {"type": CONDITION_TYPE, "status": "True", "reason": BOUND,
                "message": "every listener port of this ingress pod is bound"}
    return {"type": CONDITION_TYPE, "status": "False", "reason": UNAVAILABLE, "message": _message(entries)}


def failures(condition: Mapping[str, Any] | None) -> list[Obj]:
    """The unbound ports a ListenersBound condition names, as report entries (`bound: false`,
    port, listeners, error) for `ingress_status.bind_failures`; [] unless its status is False.
    Segments that do not parse (written by someone else, or the "and N more" tail) are skipped."""
    if not condition or condition.get("status") != "False" or not isinstance(condition.get("message"), str):
        return []
    out: list[Obj] = []
    for seg in condition["message"][:MAX_MESSAGE].split("; "):
        m = _ENTRY.fullmatch(seg)
        if m and 0 < int(m.group(1)) < 65536:
            names = [n for n in m.group(2).split(",") if _SECTION.fullmatch(n)]
            out.append({"port": int(m.group(1)), "listeners": names, "bound": False, "error": m.group(3)})
    return out[:MAX_ENTRIES]


def condition_on(pod: Mapping[str, Any]) -> Obj | None:
    """The pod's ListenersBound condition, if any."""
    conds = (pod.get("status") or {}).get("conditions") if isinstance(pod.get("status"), dict) else None
    return next((c for c in conds or [] if isinstance(c, dict) and c.get("type") == CONDITION_TYPE), None)


def same(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> bool:
    """Do two conditions say the same (times aside)?"""
    keys = ("status", "reason", "message")
    return a is not None and b is not None and all(a.get(k) == b.get(k) for k in keys)


def with_times(old: Mapping[str, Any] | None, new: Obj, now: str) -> Obj:
    """`new` with lastTransitionTime: `old`'s when the status is unchanged, else `now`."""
    kept = old.get("lastTransitionTime") if old and old.get("status") == new["status"] else None
    return {**new, "lastTransitionTime": kept or now}


def gateway_of_pod(pod: Mapping[str, Any], labels: Iterable[str]) -> str:
    """"ns/name" of the Gateway the pod belongs to by its gateway-name label (`labels`, in order), or ""."""
    md = pod.get("metadata") or {}
    lab = md.get("labels") or {}
    name = next((lab[k] for k in labels if isinstance(lab.get(k), str) and lab[k]), "")
    return f"{md.get('namespace') or 'default'}/{name}" if name else ""
