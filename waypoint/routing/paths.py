"""Path rewriting for `rewrite` and `redirect`, as Envoy does it for Istio and Gateway API.

- Prefix replacement after a VirtualService `prefix` match (Envoy `prefix_rewrite`): the matched
  string prefix of the whole `:path` is swapped, so the query string stays.
- Prefix replacement after a Gateway API `PathPrefix` match (ReplacePrefixMatch): whole segments,
  per the table in gateway-api apis/v1/httproute_types.go `HTTPPathModifier.ReplacePrefixMatch`
  (`/foo/bar` with prefix `/foo` and replacement `/xyz/` gives `/xyz/bar`; an empty result is `/`).
- After an exact or regex match the whole path is the matched part, so it is replaced entirely;
  with no path condition at all (a catch-all route) Envoy's implicit prefix is `/`.
- `uriRegexRewrite` is RE2 GlobalReplace over the path without the query (Envoy `regex_rewrite`).
"""

from __future__ import annotations

from typing import Any

from ambit.regex import global_replace
from waypoint.routing.matchers import StringMatcher


def split_query(path: str) -> tuple[str, str]:
    """("/a", "?x=1") from "/a?x=1"; the query part keeps its "?"."""
    i = path.find("?")
    return (path, "") if i < 0 else (path[:i], path[i:])


def replace_full(path: str, replacement: str) -> str:
    """Replace the path, keep the query string."""
    _, query = split_query(path)
    return replacement + query


def replace_prefix(path: str, matched: StringMatcher | None, replacement: str) -> str:
    """Swap the part of `path` that `matched` (the path condition that selected the route) covered."""
    only, query = split_query(path)
    if matched is None:
        return replacement + path[1:] if path.startswith("/") else replacement + path
    if matched.kind == "prefix":
        return replacement + path[len(matched.value):]
    if matched.kind == "path_prefix":
        rest = only[len(matched.value):]
        new = (replacement.rstrip("/") + rest) if rest.startswith("/") else replacement + rest
        return (new or "/") + query
    return replacement + query          # exact or regex: the whole path was matched


def regex_rewrite(path: str, compiled: Any, substitution: str) -> str:
    only, query = split_query(path)
    return global_replace(compiled, only, substitution) + query
