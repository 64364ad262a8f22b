"""The codecs' last guard against header injection (waypoint/http/injection.py): text holding CR,
LF or NUL that reaches a codec (every source is checked before; these tests hand it in past those
checks, as a bug would) is not written as a line break. Pure for the encoders, then on the wire:
the engine on loopback between curl and an origin that records the bytes it got."""

from __future__ import annotations

import logging
import subprocess

import httptools
import pytest

from ambit.model import HeaderRewrite
from tests.unit.waypoint.harness import Proxy, RawOrigin
from waypoint.http import injection
from waypoint.http.http1.wire import encode_head
from waypoint.http.http2.connection import encode_headers
from waypoint.request import Decision, Downstream, Forward, RequestHead
from waypoint.routing.headers import request_ops, response_ops

INJECTED = "v\r\nx-injected: 1"


def _parsed(head: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """(the target, the header fields) an HTTP/1.1 server reads from `head`."""
    got: dict[str, object] = {"url": b"", "headers": []}

    class P:
        def on_url(self, url: bytes) -> None:
            got["url"] = url

        def on_header(self, name: bytes, value: bytes) -> None:
            got["headers"].append((name.lower(), value))     # type: ignore[union-attr]
    httptools.HttpRequestParser(P()).feed_data(head)
    return got["url"], got["headers"]       # type: ignore[return-value]


@pytest.fixture(autouse=True)
def _log_every_time() -> None:
    injection._last_report[0] = 0.0


def test_a_sound_head_is_written_as_it_always_was() -> None:
    first, fields = b"GET /a?b=1 HTTP/1.1\r\n", [("host", "h.example"), ("x-tab", "a\tb"), ("x-team", "José")]
    assert encode_head(first, fields) == first + "host: h.example\r\nx-tab: a\tb\r\nx-team: José\r\n\r\n".encode("latin-1")
    assert encode_head(b"0\r\n", []) == b"0\r\n\r\n"
    assert encode_headers([(":status", "200")], fields) == [
        (b":status", b"200"), (b"x-tab", b"a\tb"), (b"x-team", "José".encode("latin-1"))]


@pytest.mark.parametrize("bad", [INJECTED, "v\nx-injected: 1", "v\rx-injected: 1", "v\0w"])
def test_an_http1_head_with_a_line_break_in_a_field_is_written_without_that_field(
        bad: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, "waypoint.http"):
        head = encode_head(b"GET /a HTTP/1.1\r\n", [("host", "h.example"), ("x-bad", bad), ("x-ok", "1"),
                                                    (f"x-name{bad}", "1")])
    assert head == b"GET /a HTTP/1.1\r\nhost: h.example\r\nx-ok: 1\r\n\r\n"
    assert [r for r in caplog.records if "x-bad" in r.getMessage()]


def test_an_http1_request_target_with_a_line_break_is_percent_encoded() -> None:
    head = encode_head(b"GET /a\r\nx-injected:1\r\nx:/ HTTP/1.1\r\n", [("host", "h")])
    assert head == b"GET /a%0D%0Ax-injected:1%0D%0Ax:/ HTTP/1.1\r\nhost: h\r\n\r\n"
    assert _parsed(head) == (b"/a%0D%0Ax-injected:1%0D%0Ax:/", [(b"host", b"h")])


def test_http2_fields_with_a_line_break_are_left_out_and_pseudo_headers_percent_encoded(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, "waypoint.http"):
        out = encode_headers([(":method", "GET"), (":path", "/a\r\nx-injected: 1"), (":authority", "h\n")],
                             [("x-bad", INJECTED), ("x-ok", "1")])
    assert out == [(b":method", b"GET"), (b":path", b"/a%0D%0Ax-injected: 1"), (b":authority", b"h%0A"),
                   (b"x-ok", b"1")]
    assert [r for r in caplog.records if "x-bad" in r.getMessage()]


def test_the_log_says_so_at_most_once_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, "waypoint.http"):
        for _ in range(100):
            encode_head(b"GET / HTTP/1.1\r\n", [("x-bad", INJECTED)])
    assert len(caplog.records) == 1


@pytest.mark.parametrize("version", ["--http1.1", "--http2-prior-knowledge"])
def test_on_the_wire_no_header_is_injected_upstream_or_downstream(version: str) -> None:
    """Route header operations past the controller's validation (which refuses these values), as a
    bug in any source of header text would hand them in: the origin gets one request without the
    injected header, the client one response without it."""
    origin = RawOrigin()
    ops = HeaderRewrite(request_set={"x-bad": INJECTED, "x-ok": "1"}, response_set={"x-bad": INJECTED, "x-ok": "2"})

    def decide(head: RequestHead, down: Downstream) -> Decision:
        return Forward(service="test/origin", port=origin.port, request_headers=request_ops(ops),
                       response_headers=response_ops(ops))

    proxy = Proxy(decide)
    try:
        r = subprocess.run(["curl", "-sS", version, "-m", "10", "-D", "-", "-o", "/dev/null",
                            f"http://127.0.0.1:{proxy.port}/a"], capture_output=True, timeout=20)
        assert r.returncode == 0, r.stderr
        got = r.stdout.lower()
        assert b" 200" in got.split(b"\r\n")[0] and b"x-ok: 2" in got and b"x-injected" not in got, got
        [(_, method, target, _)] = origin.wait_requests(1)
        raw = bytes(next(iter(origin.raw.values()))).lower()
        assert (method, target) == ("GET", "/a") and b"x-ok: 1\r\n" in raw and b"x-injected" not in raw, raw
    finally:
        proxy.close()
        origin.close()


def test_each_mended_head_is_counted_in_the_waypoints_metrics() -> None:
    """The log says it once a minute; the counter says how often, so an alert can fire on it
    (`ambit_waypoint_heads_mended_total`, 0 unless something is wrong)."""
    from prometheus_client import CollectorRegistry, generate_latest

    from tests.unit.waypoint.test_wiring import proxy
    from waypoint.app import WaypointProxy

    reg = CollectorRegistry()
    p = proxy()
    WaypointProxy(p.settings, p.config, None, registry=reg)

    def count(protocol: str) -> float:
        value = reg.get_sample_value("ambit_waypoint_heads_mended_total", {"protocol": protocol})
        assert value is not None, generate_latest(reg).decode()
        return value

    h1, h2 = count("HTTP/1.1"), count("HTTP/2")
    for _ in range(3):      # every time, not once a minute as the log
        encode_head(b"GET /a HTTP/1.1\r\n", [("host", "h.example"), ("x-bad", INJECTED)])
    encode_headers([(":status", "200")], [("x-bad", INJECTED)])
    encode_head(b"GET /a HTTP/1.1\r\n", [("host", "h.example")])        # a sound head counts nothing
    assert (count("HTTP/1.1") - h1, count("HTTP/2") - h2) == (3, 1)
