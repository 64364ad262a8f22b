"""Protocol detection per tunnel (waypoint/http/detect.py): h2c preface, an HTTP/1.x request line,
or opaque — decided as early as the bytes allow, never waiting forever."""

from __future__ import annotations

import pytest

from waypoint.http.detect import PREFACE, Detector, Verdict, classify


@pytest.mark.parametrize("data", [
    b"GET / HTTP/1.1\r\n", b"POST /api/v1?x=1 HTTP/1.0\r\nHost: a\r\n", b"PROPFIND /dav HTTP/1.1\r\n",
    b"OPTIONS * HTTP/1.1\r\n", b"GET http://a.example/ HTTP/1.1\n",
])
def test_request_lines_are_http1(data: bytes) -> None:
    assert classify(data) is Verdict.HTTP1


def test_preface_is_http2_only_when_complete() -> None:
    for n in range(1, len(PREFACE)):
        assert classify(PREFACE[:n]) is None, n      # "PRI * HTTP/2" is no HTTP/1 request line
    assert classify(PREFACE) is Verdict.HTTP2
    assert classify(PREFACE + b"\x00\x00\x12\x04") is Verdict.HTTP2


@pytest.mark.parametrize("data", [
    b"\x16\x03\x01\x02\x00\x01",            # TLS ClientHello: decided on the first byte
    b"SSH-2.0-OpenSSH_9.2\r\n",              # a line, but no HTTP version
    b"GET /\r\n",                            # HTTP/0.9: not served
    b"GET / HTTP/2.0\r\n",                   # HTTP/2 without the preface
    b"GET  / HTTP/1.1\r\n",                  # two spaces
    b"\x00\x00\x00\x08\x04\xd2\x16\x2f",     # a PostgreSQL SSLRequest
])
def test_anything_else_is_opaque(data: bytes) -> None:
    assert classify(data) is Verdict.OPAQUE


def test_partial_request_line_waits_then_decides() -> None:
    d = Detector()
    assert d.feed(b"GE") is None
    assert d.feed(b"T /pa") is None
    assert d.feed(b"th HTTP/1") is None
    assert d.feed(b".1\r\n") is Verdict.HTTP1
    assert bytes(d.buffer) == b"GET /path HTTP/1.1\r\n"     # kept for replay


def test_opaque_decided_before_a_newline() -> None:
    d = Detector()
    assert d.feed(b"GET /x HTTP/3") is Verdict.OPAQUE
    assert Detector().feed(b"\x16") is Verdict.OPAQUE


def test_silence_is_opaque_on_timeout() -> None:
    d = Detector()
    assert d.feed(b"") is None
    assert d.timeout() is Verdict.OPAQUE


def test_overlong_first_line_is_opaque() -> None:
    assert classify(b"GET /" + b"a" * 9000) is Verdict.OPAQUE
