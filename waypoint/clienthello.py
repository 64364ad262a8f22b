"""The server name (SNI) of a TLS ClientHello, read without terminating TLS, sans-IO.

An ingress listener in TLS passthrough mode routes a connection by the name the client asks for,
then relays its bytes untouched to a backend that terminates TLS itself; so the gateway peeks at
the first handshake message and never answers it. `parse(buffer)` is called with everything read so
far and says: more bytes needed, the hello (and its SNI, or None), or why the bytes are no
ClientHello (`HelloReader` says the same as bytes arrive, in time linear in them). It is pure
and bounded:

- records must be TLS handshake records (type 22, version 3.x, at most 2^14 bytes each, RFC 8446
  5.1); the hello may span several (a post-quantum key share makes it large), never interleaved
  with another content type;
- the hello's declared length is capped at `MAX_HELLO` (a longer one is refused, not buffered), and
  undecided bytes at `MAX_BUFFER` (a hello cut into tiny records), so a caller holds little;
- every length inside must fit its container exactly (session id, cipher suites, compression
  methods, extensions, the server_name list); a duplicated extension is malformed (RFC 8446 4.2);
- the name is a DNS host name (RFC 6066 3: `host_name`, ASCII, no trailing dot), returned
  lower-cased; an SNI extension without a host_name entry, or with two (RFC 6066 3: the gateway
  and the backend could each take another), is malformed.

The caller bounds the time it waits (waypoint/ingress_listen.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

HANDSHAKE = 22
CLIENT_HELLO = 1
SERVER_NAME = 0
MAX_RECORD = 1 << 14
MAX_HELLO = 1 << 15         # 32 KiB: far above real hellos (a few KiB), bounded
MAX_BUFFER = MAX_HELLO + 1024   # a hello cut into tiny records must not make the caller hold more
_LABEL = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?")


@dataclass(frozen=True)
class NeedMore:
    """Nothing decided yet: read more (within the caller's time bound)."""


@dataclass(frozen=True)
class Hello:
    server_name: str | None     # None: the client sent no SNI


@dataclass(frozen=True)
class Malformed:
    reason: str


Verdict = NeedMore | Hello | Malformed
NEED_MORE = NeedMore()


class _Bad(Exception):
    pass


def parse(buffer: bytes) -> Verdict:
    """What the bytes read so far are: see the module docstring."""
    return HelloReader().feed(buffer)


class HelloReader:
    """`parse`, fed as bytes arrive: each byte is examined once, however the hello is cut.

    Why not `parse(everything so far)` on each read: a client that cuts its hello into 1-byte
    records, one per TCP segment, made that re-walk every record for every segment, quadratic
    (seconds of CPU per connection within the hello timeout, enough for a few clients to starve the
    gateway). Here complete records are consumed as they complete; only an unfinished record's
    bytes (at most 5 + 2^14) are held besides the handshake bytes."""

    def __init__(self) -> None:
        self._pending = bytearray()     # the start of a record not complete yet
        self._hs = bytearray()          # handshake bytes of the complete records so far
        self._read = 0
        self._verdict: Verdict = NEED_MORE

    def feed(self, data: bytes) -> Verdict:
        """The verdict with `data` added to what was fed before (once decided, it stays)."""
        if self._verdict is not NEED_MORE:
            return self._verdict
        self._read += len(data)
        try:
            self._verdict = self._decide(data)
        except _Bad as e:
            self._verdict = Malformed(str(e))
        return self._verdict

    def _decide(self, data: bytes) -> Verdict:
        self._records(data)
        hs = self._hs
        if len(hs) < 4:
            return self._more()
        if hs[0] != CLIENT_HELLO:
            return Malformed(f"first handshake message is type {hs[0]}, not a ClientHello")
        length = int.from_bytes(hs[1:4], "big")
        if length > MAX_HELLO:
            return Malformed(f"ClientHello of {length} bytes is over the {MAX_HELLO} byte limit")
        if len(hs) < 4 + length:
            return self._more()
        return Hello(_server_name(bytes(hs[4:4 + length])))

    def _more(self) -> Verdict:
        return NEED_MORE if self._read <= MAX_BUFFER else Malformed(f"no complete ClientHello in {self._read} bytes")

    def _records(self, data: bytes) -> None:
        """Move the handshake bytes of the records `data` completes into `_hs`; stop at the end of
        the hello (what follows is not ours to read)."""
        buf = self._pending
        buf += data
        pos = 0
        while len(buf) - pos >= 5 and not self._complete():
            ctype, major, length = buf[pos], buf[pos + 1], int.from_bytes(buf[pos + 3:pos + 5], "big")
            if ctype != HANDSHAKE:
                raise _Bad(f"record type {ctype}, not a TLS handshake")
            if major != 3:
                raise _Bad(f"record version {major}.{buf[pos + 2]}, not TLS")
            if length == 0 or length > MAX_RECORD:
                raise _Bad(f"handshake record of {length} bytes")
            if len(buf) - pos - 5 < length:
                break
            self._hs += buf[pos + 5:pos + 5 + length]
            pos += 5 + length
        # the start of the next record, however short: its type is known as soon as its first byte
        # is (checked here, not when the next read adds to it, the verdict was NeedMore or Malformed
        # depending on where the client's reads were cut)
        if pos < len(buf) and not self._complete() and buf[pos] != HANDSHAKE:
            raise _Bad(f"record type {buf[pos]}, not a TLS handshake")
        if pos:
            del buf[:pos]

    def _complete(self) -> bool:
        hs = self._hs
        return len(hs) >= 4 and len(hs) >= 4 + int.from_bytes(hs[1:4], "big")


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise _Bad(f"ClientHello truncated in {what}")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def int(self, n: int, what: str) -> int:
        return int.from_bytes(self.take(n, what), "big")

    def vector(self, n: int, what: str) -> bytes:
        return self.take(self.int(n, what), what)

    @property
    def left(self) -> int:
        return len(self.data) - self.pos


def _server_name(body: bytes) -> str | None:
    r = _Reader(body)
    r.take(2 + 32, "version and random")
    if len(r.vector(1, "session id")) > 32:
        raise _Bad("session id longer than 32 bytes")
    suites = r.vector(2, "cipher suites")
    if not suites or len(suites) % 2:
        raise _Bad("cipher suites list is empty or odd")
    if not r.vector(1, "compression methods"):
        raise _Bad("no compression method")
    if r.left == 0:
        return None     # a hello without extensions (TLS 1.2 allows it): no SNI
    exts = _Reader(r.vector(2, "extensions"))
    if r.left:
        raise _Bad("bytes after the extensions")
    seen: set[int] = set()
    name = None
    while exts.left:
        etype, data = exts.int(2, "extension type"), exts.vector(2, "extension")
        if etype in seen:
            raise _Bad(f"extension {etype} appears twice")
        seen.add(etype)
        if etype == SERVER_NAME:
            name = _host_name(data)
    return name


def _host_name(data: bytes) -> str:
    r = _Reader(data)
    names = _Reader(r.vector(2, "server_name list"))
    if r.left:
        raise _Bad("bytes after the server_name list")
    host = None
    while names.left:
        kind, value = names.int(1, "server_name type"), names.vector(2, "server name")
        if kind == 0:
            if host is not None:    # RFC 6066 3: one name per type; which one a backend takes is its own
                raise _Bad("server_name extension with more than one host_name")
            host = value
    if host is None:
        raise _Bad("server_name extension without a host_name")
    try:
        text = host.decode("ascii").lower()
    except UnicodeDecodeError:
        raise _Bad("server name is not ASCII") from None
    # fullmatch: `$` (re.match) also matches before a final "\n", which let "a\n.example.com" through, a
    # name a `*.example.com` route took and the refusal log printed as two lines
    if not text or len(text) > 253 or not all(_LABEL.fullmatch(label) for label in text.split(".")):
        raise _Bad(f"server name {text[:64]!r} is not a DNS host name")
    return text
