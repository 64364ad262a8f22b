"""The Telemetry API resolver (ambit.telemetry): Istio's precedence and override rules."""

from __future__ import annotations

from ambit.model import AccessLogEntry, MeshSettings, TelemetryPolicy, TracingEntry
from ambit.telemetry import CLIENT, SERVER, for_waypoint, for_workload

MESH = MeshSettings("cluster.local", extension_providers=[
    {"name": "otel", "kind": "opentelemetry", "service": "otel.obs", "port": 4317, "protocol": "grpc"},
    {"name": "zipkin", "kind": "zipkin", "service": "zipkin.obs", "port": 9411, "path": "/api/v2/spans"},
    {"name": "json-log", "kind": "envoyFileAccessLog", "path": "/dev/stdout", "log_format": "json",
     "labels": {"code": "%RESPONSE_CODE%"}},
], default_providers={"tracing": ["otel"], "accessLogging": ["envoy"]})


def tel(name: str, ns: str, scope: str = "namespace", tracing: TracingEntry | None = None,
        log: AccessLogEntry | None = None, **kw: object) -> TelemetryPolicy:
    """A Telemetry with (at most) one tracing and one access-log entry."""
    return TelemetryPolicy(name=name, namespace=ns, scope=scope, tracing=[tracing] if tracing else [],  # type: ignore[arg-type]
                           access_logging=[log] if log else [], **kw)


def test_defaults_come_from_mesh_config_default_providers() -> None:
    cfg = for_workload([], MESH, "app", {"app": "web"}, SERVER)
    assert [p.name for p in cfg.tracing.providers] == ["otel"]
    assert cfg.tracing.sampling_percent == 1.0
    assert [p.name for p in cfg.access_log.providers] == ["envoy"]
    assert cfg.access_log.providers[0].log_format == "text" and not cfg.access_log.disabled
    assert for_workload([], None, "app", {}, SERVER).access_log.providers == ()   # the proxy's built-in log


def test_namespace_overrides_mesh_and_workload_overrides_namespace_field_by_field() -> None:
    mesh = tel("mesh", "ambit-system", "global", TracingEntry(sampling_percent=10.0, providers=["zipkin"]),
               AccessLogEntry(filter="response.code >= 500"))
    ns = tel("ns", "app", log=AccessLogEntry(disabled=True), tracing=TracingEntry(sampling_percent=50.0))
    wl = tel("wl", "app", "workload", selector={"app": "web"}, log=AccessLogEntry(
        disabled=False, filter="response.code >= 400", providers=["json-log"]))
    pols = [wl, ns, mesh]      # arrival order does not matter
    web = for_workload(pols, MESH, "app", {"app": "web"}, SERVER)
    assert not web.access_log.disabled and web.access_log.filter == "response.code >= 400"
    assert [p.name for p in web.access_log.providers] == ["json-log"]         # the list replaces
    assert web.tracing.sampling_percent == 50.0                               # from the namespace
    assert [p.name for p in web.tracing.providers] == ["zipkin"]              # from the mesh, kept
    other = for_workload(pols, MESH, "app", {"app": "db"}, SERVER)
    assert other.access_log.disabled and other.access_log.filter == "response.code >= 500"
    elsewhere = for_workload(pols, MESH, "shop", {"app": "web"}, SERVER)
    assert not elsewhere.access_log.disabled and elsewhere.tracing.sampling_percent == 10.0


def test_match_mode_applies_a_section_to_one_side_only() -> None:
    off_for_clients = tel("t", "app", log=AccessLogEntry(disabled=True, mode="CLIENT"))
    assert for_workload([off_for_clients], MESH, "app", {}, CLIENT).access_log.disabled
    assert not for_workload([off_for_clients], MESH, "app", {}, SERVER).access_log.disabled
    # a waypoint is the server side
    assert not for_waypoint([off_for_clients], MESH, "app", "waypoint").access_log.disabled


def test_waypoint_targetrefs_gateway_and_service() -> None:
    gw = tel("gw", "app", "waypoint", target_refs=[{"kind": "Gateway", "name": "waypoint"}],
             log=AccessLogEntry(filter="response.code == 503"))
    svc = tel("svc", "app", "waypoint", target_refs=[{"kind": "Service", "name": "reviews"}],
              log=AccessLogEntry(disabled=True))
    assert for_waypoint([gw, svc], MESH, "app", "waypoint").access_log.filter == "response.code == 503"
    assert for_waypoint([gw, svc], MESH, "app", "waypoint", "app/reviews").access_log.disabled
    assert not for_waypoint([gw, svc], MESH, "app", "waypoint", "app/ratings").access_log.disabled
    assert not for_waypoint([gw], MESH, "app", "other").access_log.filter
    # targetRefs never bind a ztunnel's workload
    assert not for_workload([svc], MESH, "app", {"app": "reviews"}, SERVER).access_log.disabled


def test_undefined_providers_are_dropped() -> None:
    # the warning naming them is the controller's advisory (tests/unit/controller/test_telemetry_kind.py)
    seed = tel("mesh-default", "ambit-system", "global", TracingEntry(providers=["jaeger"], sampling_percent=10.0),
               AccessLogEntry(providers=["fluentd"]), metrics_providers=["prometheus"])
    cfg = for_workload([seed], None, "app", {}, SERVER)
    assert cfg.tracing.providers == () and cfg.access_log.providers == () and cfg.tracing.sampling_percent == 10.0
    mesh = MeshSettings("cluster.local", extension_providers=[
        {"name": "jaeger", "kind": "opentelemetry", "service": "jaeger-collector.obs", "port": 4317},
        {"name": "fluentd", "kind": "envoyFileAccessLog", "path": "/var/log/ambit/access.log", "log_format": "json"}])
    cfg = for_workload([seed], mesh, "app", {}, SERVER)
    assert cfg.tracing.enabled and cfg.tracing.providers[0].service == "jaeger-collector.obs"
    assert cfg.access_log.providers[0].path == "/var/log/ambit/access.log"


def test_disable_span_reporting_and_custom_tags_override() -> None:
    mesh = tel("m", "ambit-system", "global", TracingEntry(disable_span_reporting=True,
                                                           custom_tags={"team": {"literal": {"value": "a"}}}))
    ns = tel("n", "app", tracing=TracingEntry(disable_span_reporting=False,
                                              custom_tags={"env": {"environment": {"name": "STAGE"}}}))
    cfg = for_workload([mesh, ns], MESH, "app", {}, SERVER).tracing
    assert cfg.enabled and cfg.custom_tags == (("env", "environment", "STAGE"),)
    assert not for_workload([mesh, ns], MESH, "x", {}, SERVER).tracing.enabled


def test_a_selector_in_the_root_namespace_selects_there_only() -> None:
    root_sel = tel("r", "ambit-system", "global", selector={"app": "web"}, log=AccessLogEntry(disabled=True))
    assert not for_workload([root_sel], MESH, "app", {"app": "web"}, SERVER).access_log.disabled
    assert for_workload([root_sel], MESH, "ambit-system", {"app": "web"}, SERVER).access_log.disabled


def test_request_id_sampling_and_istio_tags_default_on_and_override_by_level() -> None:
    assert for_workload([], MESH, "app", {}, SERVER).tracing.use_request_id
    mesh = tel("mesh", "ambit-system", "global", TracingEntry(use_request_id_sampling=False, enable_istio_tags=False))
    ns = tel("ns", "app", tracing=TracingEntry(enable_istio_tags=True))
    cfg = for_waypoint([mesh, ns], MESH, "app", "waypoint").tracing
    assert (cfg.use_request_id, cfg.istio_tags) == (False, True)
    other = for_waypoint([mesh, ns], MESH, "shop", "waypoint").tracing
    assert (other.use_request_id, other.istio_tags) == (False, False)
