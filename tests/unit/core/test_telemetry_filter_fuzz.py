"""Fuzzing the access-log filter and tag-value expressions (ambit/telemetryfilter.py, Ambit's CEL
subset) with hypothesis. The expressions are configuration (a Telemetry resource), parsed once
when it arrives, in the controller's validation and in each proxy; the compiled predicates then
read each request's peer-controlled attributes (method, path, response code).

What must hold: parsing any text raises nothing but `FilterError` (so `check_filter` and
`check_value` always answer with a reason, never an exception), within 2 s; a compiled filter or
value never raises on any attributes, and gives a bool (a filter) or text or None (a value).
Three budgets, as tests/unit/dataplane/test_hbone_fuzz.py (no long-run mode: expressions are small).
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ambit.telemetryfilter import FilterError, check_filter, check_value, compile_filter, compile_value
from tests.support import fuzzing

UNIT_EXAMPLES = 400
LONG_EXAMPLES = fuzzing.fuzz_examples(3000)
PIECES = ["response.code", "request.method", "request.path", "connection.mtls", "request.other", "&&", "||", "!",
          "(", ")", "==", "!=", "<", "<=", ">", ">=", "400", "0", "99999999999999999999", '"GET"', "'x'", '"',
          "true", "false", " ", "\t", "\\", "@", "1.5", "-1", "a.b.c", "response.code>=500"]
expressions = st.one_of(st.lists(st.sampled_from(PIECES), max_size=14).map(" ".join), st.text(max_size=40))
attr_values = st.one_of(st.none(), st.integers(-(2**40), 2**40), st.text(max_size=10), st.booleans(), st.floats())
attrs = st.fixed_dictionaries({}, optional={"response.code": attr_values, "request.method": attr_values,
                                            "request.path": attr_values, "connection.mtls": attr_values})


def _typed(a: dict[str, Any]) -> dict[str, Any]:
    """The attributes as the proxies build them: each of its type, or absent."""
    types = {"response.code": int, "request.method": str, "request.path": str, "connection.mtls": bool}
    return {k: v for k, v in a.items() if type(v) is types[k]}


def check(expr: str, a: dict[str, Any]) -> None:
    t0 = time.process_time()
    assert isinstance(check_filter(expr), str) and isinstance(check_value(expr), str)
    try:
        pred = compile_filter(expr)
    except FilterError:
        pred = None
    try:
        value = compile_value(expr)
    except FilterError:
        value = None
    assert time.process_time() - t0 < 2.0, "parsing took over 2 s of CPU"
    if pred is not None:
        assert pred(_typed(a)) in (True, False)
    if value is not None:
        v = value(_typed(a))
        assert v is None or isinstance(v, str)


@given(expressions, attrs)
@fuzzing.unit_budget(UNIT_EXAMPLES, too_slow_ok=False)
def test_any_expression_parses_or_is_refused_and_evaluates_on_any_attributes(expr: str, a: dict[str, Any]) -> None:
    check(expr, a)


@given(st.sampled_from(["(", "!", "!("]), st.integers(1, 5000), st.sampled_from(["connection.mtls", ""]))
@fuzzing.unit_budget(40, too_slow_ok=False)
def test_deep_nesting(prefix: str, depth: int, core: str) -> None:
    check(prefix * depth + core + ")" * (depth if "(" in prefix else 0), {"connection.mtls": True})


@given(st.integers(1, 6000))
@fuzzing.unit_budget(20, too_slow_ok=False)
def test_long_number_literals(digits: int) -> None:
    check("response.code >= " + "9" * digits, {"response.code": 200})


@pytest.mark.fuzz
@given(expressions, attrs)
@fuzzing.fuzz_budget(LONG_EXAMPLES, health_checks=True)
def test_fuzz_expressions_long(expr: str, a: dict[str, Any]) -> None:
    check(expr, a)
