"""The waypoint applies the Telemetry API to its access log: the config View resolves it
(`telemetry_for_waypoint`, per Service), the RequestLog writes, filters, or drops each request."""

from __future__ import annotations

import json

from ambit.configclient import ConfigUpdate
from ambit.model import AccessLogEntry, MeshSettings, TelemetryPolicy, TracingEntry
from waypoint.authz import Waypoint
from waypoint.config import TYPES, WaypointConfig
from waypoint.telemetry import RequestLog

from .test_telemetry import CLIENT, ECHO_V2, record

MESH = MeshSettings("cluster.local", extension_providers=[
    {"name": "json-log", "kind": "envoyFileAccessLog", "path": "/dev/stdout", "log_format": "json",
     "labels": {"code": "%RESPONSE_CODE%", "src": "%SOURCE_WORKLOAD%", "dst": "%DESTINATION_WORKLOAD%"}}])


def config(*tels: TelemetryPolicy) -> WaypointConfig:
    cfg = WaypointConfig(Waypoint("demo", "waypoint"), "cluster.local")
    for t in TYPES:
        state = {"mesh": MESH} if t == MeshSettings.TYPE else \
            {p.resource_name: p for p in tels} if t == TelemetryPolicy.TYPE else {}
        cfg.apply(ConfigUpdate(t, "v1", state, frozenset(), state))  # type: ignore[arg-type]
    return cfg


def test_namespace_off_service_on_with_filter_and_json_provider() -> None:
    cfg = config(TelemetryPolicy("off", "demo", access_logging=[AccessLogEntry(disabled=True)]),
                 TelemetryPolicy("echo", "demo", scope="waypoint", target_refs=[{"kind": "Service", "name": "echo"}],
                                 access_logging=[AccessLogEntry(disabled=False, filter="response.code >= 400",
                                                                providers=["json-log"])]))
    assert cfg.synced
    view = cfg.view
    assert view.telemetry_for_waypoint("demo/other").access_log.disabled
    assert view.telemetry_for_waypoint("demo/echo") is view.telemetry_for_waypoint("demo/echo"), "cached"
    lines: list[str] = []
    log = RequestLog(lines.append, lambda svc: cfg.view.telemetry_for_waypoint(svc).access_log)
    log.emit(record(status=200), CLIENT, ECHO_V2)
    log.emit(record(status=503), CLIENT, ECHO_V2)
    log.emit(record(status=500, service="demo/other"), CLIENT, ECHO_V2)
    assert [json.loads(x) for x in lines] == [{"code": 503, "src": "client", "dst": "echo-v2"}]


def test_without_telemetry_every_request_gets_the_builtin_line() -> None:
    cfg = config()
    lines: list[str] = []
    log = RequestLog(lines.append, lambda svc: cfg.view.telemetry_for_waypoint(svc).access_log)
    log.emit(record(status=200), CLIENT, ECHO_V2)
    assert json.loads(lines[0])["response_code"] == 200 and json.loads(lines[0])["source_workload"] == "client"


def test_gateway_target_and_istio_text_format() -> None:
    cfg = config(TelemetryPolicy("gw", "demo", scope="waypoint", target_refs=[{"kind": "Gateway", "name": "waypoint"}],
                                 access_logging=[AccessLogEntry(providers=["envoy"])]))
    lines: list[str] = []
    RequestLog(lines.append, lambda svc: cfg.view.telemetry_for_waypoint(svc).access_log).emit(
        record(status=404, response_flags="NR", request_id="r-1"), CLIENT, None)
    assert lines[0].startswith('[') and '] "GET / HTTP/1.1" 404 NR ' in lines[0]
    assert '"r-1" "echo.demo.svc.cluster.local:8080" "10.210.2.11:8080"' in lines[0]


def test_config_dump_shows_the_telemetries_and_the_waypoint_level_access_log() -> None:
    cfg = config(TelemetryPolicy("gw", "demo", scope="waypoint", target_refs=[{"kind": "Gateway", "name": "waypoint"}],
                                 access_logging=[AccessLogEntry(providers=["envoy"], filter="response.code >= 500")]))
    d = cfg.dump()
    assert d["telemetry"] == ["demo/gw"]
    assert d["access_log"] == {"disabled": False, "mode": "CLIENT_AND_SERVER", "filter": "response.code >= 500",
                               "providers": ["envoy (envoyFileAccessLog /dev/stdout text)"]}


def test_the_telemetry_api_decides_the_waypoints_tracing_over_its_flags() -> None:
    """The waypoint's tracer asks `WaypointProxy.tracing_for(service)`: the Telemetry API's
    resolution when it names a provider (mesh-wide 10 %, 100 % for one Service via targetRefs),
    else the --tracing-* flags."""
    from ambit.telemetryconfig import TracingConfig
    from waypoint.app import WaypointProxy
    from waypoint.settings import load

    mesh = MeshSettings("cluster.local", extension_providers=[
        {"name": "otel", "kind": "opentelemetry", "service": "otel.obs.svc.cluster.local", "port": 4317}])
    cfg = WaypointConfig(Waypoint("demo", "waypoint"), "cluster.local")
    tels = {"mesh": TelemetryPolicy("mesh", "ambit-system", scope="global",
                                    tracing=[TracingEntry(providers=["otel"], sampling_percent=10.0)]),
            "echo": TelemetryPolicy("echo", "demo", scope="waypoint", target_refs=[{"kind": "Service", "name": "echo"}],
                                    tracing=[TracingEntry(sampling_percent=100.0)])}
    for t in TYPES:
        state = {"mesh": mesh} if t == MeshSettings.TYPE else tels if t == TelemetryPolicy.TYPE else {}
        cfg.apply(ConfigUpdate(t, "v1", state, frozenset(), state))  # type: ignore[arg-type]
    flags = load(["--waypoint", "demo/waypoint", "--pod-name", "wp-0", "--node", "n1",
                  "--tracing-zipkin", "http://zipkin:9411", "--tracing-sampling", "50"])
    p = WaypointProxy(flags, cfg, None)
    echo, other = p.tracing_for("demo/echo"), p.tracing_for("demo/other")
    assert [(x.name, x.kind) for x in echo.providers] == [("otel", "opentelemetry")] and echo.sampling_percent == 100.0
    assert other.sampling_percent == 10.0 and other.enabled
    # without any tracing Telemetry, the flags apply (positive control for the precedence above)
    bare = WaypointConfig(Waypoint("demo", "waypoint"), "cluster.local")
    q = WaypointProxy(flags, bare, None)
    got: TracingConfig = q.tracing_for("demo/echo")
    assert [x.kind for x in got.providers] == ["zipkin"] and got.sampling_percent == 50.0


def test_an_ingress_gateway_is_the_client_side_of_the_telemetry_api() -> None:
    """Istio resolves a gateway's Telemetry as the CLIENT side (listener class Gateway): a
    `match.mode: CLIENT` entry applies to an ingress gateway, a SERVER one does not. The ingress
    resolved as a waypoint (SERVER), so each applied where Istio's would not."""
    from ambit.model import IngressGateway

    client_off = TelemetryPolicy("off", "demo", access_logging=[AccessLogEntry(mode="CLIENT", disabled=True)])
    server_off = TelemetryPolicy("off", "demo", access_logging=[AccessLogEntry(mode="SERVER", disabled=True)])

    def as_ingress(cfg: WaypointConfig) -> WaypointConfig:
        gw = IngressGateway("waypoint", "demo")
        cfg.apply(ConfigUpdate(IngressGateway.TYPE, "v2", {gw.resource_name: gw}, frozenset(), {gw.resource_name: gw}))
        return cfg
    assert as_ingress(config(client_off)).view.telemetry_for_waypoint("demo/echo").access_log.disabled
    assert not as_ingress(config(server_off)).view.telemetry_for_waypoint("demo/echo").access_log.disabled
    assert config(server_off).view.telemetry_for_waypoint("demo/echo").access_log.disabled      # a waypoint: SERVER
    assert not config(client_off).view.telemetry_for_waypoint("demo/echo").access_log.disabled
