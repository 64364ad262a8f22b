"""An ingress gateway pod binds three ports for itself (controller/waypoints/render.py): the admin
endpoint on 127.0.0.1:15000, the Prometheus metrics on :15020 and the status port :15021 the
kubelet's readiness probe asks. A Gateway listener, or an Istio Gateway server, on one of them can
never bind (0.0.0.0:15000 clashes with 127.0.0.1:15000 too), so validation refuses it, naming the
field and the endpoint, instead of accepting it and leaving the listener `Accepted=False
PortUnavailable` at run time. `ambit apply --dry-run` and `ambit analyze` share that validation."""

from __future__ import annotations

import io

import pytest
import yaml

from ambitctl import analyze as an
from ambitctl.cli import build_parser
from controller.validation import validate_object
from controller.waypoints import render
from tests.unit.controller.test_ingress import HTTP, gateway
from tests.unit.controller.test_istio_gateway import HTTP_8080, istio_gateway

RESERVED = {15000: "admin endpoint", 15020: "metrics", 15021: "status port"}


def errors(obj: dict) -> dict[str, str]:
    return {e.path: e.reason for e in validate_object(obj)}


def test_the_reserved_ports_are_those_the_ingress_pod_binds() -> None:
    assert set(RESERVED) == {render.ADMIN_PORT, render.METRICS_PORT, render.READY_PORT}


@pytest.mark.parametrize("port", sorted(RESERVED))
def test_a_gateway_listener_on_a_port_of_the_ingress_pod_is_refused(port: int) -> None:
    gw = gateway(HTTP, {"name": "clash", "port": port, "protocol": "HTTP"})
    errs = errors(gw)
    reason = errs.pop("spec.listeners[1].port")
    assert f"port {port} is reserved by the ingress gateway pod" in reason and RESERVED[port] in reason, reason
    assert errs == {}, "the listener on port 80 beside it is accepted"


@pytest.mark.parametrize("port", sorted(RESERVED))
def test_an_istio_gateway_server_on_a_port_of_the_ingress_pod_is_refused(port: int) -> None:
    server = {"port": {"number": port, "name": "clash", "protocol": "HTTP"}, "hosts": ["*"]}
    errs = errors(istio_gateway(HTTP_8080, server))
    reason = errs.pop("spec.servers[1].port.number")
    assert f"port {port} is reserved by the ingress gateway pod" in reason and RESERVED[port] in reason, reason
    assert errs == {}, "the server on port 8080 beside it is accepted"


@pytest.mark.parametrize("port", [15008, 15090, 15001])
def test_ports_the_ingress_pod_does_not_bind_stay_accepted(port: int) -> None:
    """Its HBONE listener is a waypoint's, not the ingress's; 15090 is Envoy's, not Ambit's."""
    assert errors(gateway({"name": "p", "port": port, "protocol": "TCP"})) == {}
    assert errors(istio_gateway({"port": {"number": port, "name": "p", "protocol": "TCP"}, "hosts": ["*"]})) == {}


def test_a_waypoint_listener_is_not_concerned() -> None:
    """A waypoint's pod binds the same endpoints, but its listeners are HBONE/HTTP on 15008 and are
    never bound one by one; this check is the ingress's."""
    wp = gateway({"name": "mesh", "port": 15008, "protocol": "HBONE"}, cls="ambit-waypoint")
    assert "spec.listeners[0].port" not in errors(wp)


CLASH = gateway(HTTP, {"name": "clash", "port": 15021, "protocol": "HTTP"})


def test_analyze_reports_the_refusal() -> None:
    found = {(f.code, f.ref, f.path) for f in an.at_or_above(an.analyze([CLASH], complete=False), an.ERROR)}
    assert ("AMB0001", "Gateway/web/gw", "spec.listeners[1].port") in found


def test_apply_dry_run_refuses_it(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("AMBIT_LAB_DIR", str(tmp_path / "lab"))
    args = build_parser().parse_args(["apply", "--dry-run", "-f", "-"])
    out, err = io.StringIO(), io.StringIO()
    args.stdout, args.stderr, args.stdin = out, err, io.StringIO(yaml.safe_dump(CLASH))
    assert args.func(args) == 1, out.getvalue()
    assert "Gateway/web/gw: spec.listeners[1].port: port 15021 is reserved by the ingress gateway pod" in err.getvalue()
