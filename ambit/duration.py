"""Go durations ("1.5s", "300ms", "1h30m"), as Istio's and Kubernetes' APIs write them.

In the shared core because the controller validates and translates them, and a waypoint reads
the few a route carries verbatim (a CORS `maxAge`), and both must read a value the same way.
"""

from __future__ import annotations

import re

GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
GO_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_go_duration(text: str) -> float:
    """Seconds. Raises ValueError for anything that is not a non-negative Go duration."""
    if text == "0":
        return 0.0
    pos, total = 0, 0.0
    if not text:
        raise ValueError("empty duration")
    while pos < len(text):
        m = GO_PART.match(text, pos)
        if not m:
            raise ValueError(text)
        total += float(m.group(1)) * GO_UNITS[m.group(2)]
        pos = m.end()
    return total
