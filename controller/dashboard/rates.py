"""Per-second rates from scrapes of the components, without Prometheus: what `rate(x[W])` computes,
from the oldest and the newest scrape kept in a window.

Pure: a `Scrape` is (time, samples) and the caller supplies the times. A series absent from the
oldest scrape counts from zero (the components create a series at its first observation, so its
whole value is new); a counter that went down (its component restarted) counts from zero again, as
Prometheus's counter-reset handling does.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from controller.dashboard.graph import Rate

# The families the graph uses (counters, and the parts of histograms it needs).
WANTED = ("istio_requests_total", "istio_request_duration_milliseconds_bucket", "istio_request_bytes_sum",
          "istio_response_bytes_sum", "istio_tcp_connections_opened_total", "istio_tcp_connections_closed_total",
          "istio_tcp_sent_bytes_total", "istio_tcp_received_bytes_total")

Key = tuple[str, tuple[tuple[str, str], ...]]


@dataclass(frozen=True)
class Scrape:
    at: float
    samples: dict[Key, float]


def parse(text: str, target_labels: dict[str, str] | None = None) -> dict[Key, float]:
    """The wanted samples of one Prometheus text exposition, with the target's labels added (as
    Prometheus adds `namespace`/`gateway` to a waypoint's series)."""
    extra = target_labels or {}
    out: dict[Key, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name in WANTED:
                labels = {**s.labels, **extra}
                out[(s.name, tuple(sorted(labels.items())))] = float(s.value)
    return out


def rates(old: Scrape, new: Scrape) -> list[Rate]:
    """Per-second increase of every series of `new` since `old`."""
    dt = new.at - old.at
    if dt <= 0:
        return []
    out = []
    for key, v in new.samples.items():
        before = old.samples.get(key, 0.0)
        inc = v - before if v >= before else v
        out.append(Rate(key[0], dict(key[1]), inc / dt))
    return out


class Window:
    """The scrapes of the last `seconds`; `rates()` spans the oldest to the newest of them.

    Every scrape parses its keys afresh (a tuple of some 28 label pairs, about 5 KB a series), and
    the window holds a scrape every few seconds for a minute: kept as parsed, a waypoint with 10,000
    series cost the controller a gigabyte. So a key already seen in the previous scrape is replaced
    by that scrape's object, and the window holds one key per series, not one per series and scrape.
    Only the keys of the newest scrape are remembered for this, so gone series are not kept."""

    def __init__(self, seconds: float = 60.0) -> None:
        self.seconds = seconds
        self.scrapes: deque[Scrape] = deque()
        self._keys: dict[Key, Key] = {}

    def add(self, s: Scrape) -> None:
        known, keys, samples = self._keys, {}, {}
        for key, value in s.samples.items():
            key = known.get(key, key)
            keys[key] = key
            samples[key] = value
        self._keys = keys
        s = Scrape(s.at, samples)
        self.scrapes.append(s)
        while len(self.scrapes) > 2 and s.at - self.scrapes[1].at >= self.seconds:
            self.scrapes.popleft()

    def rates(self) -> list[Rate]:
        if len(self.scrapes) < 2:
            return []
        return rates(self.scrapes[0], self.scrapes[-1])

    @property
    def span(self) -> float:
        return self.scrapes[-1].at - self.scrapes[0].at if len(self.scrapes) >= 2 else 0.0
