"""Prometheus metrics of the config server.

Per instance, with an injectable registry: the controller uses the default registry (served on
its /metrics), tests use their own so several servers can live in one process.
"""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram


class ConfigMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        registry = REGISTRY if registry is None else registry
        self.pushes = Counter(
            "ambit_config_pushes", "Config stream responses sent, by type and subscriber kind.",
            ["type_url", "kind"], registry=registry)
        self.push_latency = Histogram(
            "ambit_config_push_latency_seconds",
            "Time from a config update to the response carrying it being sent to a subscriber "
            "(includes debounce and waiting for the subscriber's previous ACK).",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=registry)
        self.subscribers = Gauge(
            "ambit_config_connected_subscribers", "Config streams currently open, by subscriber kind.",
            ["kind"], registry=registry)
        self.unknown_types = Counter(
            "ambit_config_unknown_type_subscriptions",
            "Subscriptions to a type URL this controller does not serve (a client newer than the controller), "
            "left unanswered, by subscriber kind.", ["kind"], registry=registry)
        self.nacks = Counter(
            "ambit_config_nacks", "Responses rejected by subscribers, by type and subscriber kind.",
            ["type_url", "kind"], registry=registry)
