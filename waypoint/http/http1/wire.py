"""HTTP/1.1 bytes the engine writes itself: status lines and header blocks (parsing is httptools'),
plus the errors a parser callback raises to refuse a message, and the Transfer-Encoding rule."""

from __future__ import annotations

from http import HTTPStatus

from waypoint.http.injection import clean_text, percent_encoded, report
from waypoint.http.legs import Headers

REASONS = {s.value: s.phrase for s in HTTPStatus}


def reason_phrase(status: int) -> bytes:
    return REASONS.get(status, "Unknown").encode()


# Bytes buffered for one write before they are written at once (bulk bodies): without this, a loop
# that delivers many reads per iteration (uvloop) would buffer them all before backpressure acts.
FLUSH_NOW = 64 * 1024


class Refuse(Exception):
    """Raised from a parser callback: answer `status` and close (the server); the upstream sent
    something it must not, 502 `UPE` and close (the client; the status given is not used)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


_TOKEN = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz")   # RFC 9110 §5.6.2, lower-cased


def check_transfer_encoding(value: str) -> None:
    """A request's Transfer-Encoding (all its fields, joined with ", "): only exactly `chunked`
    is read, as Envoy's codec does. Anything else raises `Refuse`, from `on_headers_complete`, so
    before anything goes upstream (llhttp checks the coding only after that callback): 400 when
    the value is malformed or `chunked` is not the final coding, once (RFC 9112 §6.3: the body's
    length is unknowable); 501 for a coding the waypoint does not implement (RFC 9112 §6.1; `gzip,
    chunked` too: re-chunking it would drop the gzip coding)."""
    codings = [c.strip().lower() for c in value.split(",")]
    if codings == ["chunked"]:
        return
    names = [c.split(";", 1)[0].rstrip() for c in codings]
    if not all(n and _TOKEN.issuperset(n) for n in names):
        raise Refuse(400, "malformed transfer-encoding")
    if "chunked" in names and (names.count("chunked") > 1 or codings[-1] != "chunked"):
        raise Refuse(400, "transfer-encoding chunked must be the final coding, once, without parameters")
    raise Refuse(501, f"transfer-encoding {value[:64]!r} is not implemented")


def encode_head(first: bytes, headers: Headers) -> bytes:
    """`first` (a status or request line, ending in CRLF), the header lines and the blank line:
    encoded once. The lines are joined in C (`": ".join` mapped over the (name, value) pairs), with
    no Python bytecode per header (an f-string per header in a list comprehension was ~7).

    The last guard against header injection (waypoint/http/injection.py): a sound head has exactly
    one CR and one LF per line and no NUL, three scans in C; a head that fails them is `_mend`ed."""
    head = first + "\r\n".join(map(_LINE, headers)).encode("latin-1") + (b"\r\n\r\n" if headers else b"\r\n")
    n = len(headers) + 2
    if head.count(b"\n") == n and head.count(b"\r") == n and b"\0" not in head:
        return head
    return _mend(first, headers)


_LINE = ": ".join


def _mend(first: bytes, headers: Headers) -> bytes:
    """A head that would inject, written without it (waypoint/http/injection.py)."""
    kept = [(k, v) for k, v in headers if clean_text(k, v)]
    report("HTTP/1.1", [k for k, v in headers if not clean_text(k, v)])
    return encode_head(percent_encoded(first[:-2]) + b"\r\n", kept)
