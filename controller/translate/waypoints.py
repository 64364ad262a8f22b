"""Waypoint Gateways in the translation: which waypoints exist, whom they serve, and their pods.

A waypoint is a Gateway API `Gateway` of class `ambit-waypoint` or `istio-waypoint`. Its label
`ambit.io/waypoint-for` (or `istio.io/waypoint-for`) says which traffic it takes: `service`
(Istio's default: traffic addressed to a Service VIP), `workload` (addressed to a pod IP), `all`,
or `none`. The use-waypoint labels of Services, pods and namespaces name a waypoint; this module
makes those references effective:

- a Service keeps its `waypoint` only when the Gateway serves services (`service`/`all`), a
  Workload only when it serves workloads (`workload`/`all`). A reference to a Gateway that does
  not exist (yet) is kept as written: ztunnel then finds no waypoint pod and refuses the traffic,
  failing closed rather than skipping the L7 policy the user meant to apply. A Gateway whose
  `waypoint-for` is none of the four values is no waypoint either (a translation error, and
  `Accepted=False` in its status): its name is not guessed at;
- a waypoint in another namespace is used only when its HBONE listener's `allowedRoutes.namespaces`
  admits the using namespace (`Same` by default), as Istio requires for a cross-namespace waypoint:
  otherwise any namespace could send its traffic (a ServiceEntry's egress, say) through another
  team's waypoint, with its identity and address, and the reference is dropped and said
  (`WaypointNotAllowed`): the traffic does not go through that waypoint;
- the waypoint's own pods (label `gateway.networking.k8s.io/gateway-name: <gateway>`) and its own
  Service (named after the Gateway) never use a waypoint, whatever their namespace says: traffic
  to a waypoint through itself would loop;
- the waypoint's pods are marked `protocol: HBONE`: they are not captured by ztunnel (they opt
  out of ambient capture) but terminate HBONE on :15008 themselves with the waypoint's identity,
  which is how ztunnel reaches them and recognises them (`ztunnel.sourcecheck`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from ambit.gatewayclasses import WAYPOINT_CLASSES
from ambit.model import Service, Workload
from ambit.waypointpods import GATEWAY_NAME_LABELS
from controller.translate.index import Index, first_label, labels_of, name_of, ns_of
from controller.translate.ingress import namespace_allowed
from controller.validation import FieldError

WAYPOINT_FOR_LABELS = ("ambit.io/waypoint-for", "istio.io/waypoint-for")
WAYPOINT_FOR = ("service", "workload", "all", "none")
# What an invalid waypoint-for label makes of the Gateway, everywhere: the translation (here), the
# status (controller.waypoints.gateways) and the deployment (controller.waypoints.reconcile).
NOT_A_WAYPOINT = ("the Gateway is not accepted and not used as a waypoint (not deployed; the Services and pods "
                  "that name it have their traffic refused, failing closed)")
# The waypoint-for values that take traffic addressed to a Service's VIP, and to a pod's IP.
SERVES_SERVICES = ("service", "all")
SERVES_WORKLOADS = ("workload", "all")


def waypoint_gateways(idx: Index, errors: list[FieldError] | None = None) -> dict[str, str]:
    """"ns/name" of every waypoint Gateway -> what it serves (service | workload | all | none)."""
    out: dict[str, str] = {}
    for gw in idx.kind("Gateway"):
        if (gw.get("spec") or {}).get("gatewayClassName") not in WAYPOINT_CLASSES:
            continue
        value = first_label(labels_of(gw), WAYPOINT_FOR_LABELS) or "service"
        if value not in WAYPOINT_FOR:
            if errors is not None:
                errors.append(FieldError(f"Gateway/{ns_of(gw)}/{name_of(gw)}", "metadata.labels",
                                         f"waypoint-for {value!r} is not one of {', '.join(WAYPOINT_FOR)}: "
                                         f"{NOT_A_WAYPOINT}"))
            continue
        out[f"{ns_of(gw)}/{name_of(gw)}"] = value
    return out


def gateway_of(wl: Workload) -> str:
    """"ns/name" of the Gateway whose pod `wl` is (by its gateway-name label), or ""."""
    name = first_label(wl.labels, GATEWAY_NAME_LABELS)
    return f"{wl.namespace}/{name}" if name else ""


def waypoint_admits(idx: Index, waypoint: str, namespace: str) -> bool:
    """Does waypoint Gateway `waypoint` ("ns/name") take traffic of resources in `namespace`? Its
    HBONE listeners' (else all its listeners') `allowedRoutes.namespaces`, `Same` by default."""
    gw_ns, _, name = waypoint.partition("/")
    if gw_ns == namespace:
        return True
    gw = next((g for g in idx.kind("Gateway") if ns_of(g) == gw_ns and name_of(g) == name), None)
    if gw is None:
        return True     # not (yet) a Gateway: kept as written, refused by ztunnel (fail closed)
    listeners = [ln for ln in (gw.get("spec") or {}).get("listeners") or [] if isinstance(ln, dict)]
    listeners = [ln for ln in listeners if ln.get("protocol") == "HBONE"] or listeners
    return any(namespace_allowed(ln, gw_ns, namespace, idx.ns_labels(namespace)) for ln in listeners)


def workload_waypoint(gateway: str, waypoint: str, namespace: str, gateways: Mapping[str, str],
                      admits: Callable[[str, str], bool] = lambda wp, ns: True) -> tuple[str, bool, bool]:
    """A pod's use-waypoint reference made effective (see the module docstring): (the waypoint it
    uses, whether it is a waypoint's own pod (HBONE), whether the reference was dropped because the
    waypoint does not admit `namespace`). `gateway`: "ns/name" of the Gateway whose pod it is
    (`gateway_of`), or "". Decided before the Workload is made: nothing edits a translated Workload
    (controller.translate.memo hands the same one out again)."""
    if gateway in gateways:
        return "", True, False
    if waypoint in gateways and gateways[waypoint] not in SERVES_WORKLOADS:
        return "", False, False
    if waypoint in gateways and not admits(waypoint, namespace):
        return "", False, True
    return waypoint, False, False


def apply_waypoints(gateways: dict[str, str], services: list[Service],
                    admits: Callable[[str, str], bool] = lambda wp, ns: True,
                    refused: Mapping[tuple[str, str], list[str]] | None = None) -> list[tuple[str, str]]:
    """Make the Services' use-waypoint references effective (see the module docstring), in place;
    the pods' are decided as their Workloads are made (`workload_waypoint`), which notes in
    `refused` the pods whose waypoint does not admit their namespace ((namespace, waypoint) ->
    names). Returns what was dropped because the waypoint does not admit the namespace, as
    (object, why): one per Service and one per namespace's workloads."""
    notices: list[tuple[str, str]] = []
    for svc in services:
        if svc.resource_name in gateways:
            svc.waypoint = ""
        elif svc.waypoint in gateways and gateways[svc.waypoint] not in SERVES_SERVICES:
            svc.waypoint = ""
        elif svc.waypoint in gateways and not admits(svc.waypoint, svc.namespace):
            kind = "ServiceEntry host" if svc.kind == "ServiceEntry" else "Service"
            notices.append(_not_admitted(f"{kind}/{svc.namespace}/{svc.name}", svc.waypoint, svc.namespace))
            svc.waypoint = ""
    for (ns, wp), pods in sorted((refused or {}).items()):
        notices.append(_not_admitted(f"Pod/{ns}/{', '.join(sorted(pods))}", wp, ns))
    return notices


def _not_admitted(ref: str, waypoint: str, namespace: str) -> tuple[str, str]:
    return ref, (f"waypoint {waypoint} does not admit namespace {namespace} (its HBONE "
                  "listener's allowedRoutes.namespaces; Same by default): this traffic does not go through it, nor "
                  "its L7 policy; set allowedRoutes.namespaces on the waypoint (from: All, or a Selector) or use "
                  "a waypoint of this namespace")
