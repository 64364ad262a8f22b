"""HTTP/1.1 bytes the engine writes itself: status lines and header blocks (parsing is httptools'),
plus the errors a parser callback raises to refuse a request."""

from __future__ import annotations

from http import HTTPStatus

from waypoint.http.legs import Headers

REASONS = {s.value: s.phrase for s in HTTPStatus}


def reason_phrase(status: int) -> bytes:
    return REASONS.get(status, "Unknown").encode()


# Bytes buffered for one write before they are written at once (bulk bodies): without this, a loop
# that delivers many reads per iteration (uvloop) would buffer them all before backpressure acts.
FLUSH_NOW = 64 * 1024


class Refuse(Exception):
    """Raised from a parser callback: answer `status` and close."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def encode_head(first: bytes, headers: Headers) -> bytes:
    """`first` (a status or request line), the header lines and the blank line: encoded once.
    The lines are joined in C (`": ".join` mapped over the (name, value) pairs), with no Python
    bytecode per header (an f-string per header in a list comprehension was ~7)."""
    if not headers:
        return first + b"\r\n"
    return first + "\r\n".join(map(_LINE, headers)).encode("latin-1") + b"\r\n\r\n"


_LINE = ": ".join
