"""Each component's own health under `ambit_`, collected at scrape time."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from ambit.dataplane.hbone.limits import ConnLimiter
from ambit.dataplane.telemetry.health import HealthCollector


def scrape(collector: object) -> dict[tuple[str, frozenset], float]:
    r = CollectorRegistry()
    r.register(collector)  # type: ignore[arg-type]
    return {(s.name, frozenset(s.labels.items())): s.value
            for f in text_string_to_metric_families(generate_latest(r).decode()) for s in f.samples}


class FakeClient:
    connected = True
    updates = 3
    last_update = 1_700_000_000.0

    def versions(self) -> dict[str, str]:
        return {"ambit.io/Workload": "abc123", "ambit.io/Service": "abc123", "ambit.io/Authorization": ""}


class FakeCerts:
    def expiries(self) -> dict[str, float | None]:
        return {"spiffe://a": 1000.0 + 3600, "spiffe://b": 1000.0 + 600, "spiffe://c": None}


def test_a_proxy_reports_config_certificates_and_connections() -> None:
    out, inn = ConnLimiter(2, "outbound connections per pod"), ConnLimiter(0, "inbound connections per pod")
    out.acquire("p1"), out.acquire("p1"), out.acquire("p1"), inn.acquire("p2")   # the third is refused
    h = HealthCollector(config=FakeClient(), certs=FakeCerts(),
                        connections=lambda: {"outbound": out.total(), "inbound": inn.total()},
                        refused=lambda: {x.what: x.refused for x in (out, inn)}, pool=lambda: 4,
                        clock=lambda: 1000.0)
    got = scrape(h)
    assert got[("ambit_config_connected", frozenset())] == 1
    assert got[("ambit_config_version_info", frozenset({("type", "Workload"), ("version", "abc123")}))] == 1
    assert not any(n == "ambit_config_version_info" and dict(k)["type"] == "Authorization" for n, k in got)
    assert got[("ambit_config_last_update_timestamp_seconds", frozenset())] == 1_700_000_000.0
    assert got[("ambit_config_updates_total", frozenset())] == 3
    assert got[("ambit_certificate_expiry_seconds", frozenset())] == 600      # the earliest
    assert got[("ambit_certificates", frozenset({("state", "valid")}))] == 2
    assert got[("ambit_certificates", frozenset({("state", "pending")}))] == 1
    assert got[("ambit_connections_open", frozenset({("direction", "outbound")}))] == 2
    assert got[("ambit_connections_open", frozenset({("direction", "inbound")}))] == 1
    assert got[("ambit_connections_refused_total", frozenset({("limit", "outbound connections per pod")}))] == 1
    assert got[("ambit_hbone_pool_connections", frozenset())] == 4
    out.release("p1")
    assert scrape(h)[("ambit_connections_open", frozenset({("direction", "outbound")}))] == 1   # read at scrape time


def test_parts_a_process_lacks_are_absent() -> None:
    assert scrape(HealthCollector()) == {}
    names = {n for n, _ in scrape(HealthCollector(certs=SimpleNamespace(expiries=lambda: {"x": None})))}
    assert names == {"ambit_certificates"}      # no certificate yet: no expiry, not a fake one


def test_the_controller_reports_its_version_and_ca() -> None:
    from controller.ca.authority import CertificateAuthority, generate_root
    from controller.health import ControllerHealth
    ca = CertificateAuthority(generate_root("cluster.local"), "cluster.local")
    servicer = SimpleNamespace(ca=ca, issued=5, refused={"PERMISSION_DENIED": 2})
    ctl = SimpleNamespace(version="v-1a2b", last_applied_at=1_700_000_000.0, snapshots=7)
    now = dt.datetime.now(dt.UTC).timestamp()
    got = scrape(ControllerHealth(ctl, servicer, clock=lambda: now))
    assert got[("ambit_config_version_info", frozenset({("version", "v-1a2b")}))] == 1
    assert got[("ambit_config_updates_total", frozenset())] == 7
    assert got[("ambit_ca_certificates_issued_total", frozenset())] == 5
    assert got[("ambit_ca_requests_refused_total", frozenset({("code", "PERMISSION_DENIED")}))] == 2
    assert got[("ambit_ca_requests_refused_total", frozenset({("code", "UNAUTHENTICATED")}))] == 0
    expiry = got[("ambit_certificate_expiry_seconds", frozenset())]
    assert 9 * 365 * 86400 < expiry <= 10 * 366 * 86400      # a fresh 10-year root
