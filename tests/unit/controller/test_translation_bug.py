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

    def buggy(vs, hosts):
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
