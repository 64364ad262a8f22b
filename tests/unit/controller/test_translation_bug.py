"""A translator that raises on one valid object (a bug in Ambit): the controller keeps the config in
force and reports the object, so an operator knows what to look at (and what to take back)."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

import controller.translate as translate_pkg
from controller.app import Controller
from controller.configserver import ConfigServer
from controller.sources import Source

NS = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}


def peer_authn(name: str) -> dict:
    return {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
            "metadata": {"name": name, "namespace": "shop"}, "spec": {"mtls": {"mode": "STRICT"}}}


class _NoSource(Source):
    def run(self, on_snapshot, stop) -> None:  # pragma: no cover - never run here
        raise AssertionError

    def errors(self):
        return []


@pytest.fixture
def buggy_peer_authn(monkeypatch: pytest.MonkeyPatch) -> None:
    """The translator of PeerAuthentication raises on the object named `trips`."""
    real = translate_pkg.translate_peer_authn

    def buggy(obj, root_namespace):
        if obj["metadata"]["name"] == "trips":
            raise KeyError("selector")
        return real(obj, root_namespace)
    monkeypatch.setattr(translate_pkg, "translate_peer_authn", buggy)


@pytest.mark.usefixtures("buggy_peer_authn")
def test_a_translation_bug_names_the_object_and_keeps_the_config_in_force() -> None:
    ctl = Controller(_NoSource(), ConfigServer(debounce=0.0, registry=CollectorRegistry()))
    ctl.on_snapshot([NS, peer_authn("fine")])
    good = ctl.version
    assert good and not ctl.errors()

    ctl.on_snapshot([NS, peer_authn("fine"), peer_authn("trips")])
    assert ctl.version == good          # the mesh keeps what it had, not a snapshot without the object
    [err] = ctl.errors()
    assert err.ref == "PeerAuthentication/shop/trips"
    assert "translation failed" in err.reason and "KeyError" in err.reason

    ctl.on_snapshot([NS, peer_authn("fine")])       # taking the object back clears it
    assert not ctl.errors()


def test_a_route_translator_bug_names_the_route(monkeypatch: pytest.MonkeyPatch) -> None:
    import controller.translate.routes as routes

    def buggy(*_):
        raise IndexError("list index out of range")
    monkeypatch.setattr(routes, "_vs_routes", buggy)
    vs = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
          "metadata": {"name": "reviews", "namespace": "shop"},
          "spec": {"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews"}}]}]}}
    ctl = Controller(_NoSource(), ConfigServer(debounce=0.0, registry=CollectorRegistry()))
    ctl.on_snapshot([NS])
    good = ctl.version
    ctl.on_snapshot([NS, vs])
    assert ctl.version == good
    [err] = ctl.errors()
    assert err.ref == "VirtualService/shop/reviews" and "IndexError" in err.reason


SVC = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "shop"},
       "spec": {"selector": {"app": "web"}, "clusterIP": "10.96.0.9", "ports": [{"port": 80}]}}
POD = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web-1", "namespace": "shop", "uid": "u1",
                                                      "labels": {"app": "web"}},
       "spec": {"nodeName": "node1", "containers": [{"name": "c"}]},
       "status": {"phase": "Running", "podIP": "10.1.0.5", "podIPs": [{"ip": "10.1.0.5"}]}}
ENTRY = {"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry", "metadata": {"name": "ext", "namespace": "shop"},
         "spec": {"hosts": ["api.example.com"], "ports": [{"number": 443, "name": "tls", "protocol": "TLS"}],
                  "resolution": "DNS"}}
INGRESS = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "metadata": {"name": "edge", "namespace": "shop"},
           "spec": {"gatewayClassName": "ambit", "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]}}
ROUTE = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "front", "namespace": "shop"},
         "spec": {"parentRefs": [{"name": "edge"}], "rules": [{"backendRefs": [{"name": "web", "port": 80}]}]}}
ISTIO_GW = {"apiVersion": "networking.istio.io/v1", "kind": "Gateway", "metadata": {"name": "legacy", "namespace": "shop"},
            "spec": {"selector": {"istio": "ingressgateway"},
                     "servers": [{"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": ["*"]}]}}


@pytest.mark.parametrize(("module", "helper", "ref"), [
    ("workloads", "_service_ports", "Service/shop/web"),
    ("workloads", "service_account", "Pod/shop/web-1"),
    ("serviceentries", "_ports", "ServiceEntry/shop/ext"),
    ("ingress", "conflicted", "Gateway/shop/edge"),
    ("ingress", "resolve_backends", "HTTPRoute/shop/front"),
    ("istio_gateway", "object_ref", "Gateway/shop/legacy"),
])
def test_a_bug_in_the_service_workload_and_ingress_passes_names_the_object(
        monkeypatch: pytest.MonkeyPatch, module: str, helper: str, ref: str) -> None:
    """Not only the policy and route translators: a bug on one Service, Pod, ServiceEntry, ingress
    Gateway, ingress route or Istio Gateway is reported on that object, not on "controller"."""
    import importlib

    mod = importlib.import_module(f"controller.translate.{module}")

    def buggy(*args, **kwargs):
        raise TypeError("unexpected shape")
    monkeypatch.setattr(mod, helper, buggy)
    with pytest.raises(translate_pkg.TranslationBug) as bug:
        translate_pkg.translate([NS, SVC, POD, ENTRY, INGRESS, ROUTE, ISTIO_GW])
    assert bug.value.ref == ref and "TypeError: unexpected shape" in str(bug.value)
