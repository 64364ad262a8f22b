"""Which endpoints a Service's clients prefer: Kubernetes `spec.trafficDistribution`, else Istio's
`networking.istio.io/traffic-distribution` annotation on the Service (or ServiceEntry), else on
its namespace, read as Istio reads them (istio/istio pilot/pkg/model/service.go
`GetTrafficDistribution`) into `Service.traffic_distribution`.

- `PreferClose` (deprecated by Kubernetes 1.34) and `PreferSameZone` mean "the client's zone,
  then its region, then anywhere"; `PreferSameNode` adds subzone and node.
- A spec value Ambit does not know (a newer Kubernetes) falls through to the annotations, as in
  Istio, and is reported by `unknown` (the API server has validated it, so it is a newer value,
  not a typo: the Service is translated, balanced as if it were unset).
- The annotations are case-insensitive; an unknown annotation value stops the search and means
  no preference (Istio logs it; Ambit warns, naming the object and the value).

ztunnel applies it (ztunnel/routing.py) unless `internalTrafficPolicy: Local` already narrows the
Service to the client's node (Istio gives that precedence); a waypoint applies it as locality
failover (waypoint/traffic/locality.py) unless a DestinationRule sets `localityLbSetting`.
"""

from __future__ import annotations

from typing import Any

Obj = dict[str, Any]

ANNOTATION = "networking.istio.io/traffic-distribution"
SAME_ZONE, SAME_NODE = "PreferSameZone", "PreferSameNode"
# spec and annotation values (annotations compared lower-cased) -> Service.traffic_distribution
VALUES = {"PreferClose": SAME_ZONE, SAME_ZONE: SAME_ZONE, SAME_NODE: SAME_NODE}
_LOWER = {k.lower(): v for k, v in VALUES.items()}


def _annotations(obj: Obj | None) -> dict[str, str]:
    return ((obj or {}).get("metadata") or {}).get("annotations") or {}


def traffic_distribution(obj: Obj, namespace: Obj | None, spec_field: bool = True) -> str:
    """The preference of Service (or, with `spec_field` False, ServiceEntry) `obj` in namespace
    object `namespace`: "PreferSameZone", "PreferSameNode" or ""."""
    if spec_field:
        value = VALUES.get(str((obj.get("spec") or {}).get("trafficDistribution") or ""))
        if value:
            return value
    for source in (obj, namespace):
        text = str(_annotations(source).get(ANNOTATION) or "")
        if text:
            return _LOWER.get(text.lower(), "")
    return ""


def unknown(obj: Obj, spec_field: bool = True) -> list[tuple[str, str]]:
    """(field, value) of the values of `obj` itself (a Service, ServiceEntry or Namespace) that
    `traffic_distribution` could not read, for a warning: a spec value it does not know, and an
    annotation value it does not know."""
    out: list[tuple[str, str]] = []
    if spec_field:
        value = (obj.get("spec") or {}).get("trafficDistribution")
        if value in VALUES:
            return out
        if value not in (None, ""):
            out.append(("spec.trafficDistribution", str(value)))
    text = str(_annotations(obj).get(ANNOTATION) or "")
    if text and text.lower() not in _LOWER:
        out.append((f"metadata.annotations[{ANNOTATION}]", text))
    return out
