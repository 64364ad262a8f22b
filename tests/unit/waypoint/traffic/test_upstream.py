"""The waypoint picks upstreams through the cluster: its balancer over the subset's ready
endpoints, the retry's exclude set, the hash key from the request head and Downstream, and the
generated cookie carried to the response by the UpstreamTarget. Config built by hand, no sockets."""

from __future__ import annotations

import asyncio
import types
from collections import Counter

from ambit.model import Subset, TrafficPolicy, WaypointRoutes
from tests.unit.waypoint.test_wiring import FRONTEND, SVC, proxy
from waypoint.request import Forward, RequestHead


def routes(policy: TrafficPolicy, subsets: list[Subset] | None = None) -> WaypointRoutes:
    return WaypointRoutes(hostname=SVC.hostname, namespace="default", service="default/myapp",
                          waypoint="default/waypoint", policy=policy, subsets=subsets or [])


def fwd(subset: str = "") -> Forward:
    return Forward("default/myapp", 80, subset, SVC.hostname)


def test_round_robin_over_the_subsets_ready_endpoints_with_exclude() -> None:
    p = proxy(routes=(routes(TrafficPolicy(lb="ROUND_ROBIN"),
                             [Subset("v2", {"version": "v2"}, TrafficPolicy(lb="ROUND_ROBIN"))]),))
    down, _ = p.downstream(FRONTEND, "10.0.2.5", "10.96.0.10:80")
    assert down is not None
    head = RequestHead("GET", "/", "myapp")
    got = Counter(t.address for t in (p.upstream(fwd("v2"), head, down) for _ in range(6)) if t is not None)
    assert got == {"10.0.1.2:8080": 3, "10.0.1.3:8080": 3}
    assert {p.upstream(fwd("v2"), head, down, frozenset({"10.0.1.2:8080"})).address  # type: ignore[union-attr]
            for _ in range(4)} == {"10.0.1.3:8080"}
    t = p.upstream(fwd("v2"), head, down)
    assert t is not None and t.cluster is not None and t.cluster.name == f"outbound|80|v2|{SVC.hostname}"
    got = Counter(t.address for t in (p.upstream(fwd(), head, down) for _ in range(9)) if t is not None)
    assert set(got) == {"10.0.1.1:8080", "10.0.1.2:8080", "10.0.1.3:8080"}      # never the unready one


def test_the_default_is_least_request() -> None:
    p = proxy()
    down, _ = p.downstream(FRONTEND, "10.0.2.5", "10.96.0.10:80")
    assert down is not None
    t = p.upstream(fwd(), RequestHead("GET", "/", "myapp"), down)
    assert t is not None and t.cluster is not None and t.cluster.lb == "LEAST_REQUEST"


def test_hash_on_the_source_ip_and_on_a_generated_cookie() -> None:
    p = proxy(routes=(routes(TrafficPolicy(lb="CONSISTENT_HASH", hash_source_ip=True)),))
    head = RequestHead("GET", "/", "myapp")
    by_source = {}
    for src in (f"10.0.2.{i}" for i in range(1, 30)):
        down, _ = p.downstream(FRONTEND, src, "10.96.0.10:80")
        assert down is not None
        picks = {p.upstream(fwd(), head, down).address for _ in range(3)}  # type: ignore[union-attr]
        assert len(picks) == 1
        by_source[src] = picks.pop()
    assert len(set(by_source.values())) == 3
    p = proxy(routes=(routes(TrafficPolicy(lb="CONSISTENT_HASH", hash_cookie="sid", hash_cookie_ttl=60.0,
                                           hash_cookie_path="/")),))
    down, _ = p.downstream(FRONTEND, "10.0.2.5", "10.96.0.10:80")
    assert down is not None
    t = p.upstream(fwd(), RequestHead("GET", "/", "myapp", headers=[("x-request-id", "abc")]), down)
    assert t is not None and len(t.response_headers) == 1
    name, value = t.response_headers[0]
    assert name == "set-cookie" and value.endswith("; Max-Age=60; Path=/; HttpOnly")
    sid = value.split('"')[1]
    again = p.upstream(fwd(), RequestHead("GET", "/", "myapp", headers=[("cookie", f"sid={sid}")]), down)
    assert again is not None and again.address == t.address and again.response_headers == ()


def test_opaque_connections_are_balanced_by_the_services_cluster() -> None:
    p = proxy(routes=(routes(TrafficPolicy(lb="ROUND_ROBIN")),))
    down, _ = p.downstream(FRONTEND, "10.0.2.5", "10.96.0.10:80")
    assert down is not None
    seen: list[str] = []

    def connector(pick, source_ip, hops=0, keepalive=None):  # type: ignore[no-untyped-def]
        async def connect() -> object:
            seen.append(pick.address)
            if pick.address == "10.0.1.1:8080":
                raise ConnectionError("refused")
            return types.SimpleNamespace()   # a connection the relay may set attributes on
        return connect
    p._connector = connector  # type: ignore[method-assign]

    async def go() -> None:
        for _ in range(6):
            try:
                await p.opaque(down)
            except ConnectionError:
                pass
    asyncio.run(go())
    assert Counter(seen) == {"10.0.1.1:8080": 2, "10.0.1.2:8080": 2, "10.0.1.3:8080": 2}
    c = p.cluster("default/myapp", 80)
    assert c.lb == "ROUND_ROBIN" and c.hosts == ("10.0.1.1:8080", "10.0.1.2:8080", "10.0.1.3:8080")
