"""The external authorizers of the mesh config (envoyExtAuthzHttp / envoyExtAuthzGrpc) and
AuthorizationPolicy CUSTOM, on the controller's side: what is accepted, what is refused and why,
what the waypoints are sent, and what a CUSTOM policy naming no defined authorizer becomes."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from ambit.configclient.node import NodeInfo
from ambit.model import Authorization, ExtAuthzBody, ExtAuthzProvider, MeshSettings
from controller import meshconfig
from controller.app import Controller
from controller.configserver import ConfigServer
from controller.configserver.scope import scope
from controller.sources import Source
from controller.translate import translate
from controller.waypoints.advisories import advisories

MESH = """\
extensionProviders:
- name: oauth2
  envoyExtAuthzHttp:
    service: oauth2-proxy.auth.svc.cluster.local
    port: 4180
    timeout: 1.5s
    pathPrefix: /check
    failOpen: false
    statusOnError: "503"
    includeRequestHeadersInCheck: [Authorization, "x-user-*"]
    includeAdditionalHeadersInCheck: {X-From: waypoint}
    headersToUpstreamOnAllow: ["x-auth-request-*"]
    headersToDownstreamOnAllow: [set-cookie]
    headersToDownstreamOnDeny: [content-type, "*-reason"]
    includeRequestBodyInCheck: {maxRequestBytes: 4096, allowPartialMessage: true}
- name: opa
  envoyExtAuthzGrpc: {service: authz/opa.example.com, port: 9191, failOpen: true,
                      includeRequestBodyInCheck: {maxRequestBytes: 100, packAsBytes: true}}
- name: legacy
  envoyExtAuthzHttp: {service: legacy.auth.svc.cluster.local, port: 80, includeHeadersInCheck: [cookie]}
- name: otel
  opentelemetry: {service: otel.observability.svc.cluster.local, port: 4317}
"""


class _NoSource(Source):
    def run(self, on_snapshot, stop) -> None:  # pragma: no cover - never run here
        raise AssertionError

    def errors(self):
        return []


def load(tmp_path: Path, text: str) -> meshconfig.MeshFile:
    f = tmp_path / "mesh.yaml"
    f.write_text(text)
    return meshconfig.load(f, "cluster.local")


def test_external_authorizers_are_parsed_with_istio_defaults_apart_from_telemetry_providers(tmp_path: Path) -> None:
    mf = load(tmp_path, MESH)
    assert [p["name"] for p in mf.extension_providers] == ["otel"]      # a Telemetry cannot name an authorizer
    by = {p.name: p for p in mf.ext_authz}
    assert by["oauth2"] == ExtAuthzProvider(
        name="oauth2", kind="http", service="oauth2-proxy.auth.svc.cluster.local", port=4180, timeout=1.5,
        status_on_error=503, path_prefix="/check", include_request_headers=["authorization", "x-user-*"],
        include_additional_headers={"x-from": "waypoint"}, headers_to_upstream_on_allow=["x-auth-request-*"],
        headers_to_downstream_on_allow=["set-cookie"], headers_to_downstream_on_deny=["content-type", "*-reason"],
        include_body=ExtAuthzBody(4096, allow_partial_message=True))
    opa = by["opa"]
    assert (opa.kind, opa.service, opa.timeout, opa.fail_open, opa.status_on_error) == (
        "grpc", "authz/opa.example.com", 600.0, True, 403)          # Istio's 600 s and 403
    assert opa.include_body == ExtAuthzBody(100, pack_as_bytes=True)
    assert by["legacy"].include_request_headers == ["cookie"]          # the deprecated includeHeadersInCheck


@pytest.mark.parametrize(("entry", "msg"), [
    ("{name: Opa, envoyExtAuthzGrpc: {service: a.b, port: 1}}", "name: 'Opa' must be a DNS label"),
    ("{name: a, envoyExtAuthzGrpc: {port: 1}}", "envoyExtAuthzGrpc.service: required"),
    ("{name: a, envoyExtAuthzGrpc: {service: 'http://a/b', port: 1}}", "envoyExtAuthzGrpc.service: required"),
    ("{name: a, envoyExtAuthzHttp: {service: a.b}}", "envoyExtAuthzHttp.port: required"),
    ("{name: a, envoyExtAuthzHttp: {service: a.b, port: 0}}", "envoyExtAuthzHttp.port: required"),
    ("{name: a, envoyExtAuthzHttp: {service: a.b, port: 1, statusOnError: '499'}}",
     "statusOnError: 499 is not a status Envoy's StatusCode knows"),
    ("{name: a, envoyExtAuthzHttp: {service: a.b, port: 1, statusOnError: teapot}}", "must be an HTTP status"),
    ("{name: a, envoyExtAuthzHttp: {service: a.b, port: 1, pathPrefix: check}}", "pathPrefix: must be a URL path"),
    ("{name: a, envoyExtAuthzHttp: {service: a.b, port: 1, timeout: soon}}", "timeout: must be a duration"),
    ("{name: a, envoyExtAuthzHttp: {service: a.b, port: 1, includeRequestHeadersInCheck: ['*']}}",
     'includeRequestHeadersInCheck[0]: a single wildcard ("*") is not supported'),
    ("{name: a, envoyExtAuthzHttp: {service: a.b, port: 1, headersToUpstreamOnAllow: ['x-*-y*']}}",
     "headersToUpstreamOnAllow[0]: 'x-*-y*' is not a header name"),
    ("{name: a, envoyExtAuthzHttp: {service: a.b, port: 1, includeAdditionalHeadersInCheck: {x: \"a\\nb\"}}}",
     "includeAdditionalHeadersInCheck.x: must not contain control characters"),
    ("{name: a, envoyExtAuthzHttp: {service: a.b, port: 1, includeAdditionalHeadersInCheck: {x: '%START_TIME%'}}}",
     "includeAdditionalHeadersInCheck.x: '%START_TIME%': Envoy command operators (%...%) are not expanded"),
    ("{name: a, envoyExtAuthzHttp: {service: a.b, port: 1, includeAdditionalHeadersInCheck: {'x y': v}}}",
     "includeAdditionalHeadersInCheck.x y: must be an HTTP header name"),
    ("{name: a, envoyExtAuthzHttp: {service: a.b, port: 1, failOpen: 'yes'}}", "failOpen: expected true or false"),
    ("{name: a, envoyExtAuthzHttp: {service: a.b, port: 1, clearRouteCache: true}}",
     "clearRouteCache: not supported by Ambit"),
    ("{name: a, envoyExtAuthzGrpc: {service: a.b, port: 1, pathPrefix: /x}}", "pathPrefix: not supported by Ambit"),
    ("{name: a, envoyExtAuthzHttp: {service: a.b, port: 1, includeRequestBodyInCheck: {packAsBytes: true}}}",
     "packAsBytes: only applies to envoyExtAuthzGrpc"),
    ("{name: a, envoyExtAuthzGrpc: {service: a.b, port: 1, includeRequestBodyInCheck: {maxRequestBytes: -1}}}",
     "maxRequestBytes: expected a byte count"),
])
def test_a_bad_external_authorizer_is_refused_naming_the_field(tmp_path: Path, entry: str, msg: str) -> None:
    with pytest.raises(ValueError) as e:
        load(tmp_path, f"extensionProviders: [{entry}]\n")
    assert "extensionProviders[0]" in str(e.value) and msg in str(e.value), str(e.value)


def test_an_authorizer_and_a_telemetry_provider_cannot_share_a_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="duplicate name x"):
        load(tmp_path, "extensionProviders: [{name: x, prometheus: {}}, "
                       "{name: x, envoyExtAuthzGrpc: {service: a.b, port: 1}}]\n")


def ap(name: str, spec: dict, ns: str = "demo") -> dict:
    return {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": name, "namespace": ns}, "spec": spec}


CUSTOM = {"action": "CUSTOM", "provider": {"name": "opa"},
          "targetRefs": [{"kind": "Service", "group": "", "name": "web"}],
          "rules": [{"to": [{"operation": {"paths": ["/admin*"]}}]}]}


def test_a_custom_policy_names_its_provider_and_reaches_waypoints_only() -> None:
    t = translate([ap("ext", CUSTOM), ap("plain", {"action": "DENY", "rules": [{}]})])
    assert not t.errors
    by = {a.name: a for a in t.authorizations}
    assert (by["ext"].action, by["ext"].provider, by["ext"].scope) == ("CUSTOM", "opa", "waypoint")
    assert by["ext"].http_rules and by["ext"].http_rules[0].has_l7
    snap = {Authorization.TYPE: t.authorizations}
    ztunnel = scope(NodeInfo("agent", "node1"), Authorization.TYPE, snap)
    assert [a.name for a in ztunnel] == ["plain"]   # an older ztunnel would NACK the action it does not know
    waypoint = scope(NodeInfo("waypoint", "wp-1", waypoint="demo/waypoint"), Authorization.TYPE, snap)
    assert sorted(a.name for a in waypoint) == ["ext", "plain"]


def test_a_custom_policy_whose_provider_is_not_defined_denies_what_it_matches_and_says_so(tmp_path: Path) -> None:
    server = ConfigServer(debounce=0.0, registry=CollectorRegistry())
    ctl = Controller(_NoSource(), server)
    objects = [ap("ext", CUSTOM)]
    ctl.on_snapshot(objects)
    served = {a.name: a for a in server._latest.resources[Authorization.TYPE]}  # noqa: SLF001 - what gets served
    assert served["ext"].action == "DENY"            # as Istio's "-deny-due-to-bad-CUSTOM-action"
    warned = [str(a) for a in advisories(objects, translation=ctl.translation)]
    assert any("spec.provider.name" in w and 'provider "opa" is not an external authorizer defined' in w
               and "defined: none" in w for w in warned), warned

    ctl.set_ext_authz(load(tmp_path, MESH).ext_authz)        # the mesh config now defines it
    served = {a.name: a for a in server._latest.resources[Authorization.TYPE]}  # noqa: SLF001
    assert (served["ext"].action, served["ext"].provider) == ("CUSTOM", "opa")
    mesh = server._latest.resources[MeshSettings.TYPE][0]  # noqa: SLF001
    assert sorted(p.name for p in mesh.ext_authz) == ["legacy", "oauth2", "opa"]
    assert not [a for a in advisories(objects, translation=ctl.translation) if "provider" in a.path]
