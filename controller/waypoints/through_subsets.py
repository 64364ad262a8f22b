"""Route subsets that a waypoint makes moot, said out loud. Pure.

An ingress gateway sends its requests for a Service bound to a waypoint through that waypoint, and
so does a waypoint whose routes send to a Service bound to another one (waypoint/app.py
`_via_waypoint`: the Service's pods accept tunnels only from it), asking it for the Service's VIP
and port, as a client's ztunnel does. That waypoint then chooses the endpoint by the Service's own
routes and DestinationRules, so a `destination.subset` the first proxy's VirtualService route
names is not applied: Istio's gateways lose it the same way for a Service labelled
`istio.io/ingress-use-waypoint`. `through_subsets(good, translation)` returns one `NotEnforced`
advisory per such destination, at the field that names it.
"""

from __future__ import annotations

from typing import Any

Obj = dict[str, Any]
Advisory = tuple[str, str, str]         # (Kind/namespace/name, field, reason)


def through_subsets(good: list[Obj], tr: Any) -> list[Advisory]:
    """(ref, field, reason) for each VirtualService route destination with a subset that an
    ingress gateway or a waypoint of `tr` (the snapshot's translation) sends through another
    waypoint."""
    through = {s.hostname: s.waypoint for s in tr.services if s.waypoint and s.vips}
    by_ref = {f"{o.get('kind')}/{(o.get('metadata') or {}).get('namespace', '')}/{(o.get('metadata') or {}).get('name', '')}": o
              for o in good if o.get("kind") == "VirtualService"}
    proxies = [(f"ingress gateway {gw.resource_name}", "", [r for ln in gw.listeners for wr in ln.hosts
                                                             for r in [*wr.http, *wr.tcp]])
               for gw in tr.ingress.gateways]
    proxies += [(f"waypoint {wr.waypoint}", wr.waypoint, [*wr.http, *wr.tcp, *wr.tls])
                for wr in tr.waypoint_routes if wr.waypoint]
    found: dict[tuple[str, str], str] = {}
    for what, own, routes in proxies:
        for r in routes:
            for d in r.destinations:
                wp = through.get(d.host)
                if wp and wp != own and d.subset and r.source in by_ref:
                    for path in _subset_paths(by_ref[r.source], d.subset):
                        found.setdefault((r.source, path), (
                            f"subset {d.subset!r} of {d.host} is not applied by {what}: it sends the Service's "
                            f"traffic through its waypoint {wp}, which chooses the endpoint by the Service's own "
                            "routes (route there by subset with a VirtualService for the Service, as Istio's "
                            "gateways need with istio.io/ingress-use-waypoint)"))
    return [(ref, path, why) for (ref, path), why in sorted(found.items())]


def _subset_paths(vs: Obj, subset: str) -> list[str]:
    spec = vs.get("spec") or {}
    return [f"spec.{section}[{i}].route[{j}].destination.subset"
            for section in ("http", "tcp", "tls")
            for i, rule in enumerate(spec.get(section) or [])
            for j, rt in enumerate(rule.get("route") or [])
            if ((rt.get("destination") or {}).get("subset") == subset)]
