"""Sizes for soak and statistical tests: bounded by default, full with AMBIT_SOAK=full.

CI runs every `soak`-marked test in its bounded form, so the suite stays inside its time budget and
the behaviour is still exercised at a scale that matters; `make soak` runs them at full size.
"""

from __future__ import annotations

import os


def is_full() -> bool:
    return os.environ.get("AMBIT_SOAK", "bounded") == "full"


def scale(*, bounded: int, full: int) -> int:
    """`bounded` normally, `full` under AMBIT_SOAK=full."""
    return full if is_full() else bounded
