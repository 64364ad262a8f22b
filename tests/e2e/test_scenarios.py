"""What a user relies on, checked on the lab here and on a real cluster (AMBIT_E2E_DRIVER=kube).

"Through the mesh" is read from ztunnel's own access log on the client's node.
"""

from __future__ import annotations

import pytest

from tests.e2e.driver import Driver, captured, eventually, http_get, outbound_from

pytestmark = pytest.mark.lab

ECHO = "http://echo.demo.svc.cluster.local:8080"
MODE = "ambit.io/dataplane-mode"


def test_pod_reaches_a_service_by_dns_name_through_the_mesh(driver: Driver) -> None:
    before = len(outbound_from(driver, "demo/client"))
    seen = set()
    for i in range(6):
        reply = http_get(driver, "demo/client", f"{ECHO}/hello/{i}")
        assert reply["path"] == f"/hello/{i}" and reply["namespace"] == "demo"
        seen.add(reply["pod"])
    assert seen <= {"echo-v1", "echo-v2"} and seen, seen
    recs = eventually(lambda: outbound_from(driver, "demo/client")[before:], "ztunnel access-log records")
    assert all(r["dst.addr"].endswith(":8080") for r in recs)
    assert any(r.get("bytes_recv", 0) > 0 for r in recs), "replies came back through ztunnel"


def test_enrolling_a_namespace_by_label_puts_its_traffic_through_ztunnel(driver: Driver) -> None:
    url = f"http://{driver.pod_ip('demo/echo-v1')}:8080/"
    assert not captured(driver, "legacy/client", url), "legacy is not in the mesh yet"
    try:
        driver.label_namespace("legacy", f"{MODE}=ambient")
        eventually(lambda: captured(driver, "legacy/client", url), "legacy/client captured after labelling")
    finally:
        driver.label_namespace("legacy", f"{MODE}-")
    eventually(lambda: not captured(driver, "legacy/client", url), "legacy/client released after unlabelling")


def test_a_pod_opted_out_by_label_is_not_captured(driver: Driver) -> None:
    url = f"http://{driver.pod_ip('demo/echo-v2')}:8080/"
    assert http_get(driver, "demo/optout", url)["pod"] == "echo-v2", "opted out, and still connected"
    assert not captured(driver, "demo/optout", url)
    assert captured(driver, "demo/client", url), "the control: same namespace, same node, same target"
