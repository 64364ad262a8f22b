"""Telemetry `accessLogging[].filter.expression`: the small, safe subset of CEL that Ambit evaluates.

Istio hands the expression to Envoy's CEL filter; Ambit parses it here (no `eval`), once, when the
config arrives, and refuses at `ambit apply` what is outside the subset, so a filter never fails
open or closed by surprise at request time. The subset:

    response.code >= 400 && request.method != "GET" || !(connection.mtls)

- attributes: `response.code` (int), `request.method`, `request.path` (strings),
  `connection.mtls` (bool);
- comparisons `== != < <= > >=` between an attribute and a literal of its type (strings and bools
  only `==`/`!=`); a bool attribute alone is a condition;
- `&&`, `||`, `!`, parentheses; integer, "string" and true/false literals.

An attribute the record does not have (a ztunnel connection has no `response.code`) makes its
comparison false, as a CEL evaluation error makes Envoy's filter not log.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

ATTRIBUTES: dict[str, type] = {"response.code": int, "request.method": str, "request.path": str,
                               "connection.mtls": bool}
_OPS = ("==", "!=", "<=", ">=", "<", ">")
_TOKEN = re.compile(r'\s*(?:(?P<num>\d+)|(?P<str>"[^"\\]*"|\'[^\'\\]*\')|(?P<op>&&|\|\||==|!=|<=|>=|<|>|!|\(|\))'
                    r'|(?P<id>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*))')

INT64_MAX = 2**63 - 1
MAX_DEPTH = 64      # nested `!` and parentheses: a parser in Python recursion, bounded well below its limit

Attrs = Mapping[str, Any]
Predicate = Callable[[Attrs], bool]


class FilterError(ValueError):
    """The expression is not in the supported subset; the message says where and why."""


def _tokens(expr: str) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    pos = 0
    while pos < len(expr):
        if expr[pos:].strip() == "":
            break
        m = _TOKEN.match(expr, pos)
        if m is None:
            raise FilterError(f"unexpected {expr[pos:].strip()[:20]!r} at position {pos}")
        pos = m.end()
        kind = m.lastgroup or ""
        text = m.group(kind)
        if kind == "num":
            if len(text) > 19 or int(text) > INT64_MAX:     # (int() of a 4,300-digit text raises ValueError)
                raise FilterError(f"integer {text[:20]}... out of range (CEL's int is 64-bit)")
            out.append(("lit", int(text)))
        elif kind == "str":
            out.append(("lit", text[1:-1]))
        elif kind == "id" and text in ("true", "false"):
            out.append(("lit", text == "true"))
        else:
            out.append((kind, text))
    return out


class _Parser:
    def __init__(self, expr: str) -> None:
        self.toks = _tokens(expr)
        self.i = 0
        self.depth = 0

    def peek(self) -> tuple[str, Any] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, op: str) -> bool:
        t = self.peek()
        if t is not None and t[0] == "op" and t[1] == op:
            self.i += 1
            return True
        return False

    def parse(self) -> Predicate:
        if not self.toks:
            raise FilterError("empty expression")
        p = self.or_()
        if self.peek() is not None:
            raise FilterError(f"unexpected {self.peek()[1]!r}")  # type: ignore[index]
        return p

    def or_(self) -> Predicate:
        parts = [self.and_()]
        while self.take("||"):
            parts.append(self.and_())
        return parts[0] if len(parts) == 1 else (lambda a: any(p(a) for p in parts))

    def and_(self) -> Predicate:
        parts = [self.unary()]
        while self.take("&&"):
            parts.append(self.unary())
        return parts[0] if len(parts) == 1 else (lambda a: all(p(a) for p in parts))

    def unary(self) -> Predicate:
        if self.take("!"):
            inner = self._nested(self.unary)
            return lambda a: not inner(a)
        if self.take("("):
            inner = self._nested(self.or_)
            if not self.take(")"):
                raise FilterError("missing ')'")
            return inner
        return self.comparison()

    def _nested(self, parse: Callable[[], Predicate]) -> Predicate:
        """`parse()` one level deeper: past MAX_DEPTH a FilterError, not Python's RecursionError
        (which escaped the validation and the proxies' config handling) nor a predicate too deep
        to evaluate."""
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise FilterError(f"nested deeper than {MAX_DEPTH} levels")
        try:
            return parse()
        finally:
            self.depth -= 1

    def operand(self) -> tuple[str, Any]:
        t = self.peek()
        if t is None:
            raise FilterError("expression ends where a value was expected")
        if t[0] == "id":
            if t[1] not in ATTRIBUTES:
                raise FilterError(f"attribute {t[1]!r} is not supported by Ambit's CEL subset "
                                  f"(supported: {', '.join(ATTRIBUTES)})")
        elif t[0] != "lit":
            raise FilterError(f"unexpected {t[1]!r} where a value was expected")
        self.i += 1
        return t

    def comparison(self) -> Predicate:
        left = self.operand()
        t = self.peek()
        if t is None or t[0] != "op" or t[1] not in _OPS:
            if left[0] == "id" and ATTRIBUTES[left[1]] is bool:
                name = left[1]
                return lambda a: a.get(name) is True
            raise FilterError(f"{left[1]!r} is not a condition: compare it (e.g. response.code >= 400)")
        self.i += 1
        right = self.operand()
        if (left[0] == "id") == (right[0] == "id"):
            raise FilterError(f"compare an attribute with a literal, got {left[1]!r} {t[1]} {right[1]!r}")
        op = t[1]
        if left[0] == "lit":     # 400 <= response.code  ->  response.code >= 400
            left, right = right, left
            op = {"<": ">", ">": "<", "<=": ">=", ">=": "<="}.get(op, op)
        name, value = left[1], right[1]
        want = ATTRIBUTES[name]
        if type(value) is not want:
            raise FilterError(f"{name} is {want.__name__}, compared with {value!r}")
        if want is not int and op not in ("==", "!="):
            raise FilterError(f"{name} can only be compared with == or !=")
        return _compare(name, op, value)


def _compare(name: str, op: str, value: Any) -> Predicate:
    def pred(a: Attrs) -> bool:
        v = a.get(name)
        if v is None:
            return False        # CEL: no such attribute is an error; Envoy's filter does not log
        return {"==": v == value, "!=": v != value, "<": v < value, "<=": v <= value,
                ">": v > value, ">=": v >= value}[op]
    return pred


def compile_filter(expr: str) -> Predicate:
    """A predicate over an attribute mapping, or FilterError naming what is not supported."""
    return _Parser(expr).parse()


Value = Callable[[Attrs], "str | None"]


def compile_value(expr: str) -> Value:
    """A Telemetry `metrics[].overrides[].tagOverrides[].value` (UPSERT): the label value it
    evaluates to, from the same subset. A literal ("'v1'", 42, true) or one attribute
    (`request.method`) gives its value as text; a condition (`response.code >= 500`) gives
    "true" or "false". None: the record has no such attribute (a CEL evaluation error, for
    which Istio's stats plugin reports "unknown")."""
    p = _Parser(expr)
    if len(p.toks) == 1:
        kind, v = p.operand()
        if kind == "lit":
            text = _text(v)
            return lambda a: text
        name = v
        return lambda a: None if a.get(name) is None else _text(a[name])
    pred = p.parse()
    return lambda a: "true" if pred(a) else "false"


def _text(v: Any) -> str:
    return ("true" if v else "false") if isinstance(v, bool) else str(v)


def _reason(compile_: Callable[[str], Any], expr: str) -> str:
    try:
        compile_(expr)
    except FilterError as e:
        return str(e)
    return ""


def check_value(expr: str) -> str:
    """"" when `expr` is a value expression Ambit evaluates (compile_value), else the reason."""
    return _reason(compile_value, expr)


def check_filter(expr: str) -> str:
    """"" when `expr` is in the subset, else the reason (for validation messages)."""
    return _reason(compile_filter, expr)
