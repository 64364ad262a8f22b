"""What a py-spy profile shows, in one line for the summary (sans-IO).

`py-spy record --format raw` writes collapsed stacks ("frame;frame;...;leaf COUNT" per line; the
format flame-graph tools and speedscope read). The summary names where the samples end: the leaf
functions with the largest share of samples (self time), which is where to look first.
"""

from __future__ import annotations

import re
from collections import Counter

_FRAME = re.compile(r"^(?P<func>.+?) \((?P<file>[^():]+)(?::\d+)?\)$")


def _short(frame: str) -> str:
    """'read (/usr/lib/python3.11/ssl.py:1134)' -> 'ssl.py:read'."""
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    return f"{m.group('file').rsplit('/', 1)[-1]}:{m.group('func')}"


def self_time(folded: str) -> tuple[Counter[str], int]:
    """Samples per leaf function, and the total number of samples."""
    leaves: Counter[str] = Counter()
    total = 0
    for line in folded.splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        leaves[_short(stack.split(";")[-1])] += n
    return leaves, total


def top_frames(folded: str, n: int = 5) -> str:
    """'ssl.py:read 31%, relay.py:pump 12%, ...' or '' for an empty profile."""
    leaves, total = self_time(folded)
    if not total:
        return ""
    return ", ".join(f"{name} {count / total:.0%}" for name, count in leaves.most_common(n))
