"""What a user relies on, checked on the lab here and on a real cluster (AMBIT_E2E_DRIVER=kube).

"Through the mesh" is read from ztunnel's own access log on the client's node.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import yaml

from tests.e2e.driver import Driver, captured, eventually, http_get, http_get_many, outbound_from

pytestmark = pytest.mark.lab

ECHO = "http://echo.demo.svc.cluster.local:8080"
MODE = "ambit.io/dataplane-mode"
USE_WAYPOINT = "ambit.io/use-waypoint"
EXAMPLES = Path(__file__).resolve().parents[2].parent / "shared" / "examples"
# The Services httproute-split.yaml sends to (the example names them; the demo apps have only `echo`)
VERSION_SERVICES = "\n---\n".join(
    yaml.safe_dump({"apiVersion": "v1", "kind": "Service", "metadata": {"name": f"echo-{v}", "namespace": "demo"},
                    "spec": {"selector": {"app": "echo", "version": v},
                             "ports": [{"name": "http", "port": 8080, "targetPort": "http"}]}})
    for v in ("v1", "v2"))


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


def pods(replies: list[dict]) -> Counter[str]:
    return Counter(r["pod"] for r in replies)


def test_httproute_split_example_sends_canaries_to_v2_and_splits_the_rest_80_20(driver: Driver) -> None:
    """shared/examples/gateway-api/waypoint.yaml and httproute-split.yaml applied verbatim (with the
    Services echo-v1/echo-v2 they name, and demo bound to the waypoint): `x-canary: true` goes to
    echo-v2, everything else 80/20. 1000 requests: echo-v2's count has mean 200 and sd
    sqrt(1000*.2*.8) = 12.6; +-4 sd (51) fails a correct split with probability < 1e-4 and tells
    80/20 from 50/50 (500) or 90/10 (100)."""
    waypoint = (EXAMPLES / "gateway-api" / "waypoint.yaml").read_text()
    split = (EXAMPLES / "gateway-api" / "httproute-split.yaml").read_text()
    url = f"{ECHO}/split"
    # control: without the route a canary header changes nothing. Without a waypoint ztunnel picks
    # a backend per connection, so one connection per request.
    def canaries_reach_v1() -> bool:
        canary = ("-H", "x-canary: true")
        return any(http_get(driver, "demo/client", url, curl_opts=canary)["pod"] == "echo-v1" for _ in range(12))
    assert canaries_reach_v1()
    driver.apply(VERSION_SERVICES)
    driver.apply(waypoint)
    driver.label_namespace("demo", f"{USE_WAYPOINT}=waypoint")
    try:
        driver.apply(split)
        eventually(lambda: pods(http_get_many(driver, "demo/client", url, 20, "-H", "x-canary: true"))
                   == {"echo-v2": 20}, "the HTTPRoute in force at the waypoint", timeout=60, interval=1)
        assert pods(http_get_many(driver, "demo/client", url, 50, "-H", "x-canary: true")) == {"echo-v2": 50}
        # header values match exactly (case-sensitive): these are not canaries
        for other in ("x-canary: True", "x-canary: false"):
            assert "echo-v1" in pods(http_get_many(driver, "demo/client", url, 30, "-H", other)), other
        got = pods(http_get_many(driver, "demo/client", url, 1000))
        print(f"httproute-split over 1000: {dict(got)}")
        assert set(got) <= {"echo-v1", "echo-v2"} and abs(got["echo-v2"] - 200) <= 51, got
        _cors_at_the_waypoint(driver)
    finally:
        driver.delete(CORS_ROUTE)
        driver.delete(split)
        driver.label_namespace("demo", f"{USE_WAYPOINT}-")
        driver.delete(waypoint)
        driver.delete(VERSION_SERVICES)
    eventually(canaries_reach_v1, "demo back without the route and the waypoint", timeout=30, interval=1)


def test_a_prefer_same_node_namespace_keeps_a_client_on_its_node(driver: Driver) -> None:
    """Istio's `networking.istio.io/traffic-distribution: PreferSameNode` annotation on the namespace
    (it works on any Kubernetes version; `spec.trafficDistribution` needs 1.33+), applied by
    ztunnel to the namespace's Services: demo/client reaches only the echo pod on its own node,
    one connection per request; without it, both."""
    node = driver.node_of("demo/client")
    local = {p for p in ("echo-v1", "echo-v2") if driver.node_of(f"demo/{p}") == node}
    assert local and local != {"echo-v1", "echo-v2"}, "the scenario needs echo pods on two nodes"
    url = f"{ECHO}/near"
    key = "networking.istio.io/traffic-distribution"
    driver.annotate_namespace("demo", key, "PreferSameNode")
    try:
        eventually(lambda: set(pods(http_get_many(driver, "demo/client", url, 8, "-H", "Connection: close"))) == local,
                   "the client's own node only", timeout=30, interval=0.5)
        assert set(pods(http_get_many(driver, "demo/client", url, 12, "-H", "Connection: close"))) == local
    finally:
        driver.annotate_namespace("demo", key, None)
    eventually(lambda: set(pods(http_get_many(driver, "demo/client", url, 12, "-H", "Connection: close")))
               == {"echo-v1", "echo-v2"}, "both nodes again", timeout=30, interval=0.5)


CORS_ROUTE = yaml.safe_dump({
    "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "cors", "namespace": "demo"},
    "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "echo", "port": 8080}],
             "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/cors"}}],
                        "filters": [{"type": "CORS", "cors": {"allowOrigins": ["https://*.shop.example"],
                                                               "allowMethods": ["PUT"], "allowCredentials": True}}],
                        "backendRefs": [{"name": "echo-v1", "port": 8080}]}]}})


def _cors_at_the_waypoint(driver: Driver) -> None:
    """An HTTPRoute CORS filter beside the split (its longer path wins), applied by the namespace's
    waypoint: it answers an allowed origin's preflight itself (no echo JSON: the app never saw it)
    and marks the app's responses."""
    driver.apply(CORS_ROUTE)
    url = f"{ECHO}/cors"

    def call(*opts: str) -> tuple[str, str]:
        p = driver.exec("demo/client", ["curl", "-sS", "-m", "5", "-D", "-", *opts, url], timeout=35)
        assert p.returncode == 0, p.stderr
        head, _, body = p.stdout.replace("\r\n", "\n").partition("\n\n")
        return head.lower(), body
    preflight = ("-X", "OPTIONS", "-H", "Origin: https://www.shop.example", "-H", "Access-Control-Request-Method: PUT")

    def answered() -> tuple[str, str] | None:
        r = call(*preflight)
        return r if "access-control-allow-origin" in r[0] else None
    head, body = eventually(answered, "the CORS filter in force at the waypoint", timeout=60, interval=1)
    assert head.startswith("http/1.1 200") and "access-control-allow-methods: put" in head, head
    assert "access-control-allow-credentials: true" in head and body == "", body
    head, body = call("-X", "PUT", "-H", "Origin: https://www.shop.example")
    assert "access-control-allow-origin: https://www.shop.example" in head and json.loads(body)["pod"] == "echo-v1"
    head, body = call("-X", "PUT", "-H", "Origin: https://evil.example")
    assert "access-control-allow-origin" not in head and json.loads(body)["pod"] == "echo-v1"


def test_peer_authentication_example_strict_refuses_plaintext_and_keeps_mesh_traffic(driver: Driver) -> None:
    """shared/examples/istio/peer-authentication.yaml (STRICT, no namespace: applied to demo, as
    `kubectl apply -n demo` would): a client outside the mesh is refused by a reset (never a hang),
    a mesh client still gets through; deleting it lets the plaintext client back in."""
    [pa] = [d for d in yaml.safe_load_all((EXAMPLES / "istio" / "peer-authentication.yaml").read_text()) if d]
    assert "namespace" not in pa["metadata"]
    pa["metadata"]["namespace"] = "demo"
    text = yaml.safe_dump(pa)
    url = f"http://{driver.pod_ip('demo/echo-v1')}:8080/"
    assert http_get(driver, "legacy/client", url)["pod"] == "echo-v1"     # control: plaintext admitted

    def refused() -> bool:
        rc = driver.exec("legacy/client", ["curl", "-sS", "-m", "10", url], timeout=40).returncode
        assert rc != 28, "the refusal must close the connection, not leave curl hanging"
        return rc in (7, 52, 55, 56)
    driver.apply(text)
    try:
        eventually(refused, "STRICT refusing legacy/client", timeout=20, interval=0.5)
        assert refused()
        assert http_get(driver, "demo/client", url)["pod"] == "echo-v1"
    finally:
        driver.delete(text)
    eventually(lambda: not refused(), "legacy/client admitted again", timeout=20, interval=0.5)


def test_a_service_entry_host_resolves_through_the_dns_proxy_and_routes_to_its_endpoint(driver: Driver) -> None:
    """Istio ambient's DNS proxy with auto-allocated addresses: an entry with no `addresses` gets
    one (240.240.0.0/16); an enrolled pod's resolver (glibc, captured to ztunnel) gets it for the
    host, and the connection goes to the entry's endpoint, a mesh pod; a pod outside the mesh asks
    the cluster DNS, which does not know the host."""
    host = "echo-alias.example.com"
    entry = yaml.safe_dump({
        "apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
        "metadata": {"name": "echo-alias", "namespace": "demo"},
        "spec": {"hosts": [host], "location": "MESH_INTERNAL", "resolution": "STATIC",
                 "endpoints": [{"address": driver.pod_ip("demo/echo-v1")}],
                 "ports": [{"number": 8080, "name": "http", "protocol": "HTTP"}]}})

    def resolved(pod: str) -> str:
        p = driver.exec(pod, ["getent", "ahostsv4", host])
        return p.stdout.split()[0] if p.returncode == 0 and p.stdout.split() else ""

    driver.apply(entry)
    try:
        vip = eventually(lambda: resolved("demo/client").startswith("240.240.") and resolved("demo/client"),
                         "the DNS proxy to answer the entry's host with its allocated address", timeout=30)
        before = len(outbound_from(driver, "demo/client"))
        reply = http_get(driver, "demo/client", f"http://{host}:8080/by-alias")
        assert reply["pod"] == "echo-v1" and reply["path"] == "/by-alias", reply
        recs = eventually(lambda: outbound_from(driver, "demo/client")[before:], "ztunnel access-log records")
        assert any(r["dst.addr"] == f"{vip}:8080" and r.get("dst.service") == host for r in recs), recs
        assert resolved("legacy/client") == "", "the cluster DNS knows no ServiceEntry"
    finally:
        driver.delete(entry)
