"""The ambient enrolment rule, in one place for the controller and the node agent.

A pod is in the mesh when it says `dataplane-mode: ambient` itself, or its namespace does and the
pod does not opt out with `dataplane-mode: none`. Ambit's label `ambit.io/dataplane-mode` is read
first; Istio's `istio.io/dataplane-mode` is honoured too, for teams migrating. Host-network pods are
never enrolled: they share the node's netns, so there is nothing of their own to capture.
"""

from __future__ import annotations

MODE_LABELS = ("ambit.io/dataplane-mode", "istio.io/dataplane-mode")
AMBIENT = "ambient"
OPT_OUT = "none"
# The phases of a pod whose sandbox is up and may send traffic. A Pending pod with an address runs
# its init containers (which may connect: fetch a secret, wait for a database) and starts its app
# any moment, whatever the image pull takes; Istio's ambient mesh includes it too. The controller
# makes such pods workloads and the agent captures them; only Running pods are Service endpoints.
SANDBOX_PHASES = ("Running", "Pending")


def mode(labels: dict[str, str]) -> str | None:
    """The dataplane mode a set of labels asks for, Ambit's label first; None if neither is set."""
    for k in MODE_LABELS:
        if k in labels:
            return labels[k]
    return None


def opted_out(pod_labels: dict[str, str]) -> bool:
    return mode(pod_labels) == OPT_OUT


def is_enrolled(pod_labels: dict[str, str], ns_labels: dict[str, str], host_network: bool = False) -> bool:
    if host_network:
        return False
    pod_mode = mode(pod_labels)
    if pod_mode == OPT_OUT:
        return False
    return pod_mode == AMBIENT or mode(ns_labels) == AMBIENT
