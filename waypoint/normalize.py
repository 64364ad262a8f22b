"""Path normalization before routing and authorization, as Istio's default (`BASE`) has Envoy do
it (`normalize_path: true`, no slash merging; istio.io docs/reference/config/security/normalization,
Envoy http_connection_manager `normalize_path`, implemented with Chromium's URL canonicalizer).

Without it `/api/../admin` would slip past a DENY on `/admin*`. The engine applies it once, to the
request head as it parses it (`request_path`), so routing, authorization, the access log and the
upstream all see the same path, as Envoy's connection manager rewrites `:path` before its filters
and its router run:
- percent-encoded unreserved characters are decoded (`%2E` → `.`, `%41` → `A`) and other
  escapes are upper-cased (`%2f` → `%2F`, which stays encoded: it is not a separator);
- backslashes become slashes, as the canonicalizer treats them for http(s) URLs;
- `.` and `..` segments are removed (RFC 3986 §5.2.4), never above the root;
- the query string is left as it is.

A `#fragment` in the request target is refused (`request_path` raises; the engine answers 400), as
Envoy does by default since 1.19.1/1.18.4/1.17.4/1.16.5 (`envoy.reloadable_features.
http_reject_path_with_fragment`): RFC 9112 §3.2 and RFC 9113 §8.3.1 leave no room for one, and an
origin that drops it would serve `/admin` for `/admin#x`, a path no rule named. (Istio's bootstrap
turns that flag off, so Istio's proxies strip the fragment instead; docs/security.md.)
"""

from __future__ import annotations

import re

_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
# a path that starts with "/" and has none of these is already normalized
_NEEDS_WORK = re.compile(r"^(?!/)|[%\\]|/\.").search
_SUSPECT = re.compile(r"[#%\\]|/\.").search      # ... and without a fragment: the common request
# A target that is plain, printable ASCII from "/" on, with no `#`, `%`, backslash, space or dot
# segment start ("/."), in any segment or the query: the common request. It is valid as an HTTP/2
# `:path` and is its own normalized form, so `plain_target` (one C match) stands for the whole
# check (`request_path`, and HTTP/2's `_valid_path`); anything else takes the full one.
plain_target = re.compile(r'(?:/(?!\.)[!"$&-.0-\[\]-~]*)+').fullmatch
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
    """The normalized `path` (path plus optional "?query"); see the module docstring. Idempotent."""
    if _NEEDS_WORK(path) is None:   # most paths: one regex scan in C
        return path
    only, sep, query = path.partition("?")
    if "%" in only:
        only = _ESCAPE.sub(_unescape, only)
    only = only.replace("\\", "/")
    if not only.startswith("/"):
        only = "/" + only
    if "/." in only:
        only = _remove_dot_segments(only)
    return only + sep + query


class FragmentInPath(ValueError):
    """The request target has a `#fragment` (refused: see the module docstring)."""


def request_path(target: str) -> str:
    """The path (and query) the engine routes, authorizes and forwards for a request target in
    origin form: normalized once. Raises `FragmentInPath` for a target with a `#`. Runs for every
    request: a target with no `%`, backslash, dot segment or `#` costs one regex scan."""
    if _SUSPECT(target) is None:
        return target
    if "#" in target:
        raise FragmentInPath("fragment in the request path")
    return target if target == "*" else normalize_path(target)
