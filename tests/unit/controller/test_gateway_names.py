"""A Gateway of a class Ambit deploys is named so that its Service and its pods' gateway-name
label can be named after it (controller/kinds/gateway.py `deployed_name_reason`). Gateway API
allows names up to 253 characters with dots (conformance's GatewayNameMaximumLength); the API
server refuses such a Service, so such a Gateway was accepted and never served."""

from __future__ import annotations

from typing import Any

import pytest

from controller.validation import validate_object

GW = "gateway.networking.k8s.io/v1"


def gateway(name: str, cls: str = "ambit-waypoint") -> dict[str, Any]:
    listener = ({"name": "mesh", "port": 15008, "protocol": "HBONE"} if "waypoint" in cls
                else {"name": "http", "port": 80, "protocol": "HTTP"})
    return {"apiVersion": GW, "kind": "Gateway", "metadata": {"name": name, "namespace": "demo"},
            "spec": {"gatewayClassName": cls, "listeners": [listener]}}


@pytest.mark.parametrize("cls", ["ambit-waypoint", "istio-waypoint", "ambit", "istio"])
@pytest.mark.parametrize("name", ["a" * 64, "edge.example", "1st-gateway"])
def test_a_name_no_service_can_have_is_refused_for_a_gateway_ambit_deploys(name: str, cls: str) -> None:
    [e] = validate_object(gateway(name, cls))
    assert e.path == "metadata.name"
    assert e.reason.startswith(f'"{name}" cannot name a Gateway of class {cls}: Ambit names the gateway\'s Service')


@pytest.mark.parametrize("name", ["waypoint", "a" * 63, "edge-1"])
def test_a_service_name_is_accepted(name: str) -> None:
    assert validate_object(gateway(name)) == [] and validate_object(gateway(name, "ambit")) == []


def test_another_controllers_gateway_keeps_gateway_apis_names() -> None:
    assert validate_object(gateway("a" * 64 + ".example", "nginx")) == []
