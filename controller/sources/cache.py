"""The last good version of every object, and why newer versions were rejected.

Both sources feed updates through this cache. When an update fails validation, the previous good
version stays in force (so a typo in a VirtualService does not tear down routing that worked), and
the error is kept until the object is fixed or deleted. An object whose first version is invalid
has no good version: it is simply absent from snapshots, with its error visible.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any

from controller.kinds import spec_of
from controller.validation import FieldError, Validated, validate_object, without_nulls

Obj = dict[str, Any]
CacheKey = tuple[str, str, str, str]   # (group, kind, namespace, name)


def cache_key(obj: Obj) -> CacheKey:
    api_version = obj.get("apiVersion") or ""
    group = api_version.rsplit("/", 1)[0] if "/" in api_version else ""
    md = obj.get("metadata") or {}
    spec = spec_of(obj)
    ns = "" if spec is not None and not spec.namespaced else (md.get("namespace") or "default")
    return (group, obj.get("kind", ""), ns, md.get("name", ""))


class LastGoodCache:
    def __init__(self, validate: Callable[[Obj], list[FieldError]] = validate_object):
        self._validate = validate
        self._lock = threading.Lock()
        self._good: dict[CacheKey, Obj] = {}
        self._errors: dict[CacheKey, list[FieldError]] = {}
        self.version = 0      # bumped whenever the good set changes

    def upsert(self, obj: Obj) -> list[FieldError]:
        """Take a new version of an object; returns its validation errors (empty when accepted)."""
        errors = self._validate(obj)
        with self._lock:
            self._take(cache_key(obj), obj, errors)
        return errors

    def _take(self, key: CacheKey, obj: Obj, errors: list[FieldError]) -> None:
        """Under the lock: `obj` (validated, with `errors`) as the newest version of `key`."""
        if errors:
            self._errors[key] = errors
            return
        self._errors.pop(key, None)
        obj = without_nulls(obj)    # what validation read: every consumer sees `field: null` unset
        if self._good.get(key) != obj:
            self._good[key] = obj
            self.version += 1

    def delete(self, key: CacheKey) -> None:
        with self._lock:
            self._drop(key)

    def _drop(self, key: CacheKey) -> None:
        self._errors.pop(key, None)
        if self._good.pop(key, None) is not None:
            self.version += 1

    def replace(self, objs: Iterable[Obj], owns: Callable[[CacheKey], bool]) -> None:
        """Make the cache hold exactly `objs` among the keys `owns` selects (a relist): objects
        that are gone from the source are dropped, even if they disappeared while we were not looking.
        Applied whole, under one lock: a reader never sees the deletions of a relist without its
        additions (an ALLOW policy replaced by a DENY one while the watch was down must never read
        as "neither": no ALLOW policy left admits everything)."""
        checked = [(cache_key(o), o, self._validate(o)) for o in objs]
        fresh = {key for key, _, _ in checked}
        with self._lock:
            for k in [k for k in set(self._good) | set(self._errors) if owns(k) and k not in fresh]:
                self._drop(k)
            for key, o, errors in checked:
                self._take(key, o, errors)

    def objects(self) -> list[Obj]:
        """The good objects. With the standard validation they come as a `Validated` snapshot, so
        the translation does not validate them again: the cache only ever replaces an object (a new
        dict per update), never edits one it has handed out."""
        with self._lock:
            good = [self._good[k] for k in sorted(self._good)]
        return Validated(good) if self._validate is validate_object else good

    def errors(self) -> list[FieldError]:
        with self._lock:
            return [e for k in sorted(self._errors) for e in self._errors[k]]

    def rejected(self) -> dict[CacheKey, list[FieldError]]:
        with self._lock:
            return dict(self._errors)

