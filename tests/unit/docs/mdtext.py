"""Plain-text helpers for the docs tests: sections of a Markdown file and the names in its code spans.

Why code spans: a field "mentioned" in prose as an English word (`port`, `name`, `hosts`) proves
nothing, but `ports[]{number, name}` in backticks is the document naming the field. The tests read
the files as text only (no subprocess, no Markdown library), so they stay fast.
"""

from __future__ import annotations

import re
from pathlib import Path

DOCS = Path(__file__).resolve().parents[3] / "docs"

_FENCE = re.compile(r"^```.*?^```", re.S | re.M)
_SPAN = re.compile(r"`([^`\n]+)`")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


def read(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def section(text: str, heading: str) -> str:
    """The body under the heading whose title is exactly `heading` (any level), up to the next heading
    of the same or a higher level. Fails loudly when the heading is missing: a renamed section must
    not make every check pass vacuously."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^(#+)\s+(.*?)\s*$", line)
        if m and m.group(2) == heading:
            level = len(m.group(1))
            body = []
            for nxt in lines[i + 1:]:
                n = re.match(r"^(#+)\s", nxt)
                if n and len(n.group(1)) <= level:
                    break
                body.append(nxt)
            return "\n".join(body)
    raise AssertionError(f"no heading {heading!r} in the document")


def code_names(text: str) -> set[str]:
    """Every identifier-like word inside inline code spans and fenced code blocks of `text`."""
    names: set[str] = set()
    for block in _FENCE.findall(text):
        names.update(_NAME.findall(block))
    for span in _SPAN.findall(_FENCE.sub("", text)):
        names.update(_NAME.findall(span))
    return names


def flags_in(text: str) -> set[str]:
    """Every `--flag` written anywhere in `text` (prose, tables, code), without the leading dashes."""
    return set(re.findall(r"(?<![\w-])--([a-z0-9][a-z0-9-]*)", text))
