"""DestinationRule `connectionPool.http.useClientProtocol` through the real engine: the request goes
upstream in the protocol its client spoke (Envoy's use_downstream_protocol, as Istio sets it),
whatever the Service port's protocol says. Real clients (grpcio, http.client) and real origins."""

from __future__ import annotations

import http.client
import json
import random
import time

import grpc
import pytest

from ambit.model import TrafficPolicy
from tests.unit.waypoint.harness import GrpcOrigin, Origin, Proxy
from waypoint.request import Decision, Downstream, Forward, RequestHead
from waypoint.traffic.cluster import Cluster, ClusterKey

pytestmark = pytest.mark.timeout(60)


def proxy_to(port: int, protocol: str) -> Proxy:
    def decide(head: RequestHead, ds: Downstream) -> Decision:
        return Forward(service="t/app", port=port, route="app")
    cluster = Cluster(ClusterKey("t/app", 80), TrafficPolicy(use_client_protocol=True), time.monotonic,
                      random.Random(1), "app.t.svc.cluster.local")
    return Proxy(decide, protocols={port: protocol}, cluster=cluster)


def test_a_grpc_client_reaches_a_grpc_server_behind_an_http1_port() -> None:
    """The port says HTTP/1.1, the client speaks HTTP/2 (gRPC): upstream is h2c, the call succeeds
    (without useClientProtocol the waypoint speaks HTTP/1.1 to the gRPC server)."""
    srv = GrpcOrigin()
    p = proxy_to(srv.port, "http1")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{p.port}") as ch:
            assert ch.unary_unary("/echo.Echo/Unary")(b"hi", timeout=10) == b"echo:hi"
    finally:
        p.close()
        srv.close()


def test_an_http1_client_reaches_an_http1_server_behind_an_h2_port() -> None:
    """The port says HTTP/2, the client speaks HTTP/1.1: upstream is HTTP/1.1 (without
    useClientProtocol the waypoint speaks h2c to this HTTP/1.1-only server)."""
    origin = Origin()
    p = proxy_to(origin.port, "h2")
    try:
        c = http.client.HTTPConnection("127.0.0.1", p.port, timeout=10)
        c.request("GET", "/")
        r = c.getresponse()
        assert r.status == 200 and json.loads(r.read())["version"] == "HTTP/1.1"
        c.close()
    finally:
        p.close()
        origin.close()
