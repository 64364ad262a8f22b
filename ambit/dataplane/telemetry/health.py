"""A proxy's own health as Prometheus metrics, all under the `ambit_` prefix, read at scrape time.

The controller exports the same names for the same ideas (controller/health.py), so one panel or
alert covers every component (tell them apart by the scrape's `component` / `app` target label):

- `ambit_config_connected`: 1 while the config stream to the controller is up, else 0.
- `ambit_config_version_info{type, version}`: 1 per config type, naming the controller's system
  version that type's current state came from (versions are content hashes, hence a label).
- `ambit_config_last_update_timestamp_seconds`: unix time of the last config update applied
  (0 before the first). `time() - ambit_config_last_update_timestamp_seconds` is its age.
- `ambit_config_updates_total`: config updates applied (ACKed) since start.
- `ambit_certificate_expiry_seconds`: seconds until the earliest certificate this process holds
  expires (negative: one has expired). Absent while it holds none.
- `ambit_certificates{state}`: identities managed, by state (`valid`, `expired`, `pending`).
- `ambit_connections_open{direction}`: connections open now (ztunnel: `outbound` from its pods,
  `inbound` to them).
- `ambit_connections_refused_total{limit}`: connections refused or closed by a connection bound
  (a limit, or a deadline a connection missed before it carried anything: `preface_timeout`).
- `ambit_protocol_defenses_total{defense}`: protocol-level defences applied to a hostile or broken
  peer (ambit.dataplane.hbone.limits.DEFENSES: `reset_budget`, `header_flood`, `unread_flood`).
- `ambit_accept_backoffs_total{listener}`: times an accept loop paused for want of descriptors or
  kernel memory (EMFILE, ENFILE, ENOBUFS, ENOMEM: ambit/accept.py), by loop.
- `ambit_hbone_pool_connections`: pooled HBONE (mTLS) connections to other proxies.
- `ambit_listener_bind_failures_total{port}`: an ingress gateway's failed binds of a listener port
  (each retry counts); `ambit_listeners_unbound`: the ports its Gateway asks for that are not bound
  now (waypoint/ingress_binds.py).

Nothing here is touched per request or connection: a collector reads the objects that already keep
these numbers (the config client, the identity manager, the connection limiters) when Prometheus
scrapes, on the event loop that serves the scrape, so the data path takes no lock for them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


class ConfigSource(Protocol):
    """What a config stream client tells (ambit.configclient.ConfigClient has all of it)."""

    connected: bool
    updates: int
    last_update: float

    def versions(self) -> Mapping[str, str]: ...


class CertSource(Protocol):
    """What an identity manager tells (ambit.dataplane.identity.IdentityManager)."""

    def expiries(self) -> Mapping[str, float | None]: ...


def type_name(type_url: str) -> str:
    """"ambit.io/Workload" -> "Workload" (a short, stable label value)."""
    return type_url.rsplit("/", 1)[-1]


def config_families(client: ConfigSource | None) -> Iterator[Metric]:
    if client is None:
        return
    yield _gauge("ambit_config_connected", "1 while the config stream to the controller is up", 1.0 if client.connected else 0.0)
    info = GaugeMetricFamily("ambit_config_version_info",
                             "The controller's system version each config type's state came from", labels=["type", "version"])
    for t, v in sorted(client.versions().items()):
        if v:
            info.add_metric([type_name(t), v], 1.0)
    yield info
    yield _gauge("ambit_config_last_update_timestamp_seconds",
                 "Unix time of the last config update applied (0: none yet)", client.last_update)
    yield CounterMetricFamily("ambit_config_updates", "Config updates applied (ACKed)", value=client.updates)


def cert_families(expiries: Mapping[str, float | None], now: float) -> Iterator[Metric]:
    states = {"valid": 0, "expired": 0, "pending": 0}
    earliest = None
    for not_after in expiries.values():
        if not_after is None:
            states["pending"] += 1
            continue
        states["valid" if not_after > now else "expired"] += 1
        earliest = not_after if earliest is None else min(earliest, not_after)
    certs = GaugeMetricFamily("ambit_certificates", "Certificates (identities) held, by state", labels=["state"])
    for s, n in states.items():
        certs.add_metric([s], float(n))
    yield certs
    if earliest is not None:
        yield _gauge("ambit_certificate_expiry_seconds",
                     "Seconds until the earliest certificate held expires (negative: expired)", earliest - now)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _by_label(family: type[CounterMetricFamily] | type[GaugeMetricFamily], name: str, doc: str, label: str,
              values: Mapping[Any, int]) -> Metric:
    """One family with a sample per key of `values` (a counter dict read at scrape time), in order."""
    f = family(name, doc, labels=[label])
    for key, n in sorted(values.items()):
        f.add_metric([str(key)], float(n))
    return f


class BindSource(Protocol):
    """An ingress gateway's listener binds (waypoint.ingress_binds.BindState)."""

    failures_total: Mapping[int, int]

    def unbound(self) -> int: ...


class HealthCollector(Collector):
    """The `ambit_*` families of one proxy; every argument is optional (a part it lacks is absent).

    - `config`: its config stream client;
    - `certs`: its identity manager;
    - `connections`: () -> {direction: open connections};
    - `refused`: () -> {limit: connections refused by that limit};
    - `pool`: () -> pooled HBONE connections;
    - `defenses`: () -> {defense: times applied};
    - `backoffs`: () -> {accept loop: times it paused};
    - `binds`: an ingress gateway's listener binds (`failures_total` by port, `unbound()`).
    """

    def __init__(self, *, config: ConfigSource | None = None, certs: CertSource | None = None,
                 connections: Callable[[], Mapping[str, int]] | None = None,
                 refused: Callable[[], Mapping[str, int]] | None = None,
                 pool: Callable[[], int] | None = None,
                 defenses: Callable[[], Mapping[str, int]] | None = None,
                 backoffs: Callable[[], Mapping[str, int]] | None = None,
                 binds: BindSource | None = None,
                 certificate_waits: Callable[[], Mapping[str, int]] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.config, self.certs, self.connections = config, certs, connections
        self.refused, self.pool, self.defenses, self.clock = refused, pool, defenses, clock
        self.backoffs = backoffs
        self.binds = binds
        self.certificate_waits = certificate_waits

    def collect(self) -> Iterator[Metric]:
        yield from config_families(self.config)
        if self.certs is not None:
            yield from cert_families(self.certs.expiries(), self.clock())
        if self.connections is not None:
            yield _by_label(GaugeMetricFamily, "ambit_connections_open", "Connections open now", "direction",
                            self.connections())
        if self.refused is not None:
            yield _by_label(CounterMetricFamily, "ambit_connections_refused",
                            "Connections refused or closed by a connection limit or deadline", "limit", self.refused())
        if self.pool is not None:
            yield _gauge("ambit_hbone_pool_connections", "Pooled HBONE (mTLS) connections to other proxies",
                         float(self.pool()))
        if self.defenses is not None:
            yield _by_label(CounterMetricFamily, "ambit_protocol_defenses",
                            "Protocol-level defences applied to a hostile or broken peer", "defense", self.defenses())
        if self.backoffs is not None:
            yield backoff_family(self.backoffs())
        if self.certificate_waits is not None:
            yield _by_label(CounterMetricFamily, "ambit_handshake_certificate_waits",
                            "Inbound handshakes that waited for their server certificate, by outcome: came, or none "
                            "(then refused)", "outcome", self.certificate_waits())
        if self.binds is not None:
            yield _by_label(CounterMetricFamily, "ambit_listener_bind_failures",
                            "Failed binds of an ingress gateway's listener port (each retry counts)", "port",
                            self.binds.failures_total)
            yield _gauge("ambit_listeners_unbound", "Ingress gateway ports its Gateway asks for that are not bound now",
                         float(self.binds.unbound()))


def backoff_family(backoffs: Mapping[str, int]) -> Metric:
    """`ambit_accept_backoffs_total{listener}` (a supervisor's own families use it too)."""
    return _by_label(CounterMetricFamily, "ambit_accept_backoffs",
                     "Times an accept loop paused for want of descriptors or kernel memory", "listener", backoffs)


def describe(collector: Any) -> list[str]:
    """The family names a collector yields now (tests and docs)."""
    return sorted(m.name for m in collector.collect())
