"""Waypoint Gateways as the controller sees them, sans-IO.

- `gateways`: which Gateways are waypoints (class `ambit-waypoint` / `istio-waypoint`; any other
  class is not ours and is never claimed), what traffic they serve, and the Gateway API status
  (`Accepted`, `Programmed`, `addresses`, per-listener conditions) the controller writes on them.
- `render`: the Deployment, Service and ServiceAccount a waypoint Gateway owns in a cluster, the
  way Istio's gateway deployment controller renders them (ownerReferences to the Gateway, so
  deleting the Gateway garbage-collects them).
- `params`, `smp` and `owned`: a Gateway's `infrastructure.parametersRef` ConfigMap, overlays of those
  objects (and an optional HPA and PDB) merged with Kubernetes' strategic merge, and what of them
  stays Ambit's; `class_defaults` and `class_check`: its class's defaults ConfigMap (root namespace,
  label `gateway.istio.io/defaults-for-class`), merged first, and what is wrong with those.
- `advisories`: configuration that is accepted but not (yet) enforced, said out loud: L7 policy
  rules with no waypoint to enforce them, routes for hosts no waypoint serves, and fields the
  waypoint does not honour yet. `ambit apply` prints them; the controller writes them as status
  conditions.

The IO edges: `reconcile` (a cluster's API server: deploys and writes status) and `labstatus`
(the lab store: writes status), both run by the controller after each snapshot.
"""
