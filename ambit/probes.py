"""The ports a pod's kubelet probes use, from a Kubernetes Pod object (pure).

Kubelet probes come from the node, in plaintext. Ambit lets node-originated packets reach a
STRICT pod uncaptured *only on these ports* (as Istio's ambient mode exempts only kubelet's probe
traffic), so the list must come from the pod's own spec, never from a guess. Exec probes run
inside the container and use no port.
"""

from __future__ import annotations

from typing import Any

PROBE_KINDS = ("livenessProbe", "readinessProbe", "startupProbe")
PROBE_HANDLERS = ("httpGet", "tcpSocket", "grpc")


def _resolve(port: Any, named: dict[str, int]) -> int | None:
    if isinstance(port, bool):
        return None
    if isinstance(port, int):
        return port if 1 <= port <= 65535 else None
    if isinstance(port, str):
        if port.isdigit():
            return _resolve(int(port), named)
        return named.get(port)
    return None


def probe_ports(pod: dict[str, Any]) -> list[int]:
    """Sorted, de-duplicated ports of the pod's liveness/readiness/startup probes. A named port
    resolves against the same container's ports; one that does not resolve is left out (kubelet
    would fail that probe too)."""
    out: set[int] = set()
    spec = pod.get("spec") or {}
    for c in (spec.get("initContainers") or []) + (spec.get("containers") or []):
        named = {p["name"]: p["containerPort"] for p in c.get("ports") or []
                 if isinstance(p, dict) and p.get("name") and isinstance(p.get("containerPort"), int)}
        for kind in PROBE_KINDS:
            probe = c.get(kind) or {}
            for h in PROBE_HANDLERS:
                handler = probe.get(h)
                if isinstance(handler, dict) and "port" in handler:
                    port = _resolve(handler["port"], named)
                    if port is not None:
                        out.add(port)
    return sorted(out)
