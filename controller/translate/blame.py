"""Naming the object a translator raised on.

A translator that raises on a valid object is a bug in Ambit, and the controller keeps the whole
previous config in force (a half-translated snapshot could drop a DENY policy). The error must
still name the object, so an operator can take it back and restore the flow: `blame(obj)` wraps
the work done for one object and turns any exception into `TranslationBug(ref)`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from controller.validation import object_ref


class TranslationBug(Exception):
    """A translator raised on a valid object. `ref` names the object (`Kind/namespace/name`)."""

    def __init__(self, ref: str, cause: Exception) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.ref = ref


@contextlib.contextmanager
def blame(obj: Any) -> Iterator[None]:
    """Re-raise what the body raises as a `TranslationBug` naming `obj` (an inner one is kept)."""
    try:
        yield
    except TranslationBug:
        raise
    except Exception as e:  # noqa: BLE001 - re-raised, with the object named
        raise TranslationBug(object_ref(obj), e) from e
