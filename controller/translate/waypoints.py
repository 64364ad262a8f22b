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
- the waypoint's own pods (label `gateway.networking.k8s.io/gateway-name: <gateway>`) and its own
  Service (named after the Gateway) never use a waypoint, whatever their namespace says: traffic
  to a waypoint through itself would loop;
- the waypoint's pods are marked `protocol: HBONE`: they are not captured by ztunnel (they opt
  out of ambient capture) but terminate HBONE on :15008 themselves with the waypoint's identity,
  which is how ztunnel reaches them and recognises them (`ztunnel.sourcecheck`).
"""

from __future__ import annotations

from ambit.gatewayclasses import WAYPOINT_CLASSES
from ambit.model import Service, Workload
from controller.translate.index import Index, first_label, labels_of, name_of, ns_of
from controller.validation import FieldError

WAYPOINT_FOR_LABELS = ("ambit.io/waypoint-for", "istio.io/waypoint-for")
WAYPOINT_FOR = ("service", "workload", "all", "none")
# What an invalid waypoint-for label makes of the Gateway, everywhere: the translation (here), the
# status (controller.waypoints.gateways) and the deployment (controller.waypoints.reconcile).
NOT_A_WAYPOINT = ("the Gateway is not accepted and not used as a waypoint (not deployed; the Services and pods "
                  "that name it have their traffic refused, failing closed)")
GATEWAY_NAME_LABELS = ("gateway.networking.k8s.io/gateway-name", "istio.io/gateway-name")
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


def apply_waypoints(gateways: dict[str, str], services: list[Service], workloads: list[Workload]) -> None:
    """Make the use-waypoint references effective (see the module docstring). In place."""
    for svc in services:
        if svc.resource_name in gateways:
            svc.waypoint = ""
        elif svc.waypoint in gateways and gateways[svc.waypoint] not in SERVES_SERVICES:
            svc.waypoint = ""
    for wl in workloads:
        if gateway_of(wl) in gateways:
            wl.waypoint = ""
            wl.protocol = "HBONE"
        elif wl.waypoint in gateways and gateways[wl.waypoint] not in SERVES_WORKLOADS:
            wl.waypoint = ""
