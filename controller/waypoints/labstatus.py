"""The controller's status writes for waypoints in the lab (the lab store stands in for the API server).

The same statuses as in a cluster (`reconcile.KubeWaypointReconciler`): each waypoint Gateway's
`Accepted`/`Programmed`/`addresses` (its Service is the one the lab creates for the waypoint pod),
and each AuthorizationPolicy's `ZtunnelAccepted`/`WaypointAccepted`. One store transaction per
pass, and only when something differs (times aside), so the snapshot our write causes changes
nothing and the loop ends. `ambit get gateway -o yaml` and `ambit waypoint status` read them.
"""

from __future__ import annotations

import logging
from typing import Any

from ambit.labstore import Key, LabStore, key_of
from controller.waypoints import gateways as gws
from controller.waypoints import ingress_status
from controller.waypoints.advisories import WAYPOINT_ACCEPTED, ZTUNNEL_ACCEPTED, advisories, policy_conditions

log = logging.getLogger("ambit.controller.waypoints")
Obj = dict[str, Any]
POLICY_CONDITIONS = (ZTUNNEL_ACCEPTED, WAYPOINT_ACCEPTED)


def _untimed(conds: list[Obj]) -> list[Obj]:
    return [{k: v for k, v in c.items() if k != "lastTransitionTime"} for c in conds]


def desired_statuses(objects: list[Obj], cluster_domain: str = "cluster.local", translation: Any = None,
                     root_namespace: str = "ambit-system") -> dict[Key, Obj]:
    """(kind, ns, name) -> the whole new status, for every object whose status should change."""
    out: dict[Key, Obj] = {}
    for gw in objects:
        if gws.is_waypoint(gw):
            want = gws.desired_status(gw, gws.find_service(gw, objects))
            if gws.status_differs(gw.get("status"), want):
                out[key_of(gw)] = gws.with_times(gw.get("status"), want)
    if translation is not None:     # ingress Gateways and their routes (controller.waypoints.ingress_status)
        out.update(ingress_status.desired(objects, translation.ingress))
    found = advisories(objects, cluster_domain, translation, root_namespace)
    for p in objects:
        if p.get("kind") != "AuthorizationPolicy":
            continue
        want = policy_conditions(p, found)
        mine = {c["type"] for c in want}
        old_status = p.get("status") or {}
        old = list(old_status.get("conditions") or [])
        merged = [c for c in gws.merge_conditions(old, want)
                  if c.get("type") not in POLICY_CONDITIONS or c["type"] in mine]
        if _untimed(merged) != _untimed(old):
            out[key_of(p)] = {**old_status, "conditions": merged}
    return out


class LabWaypointStatus:
    def __init__(self, store: LabStore, cluster_domain: str = "cluster.local", root_namespace: str = "ambit-system"):
        self.store = store
        self.root_namespace = root_namespace
        self.cluster_domain = cluster_domain

    def reconcile(self, objects: list[Obj], translation: Any = None) -> None:
        updates = desired_statuses(objects, self.cluster_domain, translation, self.root_namespace)
        if not updates:
            return

        def fn(cur: dict[Key, Obj]) -> list[Key]:
            changed = []
            for k, status in updates.items():
                if k in cur:
                    cur[k]["status"] = status
                    changed.append(k)
            return changed
        self.store.mutate(fn)
        log.info("status written: %s", ", ".join(f"{k[0]}/{k[1]}/{k[2]}" for k in sorted(updates)))
