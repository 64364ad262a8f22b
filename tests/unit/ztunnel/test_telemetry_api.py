"""ztunnel applies the Telemetry API per connection: the source workload's config (CLIENT side)
for outbound connections, the destination's (SERVER side) for inbound ones."""

from __future__ import annotations

import io

from ambit.configclient.state import TypeState
from ambit.dataplane.telemetry.accesslog import ConnRecord, PolicySink, StreamSink
from ambit.model import AccessLogEntry, MeshSettings, TelemetryPolicy
from tests.unit.configstream.helpers import workload
from ztunnel.meshstate import MeshState
from ztunnel.proxy import Proxy

from .test_meshstate import full, push


def lab() -> tuple[MeshState, Proxy, io.StringIO]:
    cfg = MeshState()
    web = workload("web", "node2", ip="10.1.0.2", ns="quiet", labels={"app": "web"})
    api = workload("api", "node2", ip="10.1.0.3", ns="quiet", labels={"app": "api"})
    client = workload("client", "node1", ip="10.1.0.1", ns="quiet", labels={"app": "client"})
    full(cfg, "v1", [web, api, client], mesh=MeshSettings("cluster.local"))
    push(cfg, TypeState(TelemetryPolicy.TYPE), "v1", [
        TelemetryPolicy("off", "quiet", access_logging=[AccessLogEntry(disabled=True)]),
        TelemetryPolicy("web", "quiet", scope="workload", selector={"app": "web"}, access_logging=[
            AccessLogEntry(disabled=False, providers=["envoy"], mode="SERVER")])])
    out = io.StringIO()
    proxy = Proxy(cfg)
    proxy.access_log = PolicySink(StreamSink(out), proxy.access_log_config)
    return cfg, proxy, out


def test_inbound_uses_the_destination_workloads_server_side_config() -> None:
    cfg, proxy, out = lab()
    assert cfg.synced
    proxy.access_log.emit(ConnRecord("inbound", src_addr="10.1.0.1:5000", dst_addr="10.1.0.2:8080",
                                     route="inbound-hbone", bytes_sent=10, bytes_recv=700))
    proxy.access_log.emit(ConnRecord("inbound", src_addr="10.1.0.1:5001", dst_addr="10.1.0.3:8080",
                                     route="inbound-hbone"))
    proxy.access_log.flush()
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and "10.1.0.2:8080" in lines[0] and lines[0].endswith("inbound-hbone")
    assert '"- - -" - - - - "-" 10 700 ' in lines[0], "Istio's text format, a TCP connection's fields"


def test_outbound_uses_the_source_workloads_client_side_config_and_unknown_sources_log() -> None:
    _, proxy, out = lab()
    # web's Telemetry is SERVER-only: its outbound (CLIENT) side stays off with the namespace
    proxy.access_log.emit(ConnRecord("outbound", src_addr="10.1.0.2:4000", dst_addr="10.1.0.3:8080", route="hbone"))
    proxy.access_log.emit(ConnRecord("outbound", src_addr="10.1.0.1:4000", dst_addr="10.1.0.3:8080", route="hbone"))
    proxy.access_log.emit(ConnRecord("outbound", src_addr="10.9.9.9:4000", dst_addr="10.1.0.3:8080", route="hbone"))
    proxy.access_log.flush()
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("access {") and "10.9.9.9:4000" in lines[0]
