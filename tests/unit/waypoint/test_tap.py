"""The waypoint's request record → tap event mapping (L7 fields and the authorization verdict)."""

from __future__ import annotations

from ambit.model import Workload
from waypoint.http.record import RequestRecord
from waypoint.request import Downstream
from waypoint.tap import deciding_policy, request_event

CLIENT_ID = "spiffe://cluster.local/ns/demo/sa/client"
ECHO_ID = "spiffe://cluster.local/ns/demo/sa/echo"
CLIENT = Workload(uid="demo/client-1", name="client-1", namespace="demo", ips=["10.1.0.5"], node="n1",
                  service_account="client", identity=CLIENT_ID, labels={"app": "client"})
ECHO = Workload(uid="demo/echo-v1-5b7f9c-abcde", name="echo-v1-5b7f9c-abcde", namespace="demo", ips=["10.1.0.9"],
                node="n1", service_account="echo", identity=ECHO_ID,
                labels={"app": "echo", "pod-template-hash": "5b7f9c"})


def record(**kw: object) -> RequestRecord:
    down = Downstream(source_identity=CLIENT_ID, source_ip="10.1.0.5", destination_ip="10.96.0.10",
                      destination_port=8080, service="demo/echo", hostname="echo.demo.svc.cluster.local")
    base: dict[str, object] = dict(method="GET", path="/api", authority="echo:8080", protocol="HTTP/1.1",
                                   downstream=down, status=200, bytes_received=3, bytes_sent=42,
                                   duration_ms=12.3456, upstream="10.1.0.9:8080", route="demo/echo", start=100.0)
    base.update(kw)
    return RequestRecord(**base)  # type: ignore[arg-type]


def test_allowed_request() -> None:
    ev = request_event(record(), CLIENT, ECHO)
    assert ev["layer"] == "L7" and (ev["method"], ev["path"], ev["status"]) == ("GET", "/api", 200)
    assert ev["src"]["workload"] == "client-1" and ev["src"]["identity"] == CLIENT_ID
    assert ev["dst"]["workload"] == "echo-v1" and ev["dst"]["pod"] == ECHO.name and ev["dst"]["service"] == "demo/echo"
    assert (ev["bytes_sent"], ev["bytes_recv"], ev["latency_ms"]) == (3, 42, 12.346)
    assert ev["verdict"] == "allowed"


def test_rbac_denial_names_the_deciding_policy() -> None:
    ev = request_event(record(status=403, response_flags="RBAC", detail="denied by demo/no-admin", upstream=""),
                       CLIENT, None)
    assert (ev["verdict"], ev["policy"], ev["status"]) == ("denied", "demo/no-admin", 403)
    assert ev["dst"]["workload"] == ""


def test_allow_policies_that_matched_nothing() -> None:
    assert deciding_policy("no rule of the ALLOW policies (demo/a, demo/b) matched") == "demo/a, demo/b"
    assert deciding_policy("source identity x is in the foreign trust domain 'y'") == ""


def test_upstream_failure_is_an_error_and_a_503_from_the_app_is_allowed() -> None:
    assert request_event(record(status=503, response_flags="UF"), CLIENT, ECHO)["verdict"] == "error"
    assert request_event(record(status=503), CLIENT, ECHO)["verdict"] == "allowed"


def test_an_opaque_tcp_stream_is_an_l4_event() -> None:
    ev = request_event(record(method="", path="", authority="", protocol="TCP", status=0, bytes_received=10,
                              bytes_sent=20, detail="idle timeout"), CLIENT, ECHO)
    assert ev["layer"] == "L4" and "status" not in ev and "method" not in ev
    assert (ev["bytes_sent"], ev["bytes_recv"], ev["error"]) == (10, 20, "idle timeout")
    assert ev["dst"]["workload"] == "echo-v1"
    assert ev["verdict"] == "allowed"
    failed = request_event(record(protocol="TCP", status=0, response_flags="UF", upstream=""), CLIENT, None)
    assert failed["verdict"] == "error"
