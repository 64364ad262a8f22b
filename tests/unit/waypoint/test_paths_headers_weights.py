"""The small pure pieces, table-driven from their specifications."""

from __future__ import annotations

import random

import pytest

from ambit.model import StringMatch
from waypoint.normalize import normalize_path
from waypoint.request import HeaderOps
from waypoint.routing.headers import compose
from waypoint.routing.matchers import StringMatcher
from waypoint.routing.paths import replace_prefix
from waypoint.routing.weights import choose


# gateway-api apis/v1/httproute_types.go HTTPPathModifier.ReplacePrefixMatch, the whole table.
@pytest.mark.parametrize("path,prefix,replacement,want", [
    ("/foo/bar", "/foo", "/xyz", "/xyz/bar"),
    ("/foo/bar", "/foo", "/xyz/", "/xyz/bar"),
    ("/foo/bar", "/foo/", "/xyz", "/xyz/bar"),
    ("/foo/bar", "/foo/", "/xyz/", "/xyz/bar"),
    ("/foo", "/foo", "/xyz", "/xyz"),
    ("/foo/", "/foo", "/xyz", "/xyz/"),
    ("/foo/bar", "/foo", "", "/bar"),
    ("/foo/", "/foo", "", "/"),
    ("/foo", "/foo", "", "/"),
    ("/foo/", "/foo", "/", "/"),
    ("/foo", "/foo", "/", "/"),
    ("/foo/bar?x=1", "/foo", "/xyz", "/xyz/bar?x=1"),      # the query string stays
])
def test_gateway_api_replace_prefix_match(path: str, prefix: str, replacement: str, want: str) -> None:
    m = StringMatcher.compile(StringMatch("path_prefix", prefix))
    assert m.matches(path.split("?")[0])
    assert replace_prefix(path, m, replacement) == want


@pytest.mark.parametrize("value,path,hit", [
    ("/v2", "/v2", True), ("/v2", "/v2/", True), ("/v2", "/v2/x", True), ("/v2", "/v2example", False),
    ("/v2/", "/v2", True), ("/", "/anything", True), ("/", "/", True),
])
def test_gateway_api_path_prefix_is_segment_wise(value: str, path: str, hit: bool) -> None:
    assert StringMatcher.compile(StringMatch("path_prefix", value)).matches(path) is hit


@pytest.mark.parametrize("path,want", [
    ("/a/../b", "/b"), ("/api/../admin?x=/../", "/admin?x=/../"), ("/a/./b/", "/a/b/"),
    ("/a/%2E%2E/admin", "/admin"), ("/..", "/"), ("/a/b/..", "/a/"), ("/a%2fb", "/a%2Fb"),
    ("/%7euser", "/~user"), ("\\admin", "/admin"), ("/a//b", "/a//b"), ("/a/.hidden", "/a/.hidden"),
])
def test_path_normalization(path: str, want: str) -> None:
    assert normalize_path(path) == want
    assert normalize_path(want) == want          # idempotent


OPS = [HeaderOps(), HeaderOps(remove=("x",)), HeaderOps(set=(("x", "s1"),)), HeaderOps(add=(("x", "a1"),)),
       HeaderOps(set=(("y", "s2"),), add=(("x", "a2"),)), HeaderOps(remove=("y",), add=(("y", "a3"),)),
       HeaderOps(set=(("x", "s3"), ("y", "s4")), remove=("z",))]
START = [[], [("x", "0")], [("x", "0"), ("y", "1"), ("z", "2")], [("x", "0"), ("x", "00")]]


@pytest.mark.parametrize("first", OPS)
@pytest.mark.parametrize("then", OPS)
def test_compose_is_applying_one_after_the_other(first: HeaderOps, then: HeaderOps) -> None:
    """Equal per header name, values in order (the order across different names carries no meaning)."""
    def by_name(headers: list[tuple[str, str]]) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for k, v in headers:
            out.setdefault(k, []).append(v)
        return out
    for headers in START:
        assert by_name(compose(first, then).apply(list(headers))) == by_name(then.apply(first.apply(list(headers))))


def test_weighted_choice() -> None:
    rand = random.Random(3)
    assert choose(["a"], [0], rand) == "a"                 # one destination: always
    assert choose(["a", "b"], [0, 0], rand) is None         # several, all 0: nothing to choose
    assert {choose(["a", "b", "c"], [0, 5, 0], rand) for _ in range(200)} == {"b"}
