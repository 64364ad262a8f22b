"""The controller's status writes for waypoints in the lab (the lab store stands in for the API server).

The same statuses as in a cluster (`reconcile.KubeWaypointReconciler`): each waypoint Gateway's
`Accepted`/`Programmed`/`addresses` (its Service is the one the lab creates for the waypoint pod;
`Accepted=False`, `InvalidParameters` when its parametersRef or class defaults are invalid, though
the lab applies neither),
each AuthorizationPolicy's `ZtunnelAccepted`/`WaypointAccepted`, each BackendTLSPolicy's
`status.ancestors`, and any Istio or Ambit object's
`Enforced=False` for fields accepted but not applied (`advisories.object_conditions`), and each
ServiceEntry's auto-allocated `status.addresses` (controller.translate.autoalloc), and the `Accepted`
condition of each GatewayClass of Ambit's controllerName applied to the lab (the lab creates no
class of its own: it has no API server whose clients would read one;
controller.waypoints.gatewayclasses). One store transaction per
pass, and only when something differs (times aside), so the snapshot our write causes changes
nothing and the loop ends. `ambit get gateway -o yaml` and `ambit waypoint status` read them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from ambit.labstore import Key, LabStore, key_of
from controller.translate.autoalloc import status_differs
from controller.translate.ingress import is_ingress
from controller.waypoints import gatewayclasses, ingress_status
from controller.waypoints import gateways as gws
from controller.waypoints.advisories import advisories, conditions_update, has_free_status, object_conditions
from controller.waypoints.params import check
from controller.waypoints.policy_status import policy_updates

log = logging.getLogger("ambit.controller.waypoints")
Obj = dict[str, Any]

def desired_statuses(objects: list[Obj], cluster_domain: str = "cluster.local", translation: Any = None,
                     root_namespace: str = "ambit-system",
                     unbound: Callable[[str], Mapping[str, Mapping[int, str]]] = lambda _ref: {}) -> dict[Key, Obj]:
    """(kind, ns, name) -> the whole new status, for every object whose status should change;
    `unbound(gateway ref)`: the ingress listeners its pods cannot bind (ingress_status.bind_failures)."""
    out: dict[Key, Obj] = {}
    invalid = invalid_parameters(objects, root_namespace)
    for gw in objects:
        if gws.is_waypoint(gw):
            want = gws.desired_status(gw, gws.find_service(gw, objects))
            if gws.gateway_ref(gw) in invalid:
                want = gws.invalid_parameters(want, gw, invalid[gws.gateway_ref(gw)])
            if gws.status_differs(gw.get("status"), want):
                out[key_of(gw)] = gws.with_times(gw.get("status"), want)
    if translation is not None:     # ingress Gateways and their routes (controller.waypoints.ingress_status)
        out.update(ingress_status.desired(objects, translation.ingress, unbound, invalid))
        out.update(policy_updates(objects, translation.backend_tls.ancestors))    # BackendTLSPolicy ancestors
    for o in objects:
        if gatewayclasses.is_class(o) and (want := gatewayclasses.desired_status(o)) is not None:
            out[key_of(o)] = want
    found = advisories(objects, cluster_domain, translation, root_namespace)
    for o in objects:
        if has_free_status(o):
            merged = conditions_update(o, object_conditions(o, found))
            if merged is not None:
                out[key_of(o)] = {**(o.get("status") or {}), "conditions": merged}
    if translation is not None:
        out.update(entry_addresses(objects, translation.entry_addresses, out))
    return out


def entry_addresses(objects: list[Obj], wanted: Mapping[tuple[str, str], list[Obj]],
                    pending: Mapping[Key, Obj]) -> dict[Key, Obj]:
    """The ServiceEntries whose `status.addresses` differ from the allocation's, with their whole
    new status (on top of a status `pending` already holds for them)."""
    out: dict[Key, Obj] = {}
    for o in objects:
        if o.get("kind") != "ServiceEntry":
            continue
        md = o.get("metadata") or {}
        want = wanted.get((md.get("namespace") or "default", md.get("name", "")), [])
        if status_differs(o, want):
            base = pending.get(key_of(o), o.get("status") or {})
            out[key_of(o)] = {**base, "addresses": want}
    return out


def invalid_parameters(objects: list[Obj], root_namespace: str) -> dict[str, str]:
    """Gateway ref -> why its parameters (its parametersRef, its class's defaults) are invalid, as a
    cluster's controller judges them (`params.check`): the lab applies no overlay (it runs gateways
    as processes), but its Gateways say Accepted=False, InvalidParameters, as they would there."""
    configmaps = {(o["metadata"].get("namespace") or "default", o["metadata"].get("name", "")): o
                  for o in objects if o.get("kind") == "ConfigMap" and isinstance(o.get("metadata"), dict)}
    out = {}
    for gw in objects:
        if gws.is_waypoint(gw) or is_ingress(gw):
            params = check(gw, configmaps, root_namespace=root_namespace)
            if params is not None and params.errors:
                out[gws.gateway_ref(gw)] = params.message()
    return out


class LabWaypointStatus:
    def __init__(self, store: LabStore, cluster_domain: str = "cluster.local", root_namespace: str = "ambit-system",
                 unbound: Callable[[str], Mapping[str, Mapping[int, str]]] = lambda _ref: {}):
        self.store = store
        self.unbound = unbound
        self.root_namespace = root_namespace
        self.cluster_domain = cluster_domain

    def reconcile(self, objects: list[Obj], translation: Any = None) -> None:
        updates = desired_statuses(objects, self.cluster_domain, translation, self.root_namespace, self.unbound)
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
