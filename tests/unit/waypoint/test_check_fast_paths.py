"""The request checks' fast paths (docs/performance.md, round 20) never let through what the full
checks refuse, and never change what they return: a target `plain_target` accepts is a valid HTTP/2
`:path` that `request_path` leaves as it is, and a Host remembered as valid is one the full match
accepts, with the memory bounded whatever Hosts clients send. Random targets and hosts over the
characters that matter (`%`, `#`, `.`, `/`, backslash, space, controls, non-ASCII) are compared with
the full checks."""

from __future__ import annotations

import random

import pytest

from waypoint.http import headers
from waypoint.http.http2.server import _valid_path
from waypoint.normalize import FragmentInPath, plain_target, request_path

_ALPHABET = "/./..%2e%2F#?\\ \t\x7f\xe9aZ9-_~:@!$&'()*+,;=[]"


def _random_text(rng: random.Random, first: str = "") -> str:
    return first + "".join(rng.choice(_ALPHABET) for _ in range(rng.randint(0, 12)))


def test_a_plain_target_is_valid_and_already_normalized() -> None:
    rng = random.Random(20)
    seen_plain = seen_other = 0
    for _ in range(20000):
        t = _random_text(rng, rng.choice(("/", "", "*", "http://h")))
        if plain_target(t) is None:
            seen_other += 1
            continue
        seen_plain += 1
        assert _valid_path(t, "GET"), t
        assert request_path(t) == t, t
    assert seen_plain > 500 and seen_other > 500     # both sides were exercised


def test_targets_the_fast_path_leaves_take_the_full_checks() -> None:
    for t in ("/a#b", "/a/../b", "/%2e%2e/x", "/a\\b", "/a b", "/\xe9", "/.well-known", "/a?x=/..", "*"):
        assert plain_target(t) is None, t
    with pytest.raises(FragmentInPath):
        request_path("/x#y")
    assert request_path("/a/../b") == "/b"


def test_a_remembered_host_is_one_the_full_match_accepts_and_the_memory_is_bounded() -> None:
    rng = random.Random(7)
    headers.known_authorities.clear()
    for _ in range(20000):
        h = _random_text(rng, rng.choice(("a", "[::1]", "", "u@h", "h:")))
        assert headers.valid_authority(h) == (headers._AUTHORITY.fullmatch(h) is not None), h
        assert headers.valid_authority(h) == (headers._AUTHORITY.fullmatch(h) is not None), h   # (remembered)
        assert len(headers.known_authorities) <= headers._KNOWN_MAX
    assert all(headers._AUTHORITY.fullmatch(h) for h in headers.known_authorities)
    headers.known_authorities.clear()
    long = "a" * (headers._KNOWN_LEN + 1)
    assert headers.valid_authority(long) and long not in headers.known_authorities
    for i in range(headers._KNOWN_MAX * 3):
        headers.valid_authority(f"h{i}")
    assert len(headers.known_authorities) <= headers._KNOWN_MAX
