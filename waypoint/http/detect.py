"""Which protocol a tunnel speaks, from its first bytes (sans-IO).

- The HTTP/2 connection preface (RFC 9113 §3.4: `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`) means h2c with
  prior knowledge, the only cleartext HTTP/2 a mesh client sends (gRPC included).
- A request line `METHOD SP target SP HTTP/1.x CRLF` (RFC 9112 §3) means HTTP/1.
- Anything else means opaque TCP, decided as soon as the bytes can no longer become either, so a
  TLS ClientHello or a database handshake is relayed without waiting. A client that sends nothing
  (server-first protocols: SMTP, MySQL) is relayed when the caller's timer fires (`timeout()`).

The detector only reads; the caller replays the bytes it fed to whichever protocol wins.
"""

from __future__ import annotations

from enum import Enum

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MAX_REQUEST_LINE = 8192     # a longer first line is not worth waiting for: relay it opaque
_TCHAR = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_VERSION = b"HTTP/1."


class Verdict(Enum):
    HTTP1 = "http1"
    HTTP2 = "h2"
    OPAQUE = "opaque"


def _request_line_prefix(line: bytes) -> bool:
    """True if `line` (no CR/LF) is a request line, or could still become one with more bytes."""
    sp1 = line.find(b" ")
    method = line if sp1 < 0 else line[:sp1]
    if not all(c in _TCHAR for c in method) or (sp1 == 0):
        return False
    if sp1 < 0:
        return True
    rest = line[sp1 + 1:]
    sp2 = rest.find(b" ")
    target = rest if sp2 < 0 else rest[:sp2]
    if any(c <= 0x20 or c == 0x7F for c in target) or sp2 == 0:
        return False
    if sp2 < 0:
        return True
    version = rest[sp2 + 1:]
    if len(version) <= len(_VERSION):
        return _VERSION.startswith(version)
    return version.startswith(_VERSION) and len(version) == len(_VERSION) + 1 and version[-1:] in (b"0", b"1")


def classify(data: bytes) -> Verdict | None:
    """The verdict for a tunnel whose first bytes are `data`, or None if more bytes are needed."""
    if not data:
        return None
    n = min(len(data), len(PREFACE))
    if data[:n] == PREFACE[:n]:
        return Verdict.HTTP2 if n == len(PREFACE) else None
    eol = data.find(b"\n")
    if eol < 0:
        if len(data) > MAX_REQUEST_LINE:
            return Verdict.OPAQUE
        return None if _request_line_prefix(data) else Verdict.OPAQUE
    line = data[:eol].removesuffix(b"\r")
    return Verdict.HTTP1 if _request_line_prefix(line) and line.count(b" ") == 2 and \
        line.endswith((b"HTTP/1.0", b"HTTP/1.1")) else Verdict.OPAQUE


class Detector:
    """Accumulates a tunnel's first bytes until `classify` decides; `timeout()` decides for silence."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.verdict: Verdict | None = None

    def feed(self, data: bytes) -> Verdict | None:
        if self.verdict is None:
            self.buffer += data
            self.verdict = classify(bytes(self.buffer))
        return self.verdict

    def timeout(self) -> Verdict:
        """Nothing decisive arrived in time: relay as opaque TCP."""
        if self.verdict is None:
            self.verdict = Verdict.OPAQUE
        return self.verdict
