"""The access-log filter's CEL subset (ambit.telemetryfilter): what it accepts, refuses, evaluates."""

from __future__ import annotations

import pytest

from ambit.telemetryfilter import MAX_DEPTH, FilterError, check_filter, check_value, compile_filter


@pytest.mark.parametrize(("expr", "attrs", "want"), [
    ("response.code >= 400", {"response.code": 404}, True),
    ("response.code >= 400", {"response.code": 200}, False),
    ("response.code == 503", {"response.code": 503}, True),
    ("400 <= response.code", {"response.code": 399}, False),
    ("response.code >= 500 || request.method == \"POST\"", {"response.code": 200, "request.method": "POST"}, True),
    ("response.code >= 400 && !(response.code == 404)", {"response.code": 404}, False),
    ("response.code >= 400 && !(response.code == 404)", {"response.code": 500}, True),
    ("!connection.mtls", {"connection.mtls": False}, True),
    ("connection.mtls == true && request.path != '/healthz'", {"connection.mtls": True, "request.path": "/x"}, True),
    ("response.code >= 400", {}, False),            # no response code (a ztunnel connection): not logged
    ("(response.code < 300 || response.code > 499)", {"response.code": 302}, False),
])
def test_evaluates(expr: str, attrs: dict[str, object], want: bool) -> None:
    assert compile_filter(expr)(attrs) is want


@pytest.mark.parametrize(("expr", "why"), [
    ("response.code >= 400 &&", "ends where a value was expected"),
    ("response.duration > 10", "attribute 'response.duration' is not supported"),
    ("request.method > \"GET\"", "only be compared with == or !="),
    ("response.code == \"500\"", "response.code is int"),
    ("response.code", "is not a condition"),
    ("(response.code > 1", "missing ')'"),
    ("__import__('os').system('x')", "unexpected"),
    ("__import__('os')", "attribute '__import__' is not supported"),
    ("response.code >= 400 ; 1", "unexpected '; 1'"),
    ("", "empty expression"),
])
def test_refuses_what_it_does_not_support(expr: str, why: str) -> None:
    with pytest.raises(FilterError) as e:
        compile_filter(expr)
    assert why in str(e.value)
    assert why in check_filter(expr)


def test_check_filter_accepts_the_subset() -> None:
    assert check_filter("response.code >= 400") == ""


@pytest.mark.parametrize("expr", ["(" * 2000 + "connection.mtls" + ")" * 2000, "!" * 5000 + "connection.mtls",
                                  "!(" * 1000 + "connection.mtls" + ")" * 1000])
def test_nesting_past_the_limit_is_refused_not_a_recursion_error(expr: str) -> None:
    """Regression (found by test_telemetry_filter_fuzz): nested `!` or parentheses raised
    RecursionError out of `check_filter` (the controller's validation) and `compile_filter` (each
    proxy's config handling). Past MAX_DEPTH the expression is refused with a reason; up to it,
    it is evaluated."""
    assert "nested deeper than" in check_filter(expr)
    assert "nested deeper than" in check_value(expr)
    ok = "(" * MAX_DEPTH + "connection.mtls" + ")" * MAX_DEPTH
    assert compile_filter(ok)({"connection.mtls": True}) is True


@pytest.mark.parametrize("digits", [20, 5000])
def test_an_integer_literal_beyond_64_bits_is_refused_with_a_reason(digits: int) -> None:
    """Regression (found by test_telemetry_filter_fuzz): a literal of over 4,300 digits made
    `int()` raise a plain ValueError, which `check_filter` (catching FilterError) let escape.
    CEL's int is 64-bit: a larger literal is refused, whatever its length."""
    expr = "response.code >= " + "9" * digits
    assert "out of range" in check_filter(expr)
    assert compile_filter(f"response.code <= {2**63 - 1}")({"response.code": 200}) is True
