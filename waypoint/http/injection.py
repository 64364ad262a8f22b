"""The codecs' last guard against header injection (pure but for its log).

A CR, LF or NUL inside a start line or a header field would end a line where an HTTP/1.1 peer reads
the rest as headers, or a second message, of whoever chose the text; an HTTP/2 peer must refuse
the field (RFC 9113 §8.2.1), and one that passes it on to HTTP/1.1 is the same hole one hop later.
Every source of header text is checked before it reaches a codec: the parsers (llhttp, nghttp2)
refuse them from clients and upstreams, the controller refuses them in configuration, the external
authorizers' and JWT outputs are checked, and certificate names are escaped. So the codecs only
test for them (in C: a few scans per head), and when one is found anyway (a bug), the head is
written without it, here: CR, LF and NUL in the start line or a pseudo-header percent-encoded
(only a request target or authority can hold text from elsewhere, and there `%0D` is what such a
byte has to be), the other fields holding one left out, and the event logged as the bug it is, at
most once a minute (a config or a bug that produces one produces it for every request), and
counted every time (`MENDED`, served as `ambit_waypoint_heads_mended_total{protocol}`: a log line
a minute says it happens, the counter says how often, and an alert on it needs no log pipeline).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable

log = logging.getLogger("waypoint.http")

BAD = re.compile(b"[\r\n\0]")
_BAD_TEXT = frozenset("\r\n\0")
_last_report = [0.0]
# heads mended since start, by protocol ("HTTP/1.1", "HTTP/2"): process-wide, as the log is
MENDED: dict[str, int] = {"HTTP/1.1": 0, "HTTP/2": 0}


def percent_encoded(b: bytes) -> bytes:
    """`b` with each CR, LF and NUL as `%0D`, `%0A`, `%00`."""
    return BAD.sub(lambda m: b"%%%02X" % m.group()[0], b)


def clean_text(name: str, value: str) -> bool:
    """Whether a (name, value) field of text holds no CR, LF or NUL."""
    return _BAD_TEXT.isdisjoint(name) and _BAD_TEXT.isdisjoint(value)


def report(what: str, names: Iterable[str | bytes]) -> None:
    """Count a mended head, and log it (at most once a minute), naming the fields left out."""
    MENDED[what] = MENDED.get(what, 0) + 1
    now = time.monotonic()
    if _last_report[0] and now - _last_report[0] < 60:
        return
    _last_report[0] = now
    shown = sorted({(n.decode("latin-1") if isinstance(n, bytes) else n)[:64] for n in names})
    log.error("an %s head with CR, LF or NUL in its start line or fields %s was about to be written; "
              "written without them (a bug: every source of header text is checked before)", what, shown)
