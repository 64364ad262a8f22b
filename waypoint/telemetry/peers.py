"""The label derivation moved to the data-plane library (ztunnel's TCP metrics use it too)."""

from ambit.dataplane.telemetry.peers import (
                                             APP,
                                             CANONICAL_NAME,
                                             CANONICAL_REVISION,
                                             UNKNOWN,
                                             VERSION,
                                             Peer,
                                             canonical_revision,
                                             canonical_service,
                                             peer,
                                             workload_name,
)

__all__ = ["APP", "CANONICAL_NAME", "CANONICAL_REVISION", "UNKNOWN", "VERSION", "Peer", "canonical_revision",
           "canonical_service", "peer", "workload_name"]
