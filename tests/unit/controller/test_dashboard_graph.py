"""The topology view's pure parts: rates from scrapes, the graph from rates, policies per node,
access-log matching. Label sets are the ones the proxies export (Istio's standard metrics)."""

from __future__ import annotations

import math

import pytest

from ambit.model import Authorization, PeerAuthn, Service, Workload
from controller.dashboard import accesslogs
from controller.dashboard.graph import Mesh, Rate, build, histogram_quantile
from controller.dashboard.rates import Scrape, Window, parse, rates


def tcp(reporter: str, src: str, dst: str, svc: str, ns: str = "shop", mtls: str = "mutual_tls",
        flags: str = "-") -> dict[str, str]:
    return {"reporter": reporter, "source_workload": src, "source_workload_namespace": ns,
            "destination_workload": dst, "destination_workload_namespace": ns, "destination_service_name": svc,
            "destination_service_namespace": ns, "connection_security_policy": mtls, "response_flags": flags}


def http(src: str, dst: str, svc: str, code: str = "200", ns: str = "default") -> dict[str, str]:
    return {"reporter": "waypoint", "source_workload": src, "source_workload_namespace": ns,
            "destination_workload": dst, "destination_workload_namespace": ns, "destination_service_name": svc,
            "destination_service_namespace": ns, "connection_security_policy": "mutual_tls", "response_code": code,
            "namespace": ns, "gateway": "waypoint"}


def wl(ns: str, name: str, node: str = "node1", **labels: str) -> Workload:
    return Workload(uid=f"{ns}/{name}", name=name, namespace=ns, ips=["10.0.0.1"], node=node, service_account=name,
                    identity=f"spiffe://cluster.local/ns/{ns}/sa/{name}", labels=dict(labels), enrolled=True)


def edge(g: dict, a: str, b: str) -> dict:
    [e] = [e for e in g["edges"] if (e["source"], e["target"]) == (a, b)]
    return e


def test_l4_traffic_is_workload_to_service_to_workload_counted_once_with_the_lock() -> None:
    rs = []
    for rep in ("source", "destination"):   # both ztunnels report the same connections
        lb = tcp(rep, "shopper", "cart-v1", "cart")
        rs += [Rate("istio_tcp_connections_opened_total", lb, 2.0), Rate("istio_tcp_connections_closed_total", lb, 2.0),
               Rate("istio_tcp_sent_bytes_total", lb, 100.0), Rate("istio_tcp_received_bytes_total", lb, 300.0)]
    g = build(rs)
    assert [(e["source"], e["target"]) for e in g["edges"]] == [
        ("svc:shop/cart", "wl:shop/cart-v1"), ("wl:shop/shopper", "svc:shop/cart")]
    e = edge(g, "wl:shop/shopper", "svc:shop/cart")
    assert e == {"source": "wl:shop/shopper", "target": "svc:shop/cart", "protocol": "tcp", "rate": 2.0,
                 "errorRate": 0.0, "p99Ms": None, "bytesPerSecond": 400.0, "mtls": True}


def test_destination_reporter_counts_when_the_source_has_no_ztunnel_and_plaintext_has_no_lock() -> None:
    lb = tcp("destination", "unknown", "cart-v1", "cart", mtls="none")
    g = build([Rate("istio_tcp_connections_opened_total", lb, 1.0),
               Rate("istio_tcp_connections_closed_total", {**lb, "response_flags": "DENY"}, 1.0)])
    e = edge(g, "wl:shop/unknown", "svc:shop/cart")
    assert e["mtls"] is False and e["rate"] == 1.0 and e["errorRate"] == 1.0


def test_an_ingress_gateways_requests_start_at_its_gateway_node() -> None:
    """An ingress gateway reports as Istio's gateways: reporter="source", its own pod the source.
    The pod is drawn as its Gateway (a gateway pod is never a workload node), so its edges stay."""
    lb = {**http("gw-0", "myapp-v1", "myapp"), "reporter": "source", "connection_security_policy": "unknown",
          "gateway": "gw"}
    gw_pod = wl("default", "gw-0", **{"gateway.networking.k8s.io/gateway-name": "gw"})
    g = build([Rate("istio_requests_total", lb, 4.0)], Mesh(workloads=[gw_pod]))
    assert [(e["source"], e["target"]) for e in g["edges"]] == [
        ("svc:default/myapp", "wl:default/myapp-v1"), ("wp:default/gw", "svc:default/myapp")]
    assert edge(g, "wp:default/gw", "svc:default/myapp")["rate"] == 4.0


def test_http_through_a_waypoint_puts_the_waypoint_in_the_path_with_errors_p99_and_bytes() -> None:
    ok, err = http("frontend", "myapp-v1", "myapp"), http("frontend", "myapp-v1", "myapp", code="503")
    rs = [Rate("istio_requests_total", ok, 9.0), Rate("istio_requests_total", err, 1.0),
          Rate("istio_request_bytes_sum", ok, 50.0), Rate("istio_response_bytes_sum", ok, 950.0)]
    for le, v in (("1.0", 5.0), ("5.0", 9.0), ("10.0", 10.0), ("+Inf", 10.0)):
        rs.append(Rate("istio_request_duration_milliseconds_bucket", {**ok, "le": le}, v))
    # ztunnel's legs to and from the waypoint pod are not drawn again as L4 edges
    waypoint_pod = wl("default", "waypoint-0", node="node2", **{"gateway.networking.k8s.io/gateway-name": "waypoint"})
    rs.append(Rate("istio_tcp_connections_opened_total", {**tcp("source", "frontend", "waypoint-0", "myapp"),
                                                           "destination_workload_namespace": "default"}, 3.0))
    g = build(rs, Mesh(workloads=[waypoint_pod, wl("default", "frontend")]))
    ids = {n["id"]: n["kind"] for n in g["nodes"]}
    assert ids["wp:default/waypoint"] == "waypoint" and "wl:default/waypoint-0" not in ids
    assert [(e["source"], e["target"]) for e in g["edges"]] == [
        ("svc:default/myapp", "wl:default/myapp-v1"), ("wl:default/frontend", "wp:default/waypoint"),
        ("wp:default/waypoint", "svc:default/myapp")]
    e = edge(g, "wl:default/frontend", "wp:default/waypoint")
    assert e["protocol"] == "http" and e["rate"] == 10.0 and e["errorRate"] == 0.1 and e["mtls"]
    assert e["bytesPerSecond"] == 1000.0
    assert e["p99Ms"] == pytest.approx(9.5)      # rank 9.9 of 10 falls in (5, 10]: 5 + 5 * 0.9 / 1


def test_histogram_quantile_matches_prometheus() -> None:
    assert histogram_quantile(0.5, {1.0: 0.0, 2.0: 4.0, math.inf: 4.0}) == 1.5
    assert histogram_quantile(0.99, {1.0: 1.0, math.inf: 2.0}) == 1.0      # in +Inf: the highest finite bound
    assert histogram_quantile(0.99, {}) is None
    assert histogram_quantile(0.99, {1.0: 0.0, math.inf: 0.0}) is None


def test_policies_per_node_follow_the_translation_scopes() -> None:
    front = wl("default", "frontend", app="frontend")
    mesh = Mesh(
        workloads=[front, wl("default", "myapp-v1", app="myapp")],
        services=[Service(name="myapp", namespace="default", hostname="myapp.default.svc.cluster.local",
                          waypoint="default/waypoint")],
        authorizations=[
            Authorization(name="all", namespace="ambit-system", action="DENY", scope="global"),
            Authorization(name="ns", namespace="default", action="ALLOW", scope="namespace"),
            Authorization(name="front", namespace="default", action="ALLOW", scope="workload",
                          selector={"app": "frontend"}),
            Authorization(name="other", namespace="shop", action="ALLOW", scope="namespace"),
            Authorization(name="gw", namespace="default", action="ALLOW", scope="waypoint",
                          target_refs=[{"kind": "Gateway", "name": "waypoint"}]),
            Authorization(name="svc", namespace="default", action="DENY", scope="waypoint",
                          target_refs=[{"kind": "Service", "name": "myapp"}])],
        peer_authns=[PeerAuthn(name="strict", namespace="default", mode="STRICT")])
    rs = [Rate("istio_requests_total", http("frontend", "myapp-v1", "myapp"), 1.0)]
    nodes = {n["id"]: n for n in build(rs, mesh)["nodes"]}
    pol = {k: [(p["kind"], p["name"], p["scope"]) for p in n["policies"]] for k, n in nodes.items()}
    assert pol["wl:default/frontend"] == [
        ("AuthorizationPolicy", "ambit-system/all", "mesh-wide"), ("AuthorizationPolicy", "default/ns", "namespace"),
        ("AuthorizationPolicy", "default/front", "selector"), ("PeerAuthentication", "default/strict", "namespace")]
    assert ("AuthorizationPolicy", "default/front", "selector") not in pol["wl:default/myapp-v1"]
    assert pol["wp:default/waypoint"] == [("AuthorizationPolicy", "default/gw", "targetRef Gateway")]
    assert pol["svc:default/myapp"] == [("AuthorizationPolicy", "default/svc", "targetRef Service")]
    assert nodes["svc:default/myapp"]["waypoint"] == "default/waypoint"


def test_rates_from_two_scrapes_handle_new_series_and_counter_resets() -> None:
    text1 = ('# TYPE istio_tcp_connections_opened counter\n'
             'istio_tcp_connections_opened_total{reporter="source",source_workload="a"} 10\n'
             'istio_tcp_connections_opened_total{reporter="source",source_workload="b"} 50\n')
    text2 = ('# TYPE istio_tcp_connections_opened counter\n'
             'istio_tcp_connections_opened_total{reporter="source",source_workload="a"} 30\n'
             'istio_tcp_connections_opened_total{reporter="source",source_workload="b"} 5\n'
             'istio_tcp_connections_opened_total{reporter="source",source_workload="c"} 4\n'
             '# TYPE other counter\nother_total 7\n')
    old, new = Scrape(0.0, parse(text1, {"job": "ztunnel"})), Scrape(2.0, parse(text2, {"job": "ztunnel"}))
    got = {r.labels["source_workload"]: r.value for r in rates(old, new)}
    assert got == {"a": 10.0, "b": 2.5, "c": 2.0}       # +20/2s; reset: 5 since; new: 4 since
    assert all(r.labels["job"] == "ztunnel" for r in rates(old, new))


def test_window_keeps_the_last_minute_of_scrapes() -> None:
    w = Window(60.0)
    assert w.rates() == []
    for t in range(0, 100, 10):
        w.add(Scrape(float(t), {("istio_requests_total", (("a", "b"),)): float(t)}))
    assert w.scrapes[0].at == 30.0 and w.span == 60.0
    assert [r.value for r in w.rates()] == [1.0]


def test_the_window_holds_one_key_per_series_whatever_the_number_of_scrapes() -> None:
    # A waypoint's series carry some 28 labels: kept once per scrape (20 a minute), 10,000 series
    # cost the controller a gigabyte. The window keeps one key object per series it still sees.
    def text(n: int, value: int) -> str:
        return "# TYPE istio_requests counter\n" + "".join(
            f'istio_requests_total{{reporter="waypoint",source_workload="w{i}",response_code="200"}} {value}\n'
            for i in range(n))
    w = Window(60.0)
    for t in range(20):
        w.add(Scrape(3.0 * t, parse(text(300, t), {"job": "waypoint", "namespace": "default"})))
    keys = {id(k) for s in w.scrapes for k in s.samples}
    assert len(keys) == 300
    assert {r.value for r in w.rates()} == {1 / 3}
    # Series that are gone are not remembered once the window no longer holds them.
    for t in range(20, 45):
        w.add(Scrape(3.0 * t, parse(text(10, t), {"job": "waypoint"})))
    assert len({id(k) for s in w.scrapes for k in s.samples}) == 10


def test_access_log_lines_are_matched_to_nodes() -> None:
    zt = accesslogs.record_of('access {"src.workload": "shopper", "src.namespace": "shop", '
                              '"dst.workload": "cart-v1", "dst.namespace": "shop", "dst.service": "cart.shop.svc.cluster.local"}')
    wp = accesslogs.record_of('2026-01-01 INFO ambit.waypoint.access: {"authority": "myapp", "response_code": 200, '
                              '"source_workload": "frontend", "source_namespace": "default"}')
    assert zt and wp and accesslogs.record_of("2026 INFO ztunnel: started") is None
    assert accesslogs.matches(zt, "wl:shop/shopper") and accesslogs.matches(zt, "wl:shop/cart-v1")
    assert accesslogs.matches(zt, "svc:shop/cart") and not accesslogs.matches(zt, "wl:default/shopper")
    assert accesslogs.matches(wp, "wl:default/frontend") and accesslogs.matches(wp, "svc:default/myapp")
    assert accesslogs.matches(wp, "wp:default/waypoint", "waypoint-default-waypoint")
    assert not accesslogs.matches(zt, "wp:default/waypoint", "ztunnel-node1")


def test_a_waypoint_scraped_without_a_gateway_label_is_found_by_its_pod() -> None:
    lb = {k: v for k, v in http("frontend", "myapp-v1", "myapp").items() if k != "gateway"}
    pod = wl("default", "waypoint-7d9f", **{"gateway.networking.k8s.io/gateway-name": "waypoint"})
    g = build([Rate("istio_requests_total", {**lb, "pod": "waypoint-7d9f"}, 1.0)], Mesh(workloads=[pod]))
    assert edge(g, "wl:default/frontend", "wp:default/waypoint")["rate"] == 1.0
