"""Ambit's build version and the version-skew policy between its parts (CLI, controller, proxies).

Policy (docs/cli.md "ambit version"), like Istio's supported skew: parts of the same minor release
are compatible; one minor release apart works but is a warning (upgrade the older part); more
than one minor apart, or a different major, is incompatible. A missing or unparsable version is
"unknown", never silently compatible.
"""

from __future__ import annotations

import re

COMPATIBLE, WARN, INCOMPATIBLE, UNKNOWN = "compatible", "warn", "incompatible", "unknown"

# The one place the version is written: pyproject.toml reads it from here (setuptools' dynamic
# `attr`), so the installed metadata says the same. Read as a constant, not through
# `importlib.metadata` at run time: that import (with the email and csv modules it pulls
# in) was 0.2-0.3 MB of a proxy's RSS (docs/performance.md §75).
VERSION = "0.1.0"


def parse(version: str) -> tuple[int, int, int] | None:
    m = re.match(r"^v?(\d+)\.(\d+)(?:\.(\d+))?", version or "")
    return (int(m[1]), int(m[2]), int(m[3] or 0)) if m else None


def compatibility(a: str, b: str) -> tuple[str, str]:
    """(verdict, why) for two parts at versions `a` and `b`."""
    pa, pb = parse(a), parse(b)
    if pa is None or pb is None:
        return UNKNOWN, f"cannot compare {a or '(none)'!r} with {b or '(none)'!r}"
    if pa[0] != pb[0]:
        return INCOMPATIBLE, f"major versions differ ({a} vs {b})"
    skew = abs(pa[1] - pb[1])
    if skew == 0:
        return COMPATIBLE, f"same minor release ({pa[0]}.{pa[1]})"
    if skew == 1:
        return WARN, f"one minor release apart ({a} vs {b}); upgrade the older part"
    return INCOMPATIBLE, f"{skew} minor releases apart ({a} vs {b}); at most one is supported"
