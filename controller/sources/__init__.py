"""Where the controller's configuration comes from: the Kubernetes API or the lab store.

Both sources present the same thing: full snapshots (a list of Kubernetes-shaped objects, each the
last *good* version of that object), delivered to a callback whenever the good set changes, plus
the validation errors of rejected updates. The controller translates each snapshot with
`controller.translate.translate` and does not care which source produced it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Protocol

from controller.validation import FieldError

Snapshot = list[dict[str, Any]]
OnSnapshot = Callable[[Snapshot], None]


class Source(Protocol):
    def run(self, on_snapshot: OnSnapshot, stop: threading.Event) -> None:
        """Block until `stop` is set, calling `on_snapshot` (from one thread) with a full snapshot
        once the initial state is known and again after every change of the good objects."""

    def errors(self) -> list[FieldError]:
        """Validation errors of rejected objects; their last good version (if any) stays in force."""


# A source may also have `set_translation_errors(errors: list[FieldError])`: the controller passes
# each translation's errors (valid objects it could not apply) to it, so the Kubernetes source
# writes them into those objects' `Accepted` condition (controller.sources.kube).


__all__ = ["OnSnapshot", "Snapshot", "Source"]
