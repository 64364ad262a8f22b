"""RE2 regular expressions, compiled one way for the whole project.

Istio and Envoy use RE2 (`safe_regex`): linear time, no backreferences or lookaround. The
controller validates user patterns with `compile_re2` and the waypoint compiles them with the same
function, so a pattern `ambit apply` accepts is exactly a pattern the waypoint can run, and a
pattern it refuses is refused with RE2's own reason. google-re2 does the work; nothing here parses
regexes.

google-re2 (its module and the RE2 and abseil libraries, ~1 MB resident) is imported at the first
pattern compiled: at a config update for route matches and rewrites, at the first request an
AuthorizationPolicy path template (`{*}`, `{**}`) is matched against (those compile on first use, as
before). A waypoint whose configuration has no regex never loads it (docs/performance.md, round 7).
"""

from __future__ import annotations

import functools
from types import ModuleType
from typing import Any


@functools.cache
def _re2() -> tuple[ModuleType, Any]:
    """google-re2 and the options every pattern is compiled with."""
    import re2

    options = re2.Options()
    options.log_errors = False      # RE2 would print every refused pattern to stderr
    return re2, options


class RegexError(ValueError):
    """A pattern RE2 refuses; the message is RE2's reason."""


# The largest compiled program accepted: Istio's `re2.max_program_size.error_level` for Envoy. RE2's
# own ceiling (its 8 MB max_mem) lets a 40-character pattern such as `.{1000}` repeated 20 times
# compile to 320,000 instructions, ~40 ms of CPU and ~5 MB each, in the controller (validation) and
# in every waypoint: a few hundred of them in one object would stall both.
MAX_PROGRAM_SIZE = 32768


@functools.lru_cache(maxsize=4096)
def compile_re2(pattern: str) -> Any:
    """The compiled RE2 pattern, or RegexError with RE2's reason. Cached: routes share patterns."""
    re2, options = _re2()
    try:
        compiled = re2.compile(pattern, options=options)
    except re2.error as e:
        reason = e.args[0] if e.args else str(e)
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise RegexError(str(reason)) from None
    if compiled.programsize > MAX_PROGRAM_SIZE:
        raise RegexError(f"pattern too large: its RE2 program size is {compiled.programsize}, the limit is "
                         f"{MAX_PROGRAM_SIZE} (Istio's re2.max_program_size); use smaller repetition counts")
    return compiled


def check_re2(pattern: str) -> str | None:
    """RE2's reason for refusing `pattern`, or None when it compiles."""
    try:
        compile_re2(pattern)
    except RegexError as e:
        return str(e)
    return None


def full_match(compiled: Any, value: str) -> bool:
    """Envoy's `safe_regex` semantics: the whole value must match, not a substring."""
    return compiled.fullmatch(value) is not None


def global_replace(compiled: Any, value: str, substitution: str) -> str:
    """RE2::GlobalReplace, which Envoy's `regex_rewrite` uses: every non-overlapping match is
    replaced; `\\0`..`\\9` insert capture groups and `\\\\` a backslash."""
    out, pos = [], 0
    for m in compiled.finditer(value):
        out.append(value[pos:m.start()])
        out.append(_expand(substitution, m))
        pos = m.end()
        if m.end() == m.start():          # an empty match: step over one character, as RE2 does
            if pos < len(value):
                out.append(value[pos])
            pos += 1
    out.append(value[pos:])
    return "".join(out)


def _expand(template: str, m: Any) -> str:
    out, i = [], 0
    while i < len(template):
        c = template[i]
        if c == "\\" and i + 1 < len(template):
            n = template[i + 1]
            if n.isdigit():
                out.append(m.group(int(n)) or "")
                i += 2
                continue
            if n == "\\":
                out.append("\\")
                i += 2
                continue
        out.append(c)
        i += 1
    return "".join(out)
