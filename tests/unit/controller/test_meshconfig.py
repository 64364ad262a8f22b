"""The mesh config file (trustDomainAliases) and how its changes reach the config stream."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from ambit.model import MeshSettings
from controller import meshconfig
from controller.__main__ import _aliases, parse_args
from controller.app import Controller
from controller.configserver import ConfigServer
from controller.sources import Source


class _NoSource(Source):
    def run(self, on_snapshot, stop) -> None:  # pragma: no cover - never run here
        raise AssertionError

    def errors(self):
        return []


def settings(server: ConfigServer) -> list[MeshSettings]:
    return list(server._latest.resources.get(MeshSettings.TYPE, []))  # noqa: SLF001 - what gets served


def test_a_mesh_config_file_gives_aliases_and_refuses_what_ambit_does_not_do(tmp_path: Path) -> None:
    f = tmp_path / "mesh.yaml"
    assert meshconfig.load(f, "cluster.local") == meshconfig.MeshFile(), "absent: defaults"
    f.write_text("trustDomainAliases: [evil.local, old.td, evil.local]\ntrustDomain: cluster.local\n")
    assert meshconfig.load(f, "cluster.local").trust_domain_aliases == ("evil.local", "old.td")
    f.write_text("outboundTrafficPolicy: {mode: REGISTRY_ONLY}\n")
    assert meshconfig.load(f, "cluster.local").outbound_traffic_policy == "REGISTRY_ONLY"
    for text, msg in [("enableTracing: true\n", "enableTracing: not supported"),
                      ("outboundTrafficPolicy: {mode: BLOCK}\n",
                       "outboundTrafficPolicy.mode: must be one of ALLOW_ANY, REGISTRY_ONLY, got 'BLOCK'"),
                      ("outboundTrafficPolicy: {egressProxy: {host: egress.example}}\n",
                       "outboundTrafficPolicy.egressProxy: not supported by Ambit"),
                      ("trustDomain: new.td\n", "trustDomain: 'new.td' differs from the controller's --trust-domain"),
                      ("trustDomainAliases: evil.local\n", "expected a list"),
                      ("trustDomainAliases: [Evil]\n", "trustDomainAliases[0]: 'Evil' is not a trust domain"),
                      ("[1, 2]\n", "expected a mapping"), ("a: [\n", "not YAML")]:
        f.write_text(text)
        with pytest.raises(ValueError, match=msg.replace("[", r"\[").replace("(", r"\(")):
            meshconfig.load(f, "cluster.local")


def test_aliases_from_flag_and_file_reach_the_served_mesh_settings_and_a_bad_edit_keeps_the_last_good(
        tmp_path: Path) -> None:
    f = tmp_path / "mesh.yaml"
    args = parse_args(["--lab-store", "x", "--trust-domain-alias", "flag.td", "--mesh-config", str(f)])
    w = meshconfig.Watcher(f)
    server = ConfigServer(debounce=0.0, registry=CollectorRegistry())
    ctl = Controller(_NoSource(), server, trust_domain_aliases=_aliases(("flag.td",), w, "cluster.local", None))
    assert args.trust_domain_alias == ("flag.td",)
    ctl.on_snapshot([])
    assert [(m.trust_domain, m.trust_domain_aliases) for m in settings(server)] == [("cluster.local", ["flag.td"])]
    v1 = ctl.version

    f.write_text("trustDomainAliases: [evil.local]\n")
    assert w.changed()
    ctl.set_trust_domain_aliases(_aliases(("flag.td",), w, "cluster.local", ctl))
    assert settings(server)[0].trust_domain_aliases == ["flag.td", "evil.local"] and ctl.version != v1
    assert not w.changed(), "no edit, no reload"

    f.write_text("trustDomainAliases: [Bad Name]\n")
    assert w.changed()
    ctl.set_trust_domain_aliases(_aliases(("flag.td",), w, "cluster.local", ctl))
    assert settings(server)[0].trust_domain_aliases == ["flag.td", "evil.local"], "last good stays in force"
    assert any("mesh-config" in str(e) and "'Bad Name' is not a trust domain" in str(e) for e in ctl.errors())

    f.unlink()
    assert w.changed()
    ctl.set_trust_domain_aliases(_aliases(("flag.td",), w, "cluster.local", ctl))
    assert settings(server)[0].trust_domain_aliases == ["flag.td"] and ctl.errors() == []


def test_a_bad_mesh_config_at_start_stops_the_controller_with_the_reason(tmp_path: Path) -> None:
    f = tmp_path / "mesh.yaml"
    f.write_text("meshMTLS: {}\n")
    with pytest.raises(SystemExit, match="meshMTLS: not supported by Ambit"):
        _aliases((), meshconfig.Watcher(f), "cluster.local", None)


TELEMETRY_MESH = """
extensionProviders:
- name: jaeger
  opentelemetry: {service: jaeger-collector.observability.svc.cluster.local, port: 4317}
- name: otel-http
  opentelemetry: {service: otel.observability, port: 4318, http: {path: v1/traces}}   # Istio adds the slash
- name: zipkin
  zipkin: {service: zipkin.observability, port: 9411}
- name: fluentd
  envoyFileAccessLog:
    path: /var/log/ambit/access.json
    logFormat: {labels: {code: "%RESPONSE_CODE%", method: "%REQ(:METHOD)%"}}
- name: text
  envoyFileAccessLog: {path: /dev/stdout, logFormat: {text: "%RESPONSE_CODE% %DURATION%\\n"}}
defaultProviders: {tracing: [jaeger], accessLogging: [envoy], metrics: [prometheus]}
"""


def test_extension_and_default_providers_are_parsed_and_reach_mesh_settings(tmp_path: Path) -> None:
    f = tmp_path / "mesh.yaml"
    f.write_text(TELEMETRY_MESH)
    mf = meshconfig.load(f, "cluster.local")
    by = {p["name"]: p for p in mf.extension_providers}
    assert by["jaeger"] == {"name": "jaeger", "kind": "opentelemetry", "protocol": "grpc", "port": 4317,
                            "service": "jaeger-collector.observability.svc.cluster.local"}
    assert (by["otel-http"]["protocol"], by["otel-http"]["path"]) == ("http", "/v1/traces")
    assert by["zipkin"]["path"] == "/api/v2/spans"
    assert by["fluentd"]["log_format"] == "json" and by["fluentd"]["labels"]["code"] == "%RESPONSE_CODE%"
    assert by["text"]["log_format"] == "%RESPONSE_CODE% %DURATION%"
    assert mf.default_providers == {"tracing": ["jaeger"], "accessLogging": ["envoy"], "metrics": ["prometheus"]}
    server = ConfigServer(debounce=0.0, registry=CollectorRegistry())
    ctl = Controller(_NoSource(), server)
    ctl.on_snapshot([])
    v1 = ctl.version
    ctl.set_mesh_telemetry(list(mf.extension_providers), dict(mf.default_providers))
    m = settings(server)[0]
    assert [p["name"] for p in m.extension_providers] == ["jaeger", "otel-http", "zipkin", "fluentd", "text"]
    assert m.default_providers["tracing"] == ["jaeger"] and ctl.version != v1


@pytest.mark.parametrize(("text", "msg"), [
    ("extensionProviders: [{name: d, datadog: {service: x, port: 1}}]", "datadog: Ambit exports spans over OTLP"),
    ("extensionProviders: [{name: d, envoyOtelAls: {port: 1}}]", "service and port are required"),
    ("extensionProviders: [{name: d, envoyOtelAls: {service: x, port: 1, logName: [a]}}]",
     "envoyOtelAls.logName: expected a name"),
    ("extensionProviders: [{name: d, envoyOtelAls: {service: x, port: 1, logFormat: {text: '%FOO%'}}}]",
     "%FOO% not supported"),
    ("extensionProviders: [{name: d, carrierPigeon: {}}]", "carrierPigeon: unknown provider kind"),
    ("extensionProviders: [{name: d, zipkin: {service: x}}]", "service and port are required"),
    ("extensionProviders: [{name: d, zipkin: {service: x, port: 70000}}]", "zipkin.port: 70000 is not a port"),
    ("extensionProviders: [{name: d, opentelemetry: {service: 'http://x/y', port: 4317}}]",
     "opentelemetry.service: 'http://x/y' is not a host name"),
    ("extensionProviders: [{name: d, zipkin: {service: x, port: 1, path: '/a b'}}]", "zipkin.path: '/a b' is not"),
    ("extensionProviders: [{name: d, zipkin: {service: x, port: 1, maxTagLength: 5}}]", "maxTagLength"),
    ("extensionProviders: [{name: d, zipkin: {service: x, port: 1, traceContextOption: B3}}]",
     "traceContextOption: not supported"),
    ("extensionProviders: [{name: d, envoyFileAccessLog: {logFormat: {text: '%FOO%'}}}]", "%FOO% not supported"),
    ("extensionProviders: [{name: d, prometheus: {}}, {name: d, prometheus: {}}]", "duplicate name d"),
    ("defaultProviders: {tracing: [nope]}", "nope: not defined in extensionProviders"),
    ("defaultProviders: {logging: [envoy]}", "logging: unknown"),
])
def test_provider_kinds_and_fields_ambit_does_not_do_are_refused_by_name(tmp_path: Path, text: str, msg: str) -> None:
    f = tmp_path / "mesh.yaml"
    f.write_text(text + "\n")
    with pytest.raises(ValueError) as e:
        meshconfig.load(f, "cluster.local")
    assert msg in str(e.value)


def test_an_alias_with_a_trailing_newline_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "mesh.yaml"
    f.write_text('trustDomainAliases: ["old.td\\n"]\n')
    with pytest.raises(ValueError) as ei:
        meshconfig.load(f, "cluster.local")
    assert "trustDomainAliases[0]: 'old.td\\n' is not a trust domain" in str(ei.value)


def test_a_mesh_wide_locality_lb_setting_is_checked_as_a_destination_rules_and_served(tmp_path: Path) -> None:
    """MeshConfig localityLbSetting: refused with the DestinationRule's rules (Istio validates both
    with validateLocalityLbSetting), and carried in MeshSettings to the waypoints once valid."""
    f = tmp_path / "mesh.yaml"
    f.write_text("localityLbSetting: {enabled: false}\n")
    assert meshconfig.load(f, "cluster.local").locality_lb_setting == {"enabled": False}
    for text, msg in [("localityLbSetting: {distribute: [{from: a/*, to: {a/*: 100}}], failover: [{from: a, to: b}]}\n",
                       "localityLbSetting: distribute and failover cannot both be set"),
                      ("localityLbSetting: {failover: [{from: a, to: b}], "
                       "failoverPriority: [topology.kubernetes.io/zone]}\n",
                       "localityLbSetting.failoverPriority: cannot set failover and the topology label"),
                      ("localityLbSetting: {enable: true}\n", "localityLbSetting.enable: unknown field")]:
        f.write_text(text)
        with pytest.raises(ValueError, match=msg.replace("[", r"\[").replace("(", r"\(")):
            meshconfig.load(f, "cluster.local")
    server = ConfigServer(debounce=0.0, registry=CollectorRegistry())
    ctl = Controller(_NoSource(), server)
    ctl.on_snapshot([])
    assert settings(server)[0].locality is None
    ctl.set_locality_lb_setting({"failover": [{"from": "us-east", "to": "eu-west"}]})
    served = settings(server)[0].locality       # flattened as a DestinationRule's, for the waypoints
    assert served is not None and served.locality_set and served.locality_failover == [["us-east", "eu-west"]]
