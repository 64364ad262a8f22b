"""The Gateway classes Ambit implements, by name: one definition for the controller (which Gateways
it claims, validates, deploys and writes status for), the waypoint binary (which role it takes) and
the CLI. A class added in one place and not the others would be claimed by one and ignored by
another, so there is only this one.
"""

from __future__ import annotations

# a waypoint (docs/waypoint.md); `istio-waypoint` as Istio names it
WAYPOINT_CLASSES = ("ambit-waypoint", "istio-waypoint")
# an ingress gateway, the same binary (docs/ingress.md); `istio` as Istio names it
INGRESS_CLASSES = ("ambit", "istio")
