"""Kubernetes objects whose Ambit labels or Service fields do nothing as written, said out loud.

Namespaces, Pods and Services are not Ambit's kinds: `ambit apply` and the API server take them
whatever their labels say. Where a label Ambit reads has a value that changes nothing, or a Service
field asks for balancing that the mesh does not do, the user would otherwise find out from traffic:

- `dataplane-mode` with a value other than `ambient` or `none` (a typo such as `ambeint`): the
  namespace or pod is simply not enrolled, so mTLS and policy do not apply to it.
- a Pod's or Service's own `use-waypoint` label naming a waypoint whose `waypoint-for` does not
  take that kind of traffic (a pod naming a waypoint that serves Services only, Istio's default):
  the translation drops the reference (`controller.translate.waypoints.apply_waypoints`), so the
  traffic bypasses the waypoint and its L7 policy. Istio reports the same on the object as
  `istio.io/WaypointBound=False`. A namespace's label is not flagged: it applies to Services and
  pods alike, and each kind takes it only when the waypoint serves that kind.
- a Service with `sessionAffinity: ClientIP`: kube-proxy's client affinity is not applied by
  ztunnel or the waypoint (each connection is balanced on its own).
- a Service with `internalTrafficPolicy: Local` whose traffic goes through a waypoint: ztunnel
  keeps a client on its own node's endpoints, but a waypoint balances over every node's.
- `istio.io/ingress-use-waypoint` (or `ambit.io/…`, on a Service or its namespace) set to false or to
  a value Go's ParseBool does not read: Istio's gateways then go straight to the Service's pods.
  Ambit's ingress gateways always send a Service bound to a waypoint through it, because its pods
  accept tunnels only from their waypoint (waypoint/app.py `_via_waypoint`); so the value is not
  applied, and the note says so. `true` (what Ambit does anyway) is not flagged.
- a traffic distribution Ambit cannot read (controller/translate/distribution.py): a
  `trafficDistribution` value of a newer Kubernetes, or a `networking.istio.io/traffic-distribution`
  annotation (Service, ServiceEntry, Namespace) that is none of PreferClose, PreferSameZone,
  PreferSameNode: clients then spread over every endpoint; one that ztunnel does not apply because
  `internalTrafficPolicy: Local` already keeps clients on their node; one on a ServiceEntry of
  resolution NONE (its connections go where they were sent).

Pure: `label_notes(objects, gateways, svc_waypoint)` over the valid objects of a snapshot returns
`Note`s (object, field, reason, cause); `controller.waypoints.advisories` makes them `NotEnforced`
advisories, which `ambit apply` prints and `ambit analyze` reports.
"""

from __future__ import annotations

from typing import Any

from ambit.enrolment import AMBIENT, MODE_LABELS, OPT_OUT
from controller.translate import distribution
from controller.translate.index import WAYPOINT_LABELS, labels_of, name_of, ns_of, waypoint_ref
from controller.translate.waypoints import SERVES_SERVICES, SERVES_WORKLOADS
from controller.validation import object_ref
from controller.waypoints.gateways import waypoint_for

Obj = dict[str, Any]
Note = tuple[str, str, str, str]        # (Kind/namespace/name, field, reason, cause)

# What each waypoint-for value takes, by the kind whose own label names the waypoint.
_SERVES = {"Service": SERVES_SERVICES, "Pod": SERVES_WORKLOADS}


def label_notes(objects: list[Obj], gateways: dict[tuple[str, str], Obj],
                svc_waypoint: dict[tuple[str, str], str]) -> list[Note]:
    """What does nothing in the Namespaces, Pods and Services of `objects` (valid objects only).
    `gateways`: the waypoint Gateways by (namespace, name); `svc_waypoint`: the waypoint each
    Service's traffic goes through (the translation's, "" for none), by (namespace, name)."""
    out: list[Note] = []
    for o in objects:
        kind = o.get("kind")
        if kind == "ServiceEntry":
            out += _entry_distribution(o, object_ref(o))
        if kind not in ("Namespace", "Pod", "Service"):
            continue
        ref, labels = object_ref(o), labels_of(o)
        for key in MODE_LABELS:
            value = labels.get(key)
            if value is not None and value not in (AMBIENT, OPT_OUT):
                what = "the namespace's pods are" if kind == "Namespace" else "this pod is"
                out.append((ref, f"metadata.labels[{key}]", (
                    f"{value!r} is neither {AMBIENT!r} nor {OPT_OUT!r}: {what} not enrolled in the mesh "
                    "(no mTLS, no policy) unless something else enrols them"), "UnsupportedValue"))
        if kind in _SERVES:
            out += _waypoint_kind(o, ref, labels, gateways)
        if kind == "Service":
            out += _service_fields(o, ref, svc_waypoint.get((ns_of(o), name_of(o)), ""))
        if kind in ("Service", "Namespace"):
            out += _unread_distribution(o, ref, kind == "Service")
            out += _ingress_use_waypoint(ref, labels)
    return out


INGRESS_USE_WAYPOINT = ("istio.io/ingress-use-waypoint", "ambit.io/ingress-use-waypoint")
# Go's strconv.ParseBool, which Istio reads the label with (pilot/pkg/serviceregistry/ambient/services.go)
_TRUE, _FALSE = ("1", "t", "T", "TRUE", "true", "True"), ("0", "f", "F", "FALSE", "false", "False")


def _ingress_use_waypoint(ref: str, labels: dict[str, str]) -> list[Note]:
    """The ingress-use-waypoint label, where it asks for what Ambit does not do."""
    out: list[Note] = []
    for key in INGRESS_USE_WAYPOINT:
        value = labels.get(key)
        if value is None or value in _TRUE:
            continue
        what = ("false" if value in _FALSE else
                f"{value!r} is not a boolean (Istio reads it as false and logs a warning)")
        out.append((ref, f"metadata.labels[{key}]", (
            f"{what}: not applied: Ambit's ingress gateways always send a Service that uses a waypoint through "
            "that waypoint, because the Service's pods accept tunnels only from it (going around it would be "
            "refused); the waypoint's routes and L7 policy apply to ingress traffic, as with the label set to "
            "true in Istio"), "UnsupportedValue"))
    return out


def _unread_distribution(o: Obj, ref: str, spec_field: bool) -> list[Note]:
    """A traffic distribution value that means nothing to Ambit (a Service's or ServiceEntry's own
    values; a namespace's annotation is reported on the Namespace)."""
    return [(ref, where, (
        f"{value!r} is not a traffic distribution Ambit knows (PreferClose, PreferSameZone, PreferSameNode): "
        "clients spread over every endpoint, as with none"), "UnsupportedValue")
        for where, value in distribution.unknown(o, spec_field)]


def _entry_distribution(o: Obj, ref: str) -> list[Note]:
    out = _unread_distribution(o, ref, False)
    spec = o.get("spec") or {}
    if not out and (spec.get("resolution") or "NONE") == "NONE" and distribution.traffic_distribution(o, None, False):
        out.append((ref, f"metadata.annotations[{distribution.ANNOTATION}]", (
            "not applied: resolution NONE sends each connection to the address it was opened to, so there is no "
            "endpoint to prefer (as in Istio)"), "UnsupportedValue"))
    return out


def _waypoint_kind(o: Obj, ref: str, labels: dict[str, str], gateways: dict[tuple[str, str], Obj]) -> list[Note]:
    key = next((k for k in WAYPOINT_LABELS if k in labels), None)
    wp = waypoint_ref(labels, ns_of(o)) if key is not None else ""
    gw = gateways.get(tuple(wp.split("/", 1))) if wp else None    # type: ignore[arg-type]
    if gw is None:
        return []       # none, or not a waypoint: `ambit analyze` (AMB0108) says so
    serves = waypoint_for(gw)
    kind = o.get("kind", "")
    if serves in _SERVES[kind]:
        return []
    addressed = "this Service's VIP" if kind == "Service" else "this pod's IP"
    return [(ref, f"metadata.labels[{key}]", (
        f"waypoint {wp} has waypoint-for {serves!r}, which does not take traffic addressed to {addressed}: "
        f"that traffic does not go through it (its L7 policy and routes do not apply); label the waypoint "
        f"waypoint-for {_SERVES[kind][0]!r} or 'all', or name another waypoint"), "WaypointNotBound")]


def _service_fields(o: Obj, ref: str, waypoint: str) -> list[Note]:
    spec = o.get("spec") or {}
    out: list[Note] = []
    if spec.get("sessionAffinity") == "ClientIP":
        out.append((ref, "spec.sessionAffinity", (
            "ClientIP is not applied to mesh clients: ztunnel and the waypoint balance each connection on its "
            "own (for sticky requests through a waypoint, use a DestinationRule's loadBalancer.consistentHash)"),
            "UnsupportedValue"))
    if spec.get("internalTrafficPolicy") == "Local" and waypoint:
        out.append((ref, "spec.internalTrafficPolicy", (
            f"Local is applied by ztunnel, but this Service's traffic goes through waypoint {waypoint}, which "
            "balances over the endpoints of every node"), "UnsupportedValue"))
    if spec.get("internalTrafficPolicy") == "Local" and distribution.traffic_distribution(o, None):
        where = ("spec.trafficDistribution" if spec.get("trafficDistribution") in distribution.VALUES
                 else f"metadata.annotations[{distribution.ANNOTATION}]")
        out.append((ref, where, (
            "not applied by ztunnel: internalTrafficPolicy Local already keeps each client on its own node's "
            "endpoints (as in Istio)" + (f"; waypoint {waypoint} applies it" if waypoint else "")), "UnsupportedValue"))
    return out
