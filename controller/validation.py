"""Validation of configuration objects: one object, or a whole batch that is applied all-or-nothing.

Errors name the object (`Kind/namespace/name`), the field path (`spec.http[0].route[0].weight`)
and the reason, so a user can fix a file without guessing. Schemas live in `controller.kinds`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from controller.kinds import BY_KIND, spec_for, spec_of, unsupported_kind
from controller.kinds.common import Labels, Name, NamespaceName
from controller.kinds.schema import Errors, Int, Map, Str, show
from controller.kinds.security import dry_run_problems

Obj = dict[str, Any]


# Longest ref, path and reason an error keeps: a valid ref is at most ~340 characters (kind, a
# 63-character namespace, a 253-character name); longer ones come from hostile values quoted back.
_REF_MAX, _PATH_MAX, _REASON_MAX = 400, 512, 2048


def printable(text: str, limit: int) -> str:
    """`text` safe to print in a log line, a terminal or a status condition: control and format
    characters (newlines, NUL, escape sequences, right-to-left overrides) escaped as `\\n`,
    `\\x00`, `\\u202e`, so a quoted value can neither forge another error line nor hide text, and
    at most `limit` characters, so a megabyte value does not make a megabyte message."""
    if not text.isprintable():
        text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
    return text if len(text) <= limit else text[:limit - 1] + "…"


@dataclass(frozen=True)
class FieldError:
    ref: str        # Kind/namespace/name (Kind/name for cluster-scoped kinds)
    path: str       # spec.http[0].match[0].uri.regex ("" for the object as a whole)
    reason: str

    def __post_init__(self) -> None:
        # Reasons quote the values they refuse: whatever the object holds is made printable and
        # bounded here, once, for every producer (validation, translation, advisories).
        for name, limit in (("ref", _REF_MAX), ("path", _PATH_MAX), ("reason", _REASON_MAX)):
            value = getattr(self, name)
            if isinstance(value, str):
                object.__setattr__(self, name, printable(value, limit))

    def __str__(self) -> str:
        return f"{self.ref}: {self.path}: {self.reason}" if self.path else f"{self.ref}: {self.reason}"


class ValidationError(ValueError):
    """Raised for a rejected object or batch; `errors` lists every problem found."""

    def __init__(self, errors: list[FieldError]):
        self.errors = list(errors)
        super().__init__("\n".join(str(e) for e in self.errors))


def reasons(errors: Sequence[FieldError]) -> str:
    """The errors of one object as one line, `path: reason; ...` (a status condition's message)."""
    return "; ".join(f"{e.path}: {e.reason}" if e.path else e.reason for e in errors)


def object_ref(obj: Any) -> str:
    """`Kind/namespace/name`, tolerant of malformed objects (used in messages about them)."""
    if not isinstance(obj, dict):
        return "<not an object>"
    kind = obj.get("kind") if isinstance(obj.get("kind"), str) else "<no kind>"
    md = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    name = md.get("name") if isinstance(md.get("name"), str) and md.get("name") else "<no name>"
    spec = spec_of(obj)
    if spec is not None and not spec.namespaced:
        return f"{kind}/{name}"
    ns = md.get("namespace") if isinstance(md.get("namespace"), str) and md.get("namespace") else "default"
    return f"{kind}/{ns}/{name}"


def object_key(obj: Obj) -> tuple[str, str, str]:
    """(kind, namespace, name) as the lab store keys objects; namespace "" when cluster-scoped."""
    md = obj.get("metadata") or {}
    spec = spec_of(obj)
    ns = "" if spec is not None and not spec.namespaced else (md.get("namespace") or "default")
    return (obj.get("kind", ""), ns, md.get("name", ""))


_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)")


def _check_timestamp(text: str) -> str | None:
    if not _TIMESTAMP.fullmatch(text):
        return f'must be an RFC 3339 time such as "2024-01-31T12:00:00Z", got {show(text)}'
    return None


# The metadata the translation reads: the API server sets these in a cluster, but the lab store and
# `ambit apply` take them as written, and a list where a string belongs would otherwise fail the
# whole translation (an unhashable uid, a creationTimestamp that does not sort with the others).
_METADATA_CHECKS: dict[str, Any] = {
    "labels": Labels, "annotations": Map(Str()), "uid": Str(), "resourceVersion": Str(),
    "generation": Int(minimum=0), "creationTimestamp": Str(valid=_check_timestamp),
    "deletionTimestamp": Str(valid=_check_timestamp),
}
_HEADER = ("apiVersion", "kind", "metadata")


def without_nulls(obj: Any) -> Any:
    """The object as validation reads it and translation must use it: known fields set to null
    (YAML `field:` with nothing) dropped, as the API server prunes them. The same object when it
    has none (or is of no known kind). Metadata fields the translation reads too: a Pod's `uid:`
    with nothing passed validation (null counts as unset) and reached the config stream as a null
    workload uid, which every ztunnel and waypoint refused (NACKed the Service's update)."""
    md = obj.get("metadata") if isinstance(obj, dict) else None
    if isinstance(md, dict) and any(md[k] is None for k in _METADATA_CHECKS if k in md):
        obj = {**obj, "metadata": {k: v for k, v in md.items() if v is not None or k not in _METADATA_CHECKS}}
    spec = spec_of(obj)
    if spec is None:
        return obj
    body = {k: v for k, v in obj.items() if k not in _HEADER}
    pruned = spec.body.without_nulls(body)
    if pruned is body:
        return obj
    return {**{k: obj[k] for k in _HEADER if k in obj}, **pruned}


def _missing_or_wrong(value: Any, what: str) -> str:
    """Absent (or empty) is "missing"; a value of another type says so, rather than "missing"."""
    return "required field is missing" if value is None or value == "" else f"must be {what}, got {show(value)}"


def validate_object(obj: Any) -> list[FieldError]:
    """Every problem with one object (empty when it is valid)."""
    return _checked(obj)[1]


def _checked(obj: Any) -> tuple[Any, list[FieldError]]:
    """(`without_nulls(obj)`, its problems): pruning walks the whole object, so it is done once
    for both validation and the caller that keeps the valid object."""
    ref = object_ref(obj)
    if not isinstance(obj, dict):
        return obj, [FieldError(ref, "", f"must be a Kubernetes object (a map), got {show(obj)}")]
    obj = without_nulls(obj)
    errs: Errors = []
    api_version, kind = obj.get("apiVersion"), obj.get("kind")
    spec = spec_for(api_version, kind)
    refused = unsupported_kind(api_version, kind)
    if refused is not None:
        return obj, [FieldError(ref, "kind", refused)]
    if not isinstance(kind, str) or not kind:
        errs.append(("kind", _missing_or_wrong(kind, "a string")))
    elif spec is None:
        errs.append(("kind", f'unknown kind "{kind}" (known: {", ".join(sorted(BY_KIND))})'))
    if not isinstance(api_version, str) or not api_version:
        errs.append(("apiVersion", _missing_or_wrong(api_version, "a string")))
    elif spec is not None and not spec.accepts(api_version):
        errs.append(("apiVersion", f'{kind} is not served as "{api_version}"; use one of {", ".join(spec.api_versions())}'))
    md = obj.get("metadata")
    if not isinstance(md, dict):
        errs.append(("metadata", _missing_or_wrong(md, "a map")))
    else:
        name = md.get("name")
        if not name:
            errs.append(("metadata.name", "required field is missing"))
        else:
            Name.check(name, "metadata.name", errs)
        if md.get("namespace") is not None:
            # A cluster-scoped kind has none (the API server clears it), but it is still a string:
            # translation sorts objects by namespace and name.
            (NamespaceName if spec is None or spec.namespaced else Str()).check(md["namespace"], "metadata.namespace",
                                                                               errs)
        for f, schema in _METADATA_CHECKS.items():
            if md.get(f) is not None:
                schema.check(md[f], f"metadata.{f}", errs)
        errs.extend(dry_run_problems(api_version, kind, md, obj.get("spec")))
    if spec is not None:
        body = {k: v for k, v in obj.items() if k not in _HEADER}
        spec.body.check(body, "", errs)
        if not errs:
            for check in spec.object_checks:       # istiod's rules on metadata and spec together
                check(obj, errs)
    return obj, [FieldError(ref, p, r) for p, r in errs]


class Validated(list[Obj]):
    """A snapshot whose every object passed `validate_object` and is in `without_nulls` form:
    what `controller.sources.cache.LastGoodCache` hands out. `split_valid` takes it as it is
    instead of validating 10,000 unchanged objects again on every snapshot (two thirds of a
    translation's time at that size). Validation reads nothing but the object, so this is exact
    as long as nobody edits the objects in place, which no consumer does (the cache replaces an
    object, never edits it); the list itself refuses edits, so nothing unvalidated joins it."""

    def _refuse(self, *_: Any, **__: Any) -> None:
        raise TypeError("a Validated snapshot is read-only: build a new list to change it")

    append = extend = insert = remove = pop = clear = sort = reverse = _refuse  # type: ignore[assignment]
    __setitem__ = __delitem__ = _refuse  # type: ignore[assignment]

    def __iadd__(self, _: Any) -> Validated:
        raise TypeError("a Validated snapshot is read-only: build a new list to change it")

    def __imul__(self, _: Any) -> Validated:
        raise TypeError("a Validated snapshot is read-only: build a new list to change it")


def split_valid(objs: Iterable[Any]) -> tuple[list[Obj], list[FieldError]]:
    """The valid objects as the translation must read them (`without_nulls`), and every error of
    the others: what the translation, the advisories and `ambit analyze` each start from. A
    `Validated` snapshot is known good already: it comes back as it is, with no errors."""
    if isinstance(objs, Validated):
        return list(objs), []
    good: list[Obj] = []
    errors: list[FieldError] = []
    for obj in objs:
        pruned, found = _checked(obj)
        if found:
            errors.extend(found)
        else:
            good.append(pruned)
    return good, errors


def validate(obj: Any) -> None:
    """Raise ValidationError if the object is invalid."""
    errors = validate_object(obj)
    if errors:
        raise ValidationError(errors)


def validate_all(objs: Iterable[Any]) -> None:
    """Validate a batch as a whole: raise with every error of every object, or return None.

    Callers apply the batch only when this returns, so nothing is ever half-applied. An object
    that appears twice in one batch is an error too: which copy should win would be a guess.
    """
    errors: list[FieldError] = []
    seen: dict[tuple[str, str, str], int] = {}
    for i, obj in enumerate(objs):
        found = validate_object(obj)
        errors.extend(found)
        if not found:
            key = object_key(obj)
            if key in seen:
                errors.append(FieldError(object_ref(obj), "",
                                         f"appears more than once in this batch (documents {seen[key] + 1} and {i + 1})"))
            else:
                seen[key] = i
    if errors:
        raise ValidationError(errors)
