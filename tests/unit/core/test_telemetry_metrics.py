"""Telemetry `metrics` overrides (ambit.telemetrymetrics, resolved by ambit.telemetry): Istio's
precedence and merge rules, and the label rewriting the proxies apply to their series."""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest

from ambit.dataplane.telemetry.metrics import MUTUAL_TLS, ConnLabels, Metrics
from ambit.model import MeshSettings, TelemetryPolicy
from ambit.telemetry import CLIENT, SERVER, for_waypoint, for_workload
from ambit.telemetrymetrics import FAMILIES, REMOVED, UNKNOWN, TagOverride, prune, relabel, resolve

MESH = MeshSettings("cluster.local", extension_providers=[
    {"name": "sd", "kind": "stackdriver"}, {"name": "prom2", "kind": "prometheus"}])


def tel(name: str, ns: str, scope: str = "namespace", **kw: object) -> TelemetryPolicy:
    return TelemetryPolicy(name=name, namespace=ns, scope=scope, **kw)  # type: ignore[arg-type]


def test_disabled_and_mode_follow_istio_semantics() -> None:
    cfg = resolve([{"match": {"metric": "REQUEST_COUNT", "mode": "CLIENT"}, "disabled": True},
                   {"match": {"metric": "TCP_SENT_BYTES"}, "disabled": True}], SERVER)
    assert not cfg.enabled("TCP_SENT_BYTES")
    assert cfg.enabled("REQUEST_COUNT")                      # CLIENT-only override: not the server side
    client = resolve([{"match": {"metric": "REQUEST_COUNT", "mode": "CLIENT"}, "disabled": True}], CLIENT)
    assert not client.enabled("REQUEST_COUNT")
    everything = resolve([{"disabled": True}], SERVER)       # no match: ALL_METRICS, CLIENT_AND_SERVER
    assert all(not everything.enabled(m) for m in FAMILIES)


def test_narrower_level_re_enables_and_overrides_tags_label_by_label() -> None:
    mesh = tel("mesh", "ambit-system", "global", metrics_overrides=[
        {"disabled": True, "match": {"metric": "REQUEST_SIZE"}},
        {"tagOverrides": {"request_protocol": {"operation": "REMOVE"}, "team": {"value": "'core'"}}}])
    wl = tel("wl", "app", "workload", selector={"app": "web"}, metrics_overrides=[
        {"match": {"metric": "REQUEST_SIZE"}, "disabled": False},
        {"match": {"metric": "REQUEST_COUNT"}, "tagOverrides": {"team": {"operation": "UPSERT", "value": "'web'"}}}])
    web = for_workload([wl, mesh], None, "app", {"app": "web"}, SERVER).metrics
    assert web.enabled("REQUEST_SIZE")
    assert {(t.name, t.operation, t.value) for t in web.tags_for("REQUEST_COUNT")} == {
        ("request_protocol", "REMOVE", ""), ("team", "UPSERT", "'web'")}
    assert ("team", "UPSERT", "'core'") in {(t.name, t.operation, t.value) for t in web.tags_for("TCP_SENT_BYTES")}
    db = for_workload([wl, mesh], None, "app", {"app": "db"}, SERVER).metrics
    assert not db.enabled("REQUEST_SIZE")


def test_a_metrics_provider_list_without_prometheus_reports_nothing() -> None:
    sd_only = tel("t", "app", metrics_providers=["sd"])
    assert all(not for_workload([sd_only], MESH, "app", {}, SERVER).metrics.enabled(m) for m in FAMILIES)
    assert for_workload([tel("t", "app", metrics_providers=["prom2"])], MESH, "app", {}, SERVER) \
        .metrics.enabled("REQUEST_COUNT")
    wp = for_waypoint([tel("t", "app", metrics_providers=["sd", "prometheus"])], MESH, "app", "waypoint")
    assert wp.metrics.enabled("REQUEST_COUNT")


def test_relabel_removes_replaces_and_adds() -> None:
    names, values = ("reporter", "response_code", "request_protocol"), ("waypoint", "503", "http")
    tags = (TagOverride("request_protocol", "REMOVE"), TagOverride("response_code", "UPSERT", "response.code >= 500"),
            TagOverride("method", "UPSERT", "request.method"), TagOverride("host", "UPSERT", "request.path"),
            TagOverride("gone", "REMOVE"))
    vals, extra = relabel(names, values, tags, {"response.code": 503, "request.method": "GET"})
    assert vals == ("waypoint", "true", REMOVED)
    assert prune(dict(zip((*names, "x"), (*vals, extra), strict=True)), "x") == {
        "reporter": "waypoint", "response_code": "true", "method": "GET", "host": UNKNOWN}


def test_ztunnel_series_honour_the_config() -> None:
    m = Metrics(CollectorRegistry())
    cfg = resolve([{"match": {"metric": "TCP_OPENED_CONNECTIONS"}, "disabled": True},
                   {"tagOverrides": {"source_workload": {"operation": "REMOVE"},
                                     "mtls": {"value": "connection.mtls"}}}], SERVER)
    for src in ("a", "b"):      # two sources collapse into one series once source_workload is removed
        labels = ConnLabels("destination", source_workload=src, connection_security_policy=MUTUAL_TLS)
        m.conn_opened(labels, cfg)
        m.conn_closed(labels, 10, 20, cfg)
    text = generate_latest(m.registry).decode()
    assert "istio_tcp_connections_opened_total{" not in text
    closed = [ln for ln in text.splitlines() if ln.startswith("istio_tcp_connections_closed_total{")]
    assert len(closed) == 1 and closed[0].endswith(" 2.0")
    assert 'mtls="true"' in closed[0] and "source_workload=" not in closed[0] and "ambit_added_tags" not in text
    sent = m.registry.get_sample_value("istio_tcp_sent_bytes_total",
                                       {**{k: v for k, v in labels.values().items() if k != "source_workload"},
                                        "mtls": "true"})
    assert sent == 40


def test_ztunnel_series_without_overrides_carry_exactly_the_standard_labels() -> None:
    """Metrics skips `relabel` when a metric has no tag overrides: its series must be what `relabel`
    gives then (the standard labels as they are, nothing added), for the default config, a config
    that only disables a metric, and one whose overrides are for other metrics."""
    other = resolve([{"match": {"metric": "TCP_SENT_BYTES"}, "tagOverrides": {"mtls": {"value": "connection.mtls"}}}],
                    SERVER)
    only_off = resolve([{"match": {"metric": "TCP_RECEIVED_BYTES"}, "disabled": True}], SERVER)
    labels = ConnLabels("destination", source_workload="a", destination_workload="echo",
                        connection_security_policy=MUTUAL_TLS)
    standard = labels.values()
    assert relabel(tuple(standard), tuple(standard.values()), (), {}) == (tuple(standard.values()), "")
    for cfg in (None, other, only_off):
        m = Metrics(CollectorRegistry())
        m.conn_opened(labels, *([cfg] if cfg else []))
        m.conn_closed(labels, 10, 20, *([cfg] if cfg else []))
        get = m.registry.get_sample_value
        assert get("istio_tcp_connections_opened_total", standard) == 1
        assert get("istio_tcp_connections_closed_total", standard) == 1
        assert get("istio_tcp_received_bytes_total", standard) == (None if cfg is only_off else 10)
        if cfg is other:
            assert get("istio_tcp_sent_bytes_total", {**standard, "mtls": "true"}) == 20
        else:
            assert get("istio_tcp_sent_bytes_total", standard) == 20
