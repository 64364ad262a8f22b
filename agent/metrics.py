"""The node agent's Prometheus metrics, in a registry of their own (served on `--metrics-port` with
the readiness path: agent/health.py).

Why these two: an enrolled pod that runs uncaptured is a STRICT gap (plaintext from outside the mesh
reaches it), so how many there are is worth an alert whatever `--repair-pods` says, and what the
repair did about them (and whether the API server let it) is what an operator reads next
(deploy/alerts.yaml: AmbitPodsUncaptured, AmbitPodRepairFailing).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class AgentMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        self.uncaptured = Gauge(
            "ambit_agent_uncaptured_pods",
            "Running enrolled pods of this node whose capture failed and is not in place (a STRICT gap)",
            registry=self.registry)
        self.repairs = Counter(
            "ambit_agent_pod_repairs",
            "Repairs of uncaptured pods (--repair-pods): action label, delete or unlabel; result success, "
            "skipped (the pod changed, went or is bare), failed (the API server refused) or limited (rate)",
            ["action", "result"], registry=self.registry)
        for action in ("label", "delete", "unlabel"):   # every series from 0: alerts have a baseline
            for result in ("success", "skipped", "failed", "limited"):
                if not (action == "unlabel" and result == "limited"):
                    self.repairs.labels(action, result)
