"""The fault-injection core (waypoint.resilience.fault), driven with a scripted random source:
Envoy's draws (`random % 1e6 < numerator`), delay first then an independent abort draw, Istio's
percent → per-million translation, gRPC status names, and the response-flag order."""

from __future__ import annotations

import random

import pytest

from ambit.model import Fault, HttpRoute
from waypoint.resilience.fault import (
    ABORT_BODY,
    GRPC_CODES,
    MILLION,
    FaultPolicy,
    compile_fault,
    draw,
    grpc_code,
    merge_flags,
    per_million,
)
from waypoint.resilience.policy import compile_policy


class Script(random.Random):
    """A random source that returns scripted `randrange` values (and counts the draws)."""

    def __init__(self, *values: int) -> None:
        super().__init__(0)
        self.values = list(values)
        self.draws = 0

    def randrange(self, *a: int, **kw: int) -> int:  # type: ignore[override]
        self.draws += 1
        return self.values.pop(0)


def test_percent_to_per_million_as_istio_truncates() -> None:
    assert per_million(50) == 500_000
    assert per_million(0.0001) == 1
    assert per_million(0.00009) == 0          # below Istio's resolution: never
    assert per_million(100) == MILLION
    assert per_million(250) == MILLION        # clamped: Envoy treats numerator > denominator as 100 %
    assert per_million(0) == 0 and per_million(-3) == 0


def test_draw_is_random_below_numerator() -> None:
    assert draw(500_000, Script(499_999)) is True
    assert draw(500_000, Script(500_000)) is False
    rng = Script()
    assert draw(MILLION, rng) is True and rng.draws == 0      # 100 %: no draw needed
    assert draw(0, rng) is False and rng.draws == 0


def test_delay_then_abort_are_independent_draws() -> None:
    f = FaultPolicy(delay=0.3, delay_per_million=500_000, abort_status=503, abort_per_million=500_000)
    rng = Script(10, 999_999)           # delay drawn in, abort drawn out
    assert f.delay_for(rng) == 0.3
    assert f.abort_for(rng) is None
    rng = Script(700_000, 1)            # no delay, abort
    assert f.delay_for(rng) == 0.0
    r = f.abort_for(rng, route="VirtualService/default/myapp#0")
    assert r is not None and (r.status, r.body, r.flags, r.reason, r.route) == \
        (503, ABORT_BODY, "FI", "fault_filter_abort", "VirtualService/default/myapp#0")
    assert r.grpc_status is None        # mapped per request by the exchange (503 → UNAVAILABLE)


def test_grpc_abort_answers_200_with_the_grpc_status() -> None:
    f = compile_fault(Fault(abort_grpc_status="UNAVAILABLE", abort_percent=100))
    assert f is not None
    r = f.abort_for(Script())
    assert r is not None and r.status == 200 and r.grpc_status == 14 and r.flags == "FI"


def test_grpc_names_map_to_codes() -> None:
    assert grpc_code("UNAVAILABLE") == 14 and grpc_code("unavailable") == 14
    assert grpc_code("DEADLINE_EXCEEDED") == 4 and grpc_code("14") == 14
    assert grpc_code("NOT_A_CODE") is None and grpc_code("99") is None
    assert grpc_code("\xb2") is None and grpc_code("1\xb3") is None     # isdigit() is True for these; int() raises
    assert len(GRPC_CODES) == 17


@pytest.mark.parametrize("fault, expect", [
    (None, None),
    (Fault(), None),                                                         # nothing set
    (Fault(delay=0.5, delay_percent=0), None),                               # 0 %: never
    (Fault(abort_status=503, abort_percent=0), None),
    (Fault(abort_status=42, abort_percent=100), None),                       # outside 200..599
    (Fault(abort_grpc_status="BOGUS", abort_percent=100), None),             # unknown name
    (Fault(delay=0.5, delay_percent=10), FaultPolicy(0.5, 100_000)),
    (Fault(abort_status=503, abort_percent=50), FaultPolicy(0.0, 0, 503, None, 500_000)),
    (Fault(abort_status=500, abort_grpc_status="UNAVAILABLE", abort_percent=1),  # httpStatus wins
     FaultPolicy(0.0, 0, 500, None, 10_000)),
    (Fault(abort_grpc_status="UNAVAILABLE", abort_percent=100), FaultPolicy(0.0, 0, 0, 14, MILLION)),
])
def test_compile_fault(fault: Fault | None, expect: FaultPolicy | None) -> None:
    assert compile_fault(fault) == expect


def test_compile_policy_carries_the_fault() -> None:
    pol = compile_policy(HttpRoute(fault=Fault(delay=0.3, delay_percent=100)))
    assert pol.fault == FaultPolicy(0.3, MILLION)
    assert compile_policy(HttpRoute()).fault is None


def test_fifty_percent_lands_within_a_binomial_bound() -> None:
    f = FaultPolicy(abort_status=503, abort_per_million=500_000)
    rng = random.Random(12)
    n = 20_000
    hits = sum(f.abort_for(rng) is not None for _ in range(n))
    assert abs(hits - n / 2) < 3.3 * (n * 0.25) ** 0.5          # 99.9 % two-sided


@pytest.mark.parametrize("first, rest, out", [
    ("", "", ""), ("DI", "", "DI"), ("", "FI", "FI"), ("DI", "FI", "DI,FI"), ("DI", "DC", "DI,DC"),
    ("DI", "UF", "DI,UF"), ("DI", "DI", "DI"),
])
def test_flags_join_in_the_order_set(first: str, rest: str, out: str) -> None:
    assert merge_flags(first, rest) == out
