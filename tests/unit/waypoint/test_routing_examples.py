"""The seed examples (../shared/examples) through the REAL controller translation and `route()`,
with Istio's semantics; splits are measured statistically on seeded random sources."""

from __future__ import annotations

import math

import pytest

from tests.unit.waypoint.support import (
    EXAMPLES,
    backend,
    decide,
    load_yaml,
    namespace,
    req,
    service,
    split,
    table_of,
)
from waypoint.request import Downstream, Forward, LocalReply

MYAPP = "myapp.default.svc.cluster.local"


def myapp_objects() -> list[dict]:
    return [namespace("default"), service("myapp", "default", {"http": 80}, ip="10.96.0.20")]


def to_myapp(**kw) -> Downstream:
    return Downstream(service="default/myapp", hostname=MYAPP, destination_port=80, **kw)


def examples(*names: str) -> list[dict]:
    return [d for n in names for d in load_yaml(EXAMPLES / "istio" / n)]


def within(count: int, n: int, p: float, sigmas: float = 5.0) -> bool:
    """|count/n - p| within `sigmas` binomial standard deviations: with 5 sigma a correct split
    fails about once in 1.7 million runs, and the seeds are fixed, so the outcome is reproducible."""
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


# -- virtual-service.yaml + destination-rule.yaml ---------------------------------------------------

@pytest.mark.parametrize("headers,want", [
    ({"x-canary": "true"}, "default/myapp/v2"),
    ({}, "default/myapp/v1"),
    ({"x-canary": "TRUE"}, "default/myapp/v1"),          # exact is case-sensitive
    ({"x-canary": "true-ish"}, "default/myapp/v1"),
])
def test_virtual_service_header_canary(headers: dict[str, str], want: str) -> None:
    t = table_of(myapp_objects() + examples("virtual-service.yaml", "destination-rule.yaml"))
    d = decide(t, req("/", authority="myapp", headers=headers), to_myapp())
    assert backend(d) == want
    assert isinstance(d, Forward) and d.port == 80 and d.hostname == MYAPP
    assert t.subset_labels(MYAPP, d.subset) == {"version": d.subset}


def test_a_subset_no_destination_rule_defines_is_503_nc() -> None:
    t = table_of(myapp_objects() + examples("virtual-service.yaml"))
    d = decide(t, req("/", authority="myapp"), to_myapp())
    assert isinstance(d, LocalReply) and (d.status, d.flags) == (503, "NC") and "subset 'v1'" in d.reason


# -- canary-deployment.yaml -------------------------------------------------------------------------

def canary_table():
    objs = myapp_objects() + examples("canary-deployment.yaml")
    objs.append({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
                 "metadata": {"name": "myapp-subsets", "namespace": "default"},
                 "spec": {"host": "myapp", "subsets": [{"name": n, "labels": {"track": n}}
                                                       for n in ("premium", "stable", "canary")]}})
    return table_of(objs)


def to_canary_host() -> Downstream:
    """The seed's host, myapp.example.com, is not a Service: the waypoint finds it by authority."""
    return Downstream(source_namespace="default", destination_port=80)


@pytest.mark.parametrize("cookie", ["user=premium", "a=1;user=premium", "user=premium;b=2", "a=1;user=premium;b=2"])
def test_premium_cookie_always_goes_to_premium(cookie: str) -> None:
    t = canary_table()
    counts = split(t, req("/", authority="myapp.example.com", headers={"cookie": cookie}), to_canary_host(), 2000)
    assert counts == {"default/myapp/premium": 2000}


@pytest.mark.parametrize("cookie", [None, "user=basic", "user=premiumx", "a=1; user=premium"])
def test_everyone_else_is_split_90_10(cookie: str | None) -> None:
    """`a=1; user=premium` (a space after `;`, as browsers send) does NOT match the seed's regex:
    RE2 full match, as Envoy's safe_regex (l7-semantics.md §1)."""
    t = canary_table()
    n = 20_000
    headers = {"cookie": cookie} if cookie else {}
    counts = split(t, req("/", authority="myapp.example.com:80", headers=headers), to_canary_host(), n)
    assert set(counts) == {"default/myapp/stable", "default/myapp/canary"}
    assert within(counts["default/myapp/canary"], n, 0.10)


# -- relative weights ---------------------------------------------------------------------------------

def vs(http: list[dict], name: str = "myapp", hosts: list[str] | None = None) -> dict:
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": name, "namespace": "default"}, "spec": {"hosts": hosts or ["myapp"], "http": http}}


def three_services() -> list[dict]:
    return myapp_objects() + [service(n, "default", {"http": 80}, ip=f"10.96.0.{30 + i}")
                              for i, n in enumerate(("a", "b", "c"))]


@pytest.mark.parametrize("weights,shares", [
    ((1, 1, 2), (0.25, 0.25, 0.50)),
    ((200, 800, 0), (0.2, 0.8, 0.0)),
    ((60, 30, 10), (0.6, 0.3, 0.1)),
])
def test_weights_are_relative(weights: tuple[int, ...], shares: tuple[float, ...]) -> None:
    route = [{"destination": {"host": h}, "weight": w} for h, w in zip("abc", weights, strict=True)]
    t = table_of(three_services() + [vs([{"route": route}])])
    n = 20_000
    counts = split(t, req("/"), to_myapp(), n)
    for h, p in zip("abc", shares, strict=True):
        if p == 0:
            assert counts[f"default/{h}"] == 0           # weight 0 is never chosen
        else:
            assert within(counts[f"default/{h}"], n, p), counts


def test_a_single_destination_takes_everything_whatever_its_weight() -> None:
    t = table_of(three_services() + [vs([{"route": [{"destination": {"host": "a"}, "weight": 0}]}])])
    assert split(t, req("/"), to_myapp(), 100) == {"default/a": 100}


# -- host selection ---------------------------------------------------------------------------------

def test_a_service_without_routes_gets_its_default_route() -> None:
    t = table_of(three_services() + [vs([{"route": [{"destination": {"host": "a"}}]}])])
    d = decide(t, req("/", authority="b"), Downstream(service="default/b", hostname="b.default.svc.cluster.local",
                                                      destination_port=80))
    assert isinstance(d, Forward) and (d.service, d.port, d.route) == ("default/b", 80, "default")


def test_the_destination_decides_not_the_host_header() -> None:
    """An Istio waypoint builds one route configuration per destination Service; Host is not used."""
    t = table_of(three_services() + [vs([{"route": [{"destination": {"host": "a"}}]}])])
    assert backend(decide(t, req("/", authority="b.example"), to_myapp())) == "default/a"


@pytest.mark.parametrize("authority", ["myapp", "myapp:80", "myapp.default", "myapp.default.svc",
                                       "myapp.default.svc.cluster.local", "MYAPP.default.svc.cluster.local:80"])
def test_without_a_known_destination_the_authority_selects(authority: str) -> None:
    t = table_of(three_services() + [vs([{"route": [{"destination": {"host": "a"}}]}])])
    d = decide(t, req("/", authority=authority), Downstream(source_namespace="default", destination_port=80))
    assert backend(d) == "default/a"


def test_an_unknown_host_is_404_nr() -> None:
    t = table_of(three_services())
    d = decide(t, req("/", authority="nowhere.example"), Downstream(destination_port=80))
    assert isinstance(d, LocalReply) and (d.status, d.flags, d.body) == (404, "NR", b"")
    g = decide(t, req("/", authority="nowhere.example", grpc=True), Downstream(destination_port=80))
    assert isinstance(g, LocalReply) and g.grpc_status == 12      # UNIMPLEMENTED, as Envoy maps 404


def test_no_matching_route_is_404_nr() -> None:
    t = table_of(three_services() + [vs([{"match": [{"uri": {"prefix": "/a"}}], "route": [{"destination": {"host": "a"}}]}])])
    d = decide(t, req("/b"), to_myapp())
    assert isinstance(d, LocalReply) and (d.status, d.flags) == (404, "NR")


def test_a_destination_that_is_not_a_service_is_503_nc() -> None:
    t = table_of(three_services() + [vs([{"route": [{"destination": {"host": "ghost"}}]}])])
    d = decide(t, req("/"), to_myapp())
    assert isinstance(d, LocalReply) and (d.status, d.flags) == (503, "NC")
