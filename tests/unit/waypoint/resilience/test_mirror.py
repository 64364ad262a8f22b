"""The mirroring core (waypoint.resilience.mirror) with a scripted random source: one draw per
request compared with every mirror's fraction (Envoy's stable random), Istio's percentages, and
the admission gate that drops shadows over the bound."""

from __future__ import annotations

import random

from ambit.model import HttpRoute, Mirror, RouteDestination
from tests.unit.waypoint.resilience.test_fault import Script
from waypoint.resilience.fault import MILLION
from waypoint.resilience.mirror import MirrorGate, MirrorPolicy, compile_mirrors, pick
from waypoint.resilience.policy import compile_policy


def dest(name: str, **kw: object) -> RouteDestination:
    return RouteDestination(host=f"{name}.default.svc.cluster.local", service=f"default/{name}", **kw)  # type: ignore[arg-type]


def test_compile_keeps_mirrors_that_can_fire() -> None:
    ms = compile_mirrors([
        Mirror(dest("shadow"), 100.0),
        Mirror(dest("half", subset="v2", port=8080), 50.0),
        Mirror(dest("never"), 0.0),                                       # explicit 0 disables (Istio)
        Mirror(RouteDestination(host="unknown.example.com"), 100.0),      # no Service: nowhere to go
    ])
    assert ms == (MirrorPolicy("default/shadow", "shadow.default.svc.cluster.local", 0, "", MILLION),
                  MirrorPolicy("default/half", "half.default.svc.cluster.local", 8080, "v2", 500_000))
    assert compile_policy(HttpRoute(mirrors=[Mirror(dest("shadow"))])).mirrors == ms[:1]


def test_one_draw_per_request_for_every_mirror() -> None:
    a = MirrorPolicy("default/a", "a", per_million=500_000)
    b = MirrorPolicy("default/b", "b", per_million=250_000)
    rng = Script(100_000, 400_000, 900_000)
    assert pick((a, b), rng) == [a, b]          # under both fractions
    assert pick((a, b), rng) == [a]             # under a's only
    assert pick((a, b), rng) == []
    assert rng.draws == 3                       # one each, however many mirrors
    full = MirrorPolicy("default/f", "f")
    rng = Script(999_999)
    assert pick((full,), rng) == [full] and pick((), rng) == []


def test_mirror_percentage_lands_within_a_binomial_bound() -> None:
    m = MirrorPolicy("default/a", "a", per_million=300_000)
    rng = random.Random(5)
    n = 20_000
    hits = sum(bool(pick((m,), rng)) for _ in range(n))
    assert abs(hits - 0.3 * n) < 3.3 * (n * 0.3 * 0.7) ** 0.5


def test_gate_bounds_shadows_in_flight_and_counts() -> None:
    g = MirrorGate(2)
    assert g.admit() and g.admit()
    assert not g.admit()                        # over the bound: dropped, not queued
    g.release("completed")
    assert g.admit()
    g.release("failed")
    g.release("cut")
    g.release("no_upstream")
    assert g.stats() == {"active": 0, "max_active": 2, "started": 3, "overflow": 1, "no_upstream": 1,
                         "completed": 1, "failed": 1, "cut": 1}
    assert not MirrorGate(0).admit()            # 0: mirroring off


def test_gate_counters_export_as_prometheus_metrics() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from waypoint.telemetry.mirrors import MirrorCollector

    class E:
        mirrors = MirrorGate(1)
    e = E()
    e.mirrors.admit()
    e.mirrors.admit()           # overflow
    reg = CollectorRegistry()
    reg.register(MirrorCollector(lambda: e))
    text = generate_latest(reg).decode()
    assert 'ambit_waypoint_mirror_requests_total{result="overflow"} 1.0' in text
    assert "ambit_waypoint_mirror_active 1.0" in text
    reg2 = CollectorRegistry()
    reg2.register(MirrorCollector(lambda: None))
    assert "ambit_waypoint_mirror" not in generate_latest(reg2).decode()
