"""A small schema language: one definition drives both the validator and the CRD OpenAPI schemas.

Why not jsonschema or pydantic: we need (a) Kubernetes *structural* OpenAPI v3 for the CRDs (no
$ref, `x-kubernetes-int-or-string`, maps as `additionalProperties`), (b) strict unknown-field
rejection that the CRD schema itself must not carry (structural schemas prune instead), (c) value
checks no schema dialect has (Go durations, regexes that must compile within the RE2 subset), and
(d) error messages in Kubernetes' "path: reason" style. Each node here knows how to `check` a value
and how to render itself as `openapi()`, so the two can never drift.

`check` appends `(path, reason)` pairs; it never raises, so one pass reports every problem.
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Errors = list[tuple[str, str]]
Check = Callable[[Any, str, Errors], None]


def show(value: Any) -> str:
    """Render a bad value for an error message: JSON, shortened."""
    try:
        s = json.dumps(value, sort_keys=True, default=str)
    except (TypeError, ValueError):  # pragma: no cover - values come from YAML/JSON
        s = repr(value)
    except RecursionError:          # a value nested deeper than json (or repr) can walk
        return f"<a {type(value).__name__} nested too deeply to show>"
    return s if len(s) <= 60 else s[:57] + "..."


def _did_you_mean(name: str, known: dict[str, Any]) -> str:
    """A near-miss field name (a typo, a wrong suffix) gets a suggestion: the close known names."""
    close = difflib.get_close_matches(name, list(known), n=2, cutoff=0.6)
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    if not key:                 # a field named "" (a map key in JSON can be): a path that shows it
        return f'{path}[""]'
    return f"{path}.{key}" if path else key


class Schema:
    """Base node. `description` goes into the CRD; `checks` are extra value checks."""

    description: str = ""

    def check(self, value: Any, path: str, errs: Errors) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def openapi(self) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def without_nulls(self, value: Any) -> Any:
        """`value` with every known field whose value is null dropped, as the API server prunes
        them: `check` reads `field: null` as unset, so the translation must see it unset too (it
        reads `.get(field, default)`, which a null defeats). The same object when nothing is
        null; a copy of only the parts that change otherwise."""
        return value

    def _doc(self, d: dict[str, Any]) -> dict[str, Any]:
        if self.description:
            d = {"description": self.description, **d}
        return d


@dataclass
class Str(Schema):
    enum: tuple[str, ...] = ()
    pattern: str = ""                      # for the CRD only (ECMA regex); `valid` does the checking
    valid: Callable[[str], str | None] | None = None   # returns a reason when the value is bad
    min_len: int = 0
    description: str = ""
    max_len: int = 0            # 0: no bound. The upstream CRD's maxLength, which Ambit's CRDs carry too

    def check(self, value: Any, path: str, errs: Errors) -> None:
        if not isinstance(value, str):
            errs.append((path, f"must be a string, got {show(value)}"))
            return
        if self.enum and value not in self.enum:
            errs.append((path, f"must be one of {', '.join(self.enum)}, got {show(value)}"))
            return
        if len(value) < self.min_len:
            errs.append((path, "must not be empty"))
            return
        if self.max_len and len(value) > self.max_len:
            errs.append((path, f"must be at most {self.max_len} characters, got {len(value)}"))
            return
        if self.valid is not None:
            reason = self.valid(value)
            if reason:
                errs.append((path, reason))

    def openapi(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": "string"}
        if self.enum:
            d["enum"] = list(self.enum)
        if self.pattern:
            d["pattern"] = self.pattern
        if self.min_len:
            d["minLength"] = self.min_len
        if self.max_len:
            d["maxLength"] = self.max_len
        return self._doc(d)


def _is_int(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, float) and math.isfinite(value) and value.is_integer()


@dataclass
class Int(Schema):
    minimum: int | None = None
    maximum: int | None = None
    description: str = ""

    def _range(self) -> str:
        if self.minimum is not None and self.maximum is not None:
            return f" {self.minimum}..{self.maximum}"
        if self.minimum is not None:
            return f" >= {self.minimum}"
        if self.maximum is not None:
            return f" <= {self.maximum}"
        return ""

    def check(self, value: Any, path: str, errs: Errors) -> None:
        if not _is_int(value) or (self.minimum is not None and value < self.minimum) or (
                self.maximum is not None and value > self.maximum):
            errs.append((path, f"must be an integer{self._range()}, got {show(value)}"))

    def openapi(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": "integer"}
        if self.minimum is not None:
            d["minimum"] = self.minimum
        if self.maximum is not None:
            d["maximum"] = self.maximum
        return self._doc(d)


@dataclass
class Num(Schema):
    minimum: float | None = None
    maximum: float | None = None
    description: str = ""

    def check(self, value: Any, path: str, errs: Errors) -> None:
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        if ok and self.minimum is not None and value < self.minimum:
            ok = False
        if ok and self.maximum is not None and value > self.maximum:
            ok = False
        if not ok:
            rng = f" {self.minimum:g}..{self.maximum:g}" if self.minimum is not None and self.maximum is not None else ""
            errs.append((path, f"must be a number{rng}, got {show(value)}"))

    def openapi(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": "number"}
        if self.minimum is not None:
            d["minimum"] = self.minimum
        if self.maximum is not None:
            d["maximum"] = self.maximum
        return self._doc(d)


@dataclass
class Bool(Schema):
    description: str = ""

    def check(self, value: Any, path: str, errs: Errors) -> None:
        if not isinstance(value, bool):
            errs.append((path, f"must be true or false, got {show(value)}"))

    def openapi(self) -> dict[str, Any]:
        return self._doc({"type": "boolean"})


@dataclass
class IntOrStr(Schema):
    """Kubernetes IntOrString (e.g. a Service targetPort: 8080 or "http")."""

    int_schema: Int = field(default_factory=Int)
    str_schema: Str = field(default_factory=Str)
    description: str = ""

    def check(self, value: Any, path: str, errs: Errors) -> None:
        if isinstance(value, str):
            self.str_schema.check(value, path, errs)
        elif _is_int(value):
            self.int_schema.check(value, path, errs)
        else:
            errs.append((path, f"must be an integer or a string, got {show(value)}"))

    def openapi(self) -> dict[str, Any]:
        return self._doc({"x-kubernetes-int-or-string": True})


@dataclass
class Arr(Schema):
    items: Schema
    min_items: int = 0
    description: str = ""
    max_items: int = 0          # 0: no bound

    def check(self, value: Any, path: str, errs: Errors) -> None:
        if not isinstance(value, list):
            errs.append((path, f"must be a list, got {show(value)}"))
            return
        if len(value) < self.min_items:
            errs.append((path, f"must have at least {self.min_items} item(s)"))
        if self.max_items and len(value) > self.max_items:
            errs.append((path, f"must have at most {self.max_items} items, got {len(value)}"))
        for i, v in enumerate(value):
            self.items.check(v, join(path, i), errs)

    def without_nulls(self, value: Any) -> Any:
        if not isinstance(value, list):
            return value
        items = [self.items.without_nulls(v) for v in value]
        return value if all(a is b for a, b in zip(items, value, strict=True)) else items

    def openapi(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": "array", "items": self.items.openapi()}
        if self.min_items:
            d["minItems"] = self.min_items
        if self.max_items:
            d["maxItems"] = self.max_items
        return self._doc(d)


@dataclass
class Map(Schema):
    """A string-keyed map. YAML may give non-string keys (`8080:`), so `key` may accept those."""

    values: Schema
    key: Callable[[Any], str | None] | None = None   # returns a reason when the key is bad
    description: str = ""
    max_entries: int = 0        # 0: no bound (the upstream CRD's maxProperties)

    def check(self, value: Any, path: str, errs: Errors) -> None:
        if not isinstance(value, dict):
            errs.append((path, f"must be a map, got {show(value)}"))
            return
        if self.max_entries and len(value) > self.max_entries:
            errs.append((path, f"must have at most {self.max_entries} entries, got {len(value)}"))
        for k, v in value.items():
            sub = f"{path}[{k}]"        # Kubernetes' notation for map keys: metadata.labels[app]
            if self.key is not None:
                reason = self.key(k)
                if reason:
                    errs.append((sub, reason))
                    continue
            elif not isinstance(k, str):
                errs.append((sub, f"map keys must be strings, got {show(k)}"))
                continue
            self.values.check(v, sub, errs)

    def without_nulls(self, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        out = {k: self.values.without_nulls(v) for k, v in value.items()}
        return value if all(out[k] is v for k, v in value.items()) else out

    def openapi(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": "object", "additionalProperties": self.values.openapi()}
        if self.max_entries:
            d["maxProperties"] = self.max_entries
        return self._doc(d)


@dataclass
class AnyValue(Schema):
    """Free-form content we pass through without interpreting (kept for fidelity)."""

    description: str = ""

    def check(self, value: Any, path: str, errs: Errors) -> None:
        return

    def openapi(self) -> dict[str, Any]:
        return self._doc({"x-kubernetes-preserve-unknown-fields": True})


@dataclass
class Obj(Schema):
    """An object with known fields.

    `open=True` tolerates unknown fields (core Kubernetes kinds, where we only read a few);
    otherwise an unknown field is an error, as with Istio's strict validation.
    `one_of` lists groups of fields of which at most one may be set; `exactly_one` requires one.
    `checks` run after the fields passed, for cross-field rules.
    `unsupported` names upstream fields Ambit knows and refuses, each with the reason shown to the
    user ("... is not supported by Ambit ...") instead of a bare "unknown field". The CRD keeps them
    (preserving their content) so that the API server does not prune them silently and the
    controller can refuse them by name.
    """

    fields: dict[str, Schema]
    required: tuple[str, ...] = ()
    open: bool = False
    one_of: tuple[tuple[str, ...], ...] = ()
    exactly_one: bool = False
    checks: tuple[Check, ...] = ()
    description: str = ""
    unsupported: dict[str, str] = field(default_factory=dict)

    def check(self, value: Any, path: str, errs: Errors) -> None:
        if not isinstance(value, dict):
            errs.append((path, f"must be an object, got {show(value)}"))
            return
        before = len(errs)
        for name in self.required:
            if value.get(name) is None:
                errs.append((join(path, name), "required field is missing"))
        for k, v in value.items():
            if not isinstance(k, str):
                errs.append((f"{path}[{k}]", f"field names must be strings, got {show(k)}"))
                continue
            sub = self.fields.get(k)
            if sub is None and k in self.unsupported:
                errs.append((join(path, k), self.unsupported[k]))
                continue
            if sub is None:
                if not self.open:
                    errs.append((join(path, k), "unknown field" + _did_you_mean(k, self.fields)))
                continue
            if v is None:       # YAML `field:` with nothing: treated as unset, like Kubernetes
                continue
            sub.check(v, join(path, k), errs)
        for group in self.one_of:
            present = [g for g in group if value.get(g) is not None]
            if len(present) > 1:
                errs.append((path, f"only one of {', '.join(group)} may be set, got {', '.join(present)}"))
            elif not present and self.exactly_one:
                errs.append((path, f"one of {', '.join(group)} must be set"))
        if len(errs) == before:
            for c in self.checks:
                c(value, path, errs)

    def without_nulls(self, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        out = {}
        for k, v in value.items():
            sub = self.fields.get(k) if isinstance(k, str) else None
            if sub is None:
                out[k] = v
            elif v is not None:
                out[k] = sub.without_nulls(v)
        return value if len(out) == len(value) and all(out[k] is v for k, v in value.items()) else out

    def openapi(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": "object"}
        props = {k: v.openapi() for k, v in self.fields.items()}
        props.update({k: {"description": reason, "x-kubernetes-preserve-unknown-fields": True}
                      for k, reason in self.unsupported.items() if k not in self.fields})
        if props:
            d["properties"] = dict(sorted(props.items()))
        if self.required:
            d["required"] = list(self.required)
        if self.open:
            d["x-kubernetes-preserve-unknown-fields"] = True
        return self._doc(d)

    def extend(self, fields: dict[str, Schema] | None = None, **kw: Any) -> Obj:
        """A copy with more fields (and other attributes replaced)."""
        d = dict(self.fields)
        d.update(fields or {})
        args = {"fields": d, "required": self.required, "open": self.open, "one_of": self.one_of,
                "exactly_one": self.exactly_one, "checks": self.checks, "description": self.description,
                "unsupported": self.unsupported}
        args.update(kw)
        return Obj(**args)


