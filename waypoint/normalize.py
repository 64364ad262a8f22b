"""Path normalization before routing and authorization, as Istio's default (`BASE`) has Envoy do
it (`normalize_path: true`, no slash merging; istio.io docs/reference/config/security/normalization,
Envoy http_connection_manager `normalize_path`, implemented with Chromium's URL canonicalizer).

Without it `/api/../admin` would slip past a DENY on `/admin*`. The engine applies it once to the
request head, so routing, authorization and the upstream all see the same path:
- percent-encoded unreserved characters are decoded (`%2E` → `.`, `%41` → `A`) and other
  escapes are upper-cased (`%2f` → `%2F`, which stays encoded: it is not a separator);
- backslashes become slashes, as the canonicalizer treats them for http(s) URLs;
- `.` and `..` segments are removed (RFC 3986 §5.2.4), never above the root;
- the query string is left as it is.
"""

from __future__ import annotations

import re

_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def _unescape(m: re.Match[str]) -> str:
    c = chr(int(m.group(1), 16))
    return c if c in _UNRESERVED else "%" + m.group(1).upper()


def _remove_dot_segments(path: str) -> str:
    out: list[str] = []
    segments = path.split("/")
    for i, seg in enumerate(segments[1:], 1):
        last = i == len(segments) - 1
        if seg == ".":
            if last:
                out.append("")
            continue
        if seg == "..":
            if out:
                out.pop()
            if last:
                out.append("")
            continue
        out.append(seg)
    return "/" + "/".join(out)


def normalize_path(path: str) -> str:
    """The normalized `path` (path plus optional "?query"); see the module docstring."""
    only, sep, query = path.partition("?")
    if "%" in only:
        only = _ESCAPE.sub(_unescape, only)
    only = only.replace("\\", "/")
    if not only.startswith("/"):
        only = "/" + only
    if "/." in only:
        only = _remove_dot_segments(only)
    return only + sep + query
