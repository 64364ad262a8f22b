"""Read one sample out of a component's real Prometheus exposition text (what a scrape returns)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector


def exposition(collector: Collector) -> str:
    """The text a scrape of a registry holding only `collector` returns."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return generate_latest(registry).decode()


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of sample `name` with exactly `labels` in exposition `text` (None: absent)."""
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and s.labels == labels:
                return s.value
    return None
