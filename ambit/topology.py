"""Where a workload runs: the well-known Kubernetes and Istio topology labels that make up a
locality ("region/zone/subzone"), read by the controller (node labels into Workload.locality) and
the waypoint (failoverPriority compares them), and checked by the DestinationRule validator."""

from __future__ import annotations

REGION_LABEL = "topology.kubernetes.io/region"
ZONE_LABEL = "topology.kubernetes.io/zone"
SUBZONE_LABEL = "topology.istio.io/subzone"
TOPOLOGY_LABELS = (REGION_LABEL, ZONE_LABEL, SUBZONE_LABEL)
# A pod's own locality, "region.zone.subzone" (label values cannot hold "/"); Istio lets it
# override the node's labels.
LOCALITY_LABEL = "istio-locality"
