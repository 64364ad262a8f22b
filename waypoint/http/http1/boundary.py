"""Where, in bytes a client sent, the n-th request begins, as llhttp itself reads them.

`H1Server` parses only a few requests ahead of the one it is answering (pipelining), and stops its
parser on the next one. httptools can neither pause a parse nor say where in a read a message
ended, so to keep that request's bytes (and those after it) for later, the server asks this
module: a second parser, fed growing prefixes of the same bytes from the same message boundary,
counts the requests that begin in each, and a binary search finds the shortest prefix in which the
n-th begins. llhttp decides every boundary, so a body that looks like a request is never taken for
one (request smuggling); a parse that stops early (the n-th found) keeps each probe short.
"""

from __future__ import annotations

import httptools


class _Enough(Exception):
    """The probe saw the request it was looking for: stop parsing."""


class _Count:
    """A parser protocol that only counts message starts (no other callback: llhttp runs in C)."""

    __slots__ = ("n", "want")

    def __init__(self, want: int) -> None:
        self.n = 0
        self.want = want

    def on_message_begin(self) -> None:
        self.n += 1
        if self.n >= self.want:
            raise _Enough


def _begins(buf: memoryview, want: int) -> int:
    """How many requests begin in `buf` (read from a message boundary), counting up to `want`."""
    count = _Count(want)
    try:
        httptools.HttpRequestParser(count).feed_data(buf)
    except (httptools.HttpParserError, httptools.HttpParserUpgrade):
        pass    # `_Enough` (a callback error), or bytes the real parser never got past
    return count.n


def request_start(buf: bytes | bytearray | memoryview, n: int) -> int:
    """The offset in `buf` of the first byte of the n-th request (n >= 1) that begins in it, `buf`
    starting at a message boundary; -1 if fewer than n begin in it."""
    view = memoryview(buf)
    if n == 1:      # llhttp skips empty lines before a request line; anything else begins it
        at = len(buf) - len(bytes(view).lstrip(b"\r\n"))
        return at if at < len(buf) and _begins(view[:at + 1], 1) == 1 else -1
    lo, hi = 1, len(view)
    if _begins(view, n) < n:
        return -1
    while lo < hi:      # the shortest prefix in which n requests begin ends with the n-th's first byte
        mid = (lo + hi) // 2
        if _begins(view[:mid], n) >= n:
            hi = mid
        else:
            lo = mid + 1
    return lo - 1
