"""proxy-status: one row per proxy, from the config stream's view (what each subscriber ACKed or
NACKed) joined with the proxy's own last report (pure; `istioctl proxy-status` semantics).

States, per proxy over all its subscribed types:
- NACK: the newest response of some type was rejected (the proxy keeps its last good config);
- SYNCED: every type holds exactly the controller's current scoped state;
- NOT SENT: nothing was sent yet (just subscribed);
- STALE: sent but not (yet) ACKed, or ACKed an older version;
- DISCONNECTED: the stream is gone (kept for a while in the controller's status).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from controller.configserver.subscription import SubscriberStatus, TypeStatus
from controller.debug.reports import Report


@dataclass(frozen=True)
class ProxyRow:
    sub: SubscriberStatus
    state: str
    acked_version: str
    nack: str
    report: Report | None
    report_age: float


def nacking(t: TypeStatus) -> bool:
    return t.last_nack is not None and t.last_nack.version == t.sent_version and not t.in_sync


def state_of(sub: SubscriberStatus, current: str) -> tuple[str, str, str]:
    """(state, acked version, NACK message) of one subscriber against the current version."""
    acked = {t.acked_version for t in sub.types}
    behind = [v for v in acked if v != current]
    acked_version = (behind[0] if behind else current) if acked else ""
    if "" in acked:
        acked_version = next((v for v in acked if v), "")
    if not sub.connected:
        return "DISCONNECTED", acked_version, ""
    for t in sub.types:
        if nacking(t):
            assert t.last_nack is not None
            return "NACK", acked_version, f"{t.type_url}: {t.last_nack.message}"
    if sub.types and all(t.in_sync for t in sub.types):
        return "SYNCED", acked_version, ""
    if not any(t.sent_version for t in sub.types):
        return "NOT SENT", acked_version, ""
    return "STALE", acked_version, ""


def proxy_status(subs: list[SubscriberStatus], current: str, reports: dict[str, Report],
                 age: Any = lambda r: 0.0) -> list[ProxyRow]:
    """One row per subscriber (agents included: they subscribe too), connected ones first."""
    rows = []
    for s in sorted(subs, key=lambda s: (not s.connected, s.node.kind, s.node.waypoint, s.node.name)):
        state, acked, nack = state_of(s, current)
        r = reports.get(s.node.key)
        rows.append(ProxyRow(s, state, acked, nack, r, age(r) if r is not None else -1.0))
    return rows
