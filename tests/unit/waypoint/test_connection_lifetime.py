"""A DestinationRule's connection lifetime knobs through the real engine, on real sockets:
`tcp.maxConnectionDuration` (an old upstream connection is replaced, no request fails),
`http.http2KeepAlive` (PINGs on h2 upstreams; one left unanswered closes the connection) and
`http.maxConcurrentStreams` (streams per h2 upstream connection, below the server's own limit).

The h2 upstream is written with the `h2` library so that it can record what the waypoint does on
each connection (PINGs, streams at once) and, in `silent` mode, stop answering anything after its
SETTINGS, as a wedged peer or a half-dead NAT path does.
"""

from __future__ import annotations

import asyncio
import http.client
import random
import threading
import time
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest

from ambit.model import TrafficPolicy
from tests.unit.waypoint.harness import Origin, Proxy, serve_on_thread
from waypoint.http.settings import HttpSettings
from waypoint.request import Decision, Downstream, Forward, RequestHead
from waypoint.traffic.cluster import Cluster, ClusterKey

pytestmark = pytest.mark.timeout(60)


class _H2Conn(asyncio.Protocol):
    """One connection to an `H2Upstream`."""

    def __init__(self, up: H2Upstream) -> None:
        self.up = up
        self.stat: dict[str, Any] = {"open": 0, "max": 0, "streams": 0, "closed": False}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t: Any = transport
        self.c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
        if self.up.max_streams:
            self.c.local_settings = h2.settings.Settings(client=False, initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.up.max_streams})
        self.c.initiate_connection()
        self.t.write(self.c.data_to_send())
        self.up.conns.append(self.stat)
        self.paths: dict[int, str] = {}

    def data_received(self, data: bytes) -> None:
        for ev in self.c.receive_data(data):
            if isinstance(ev, h2.events.PingReceived):
                self.up.pings += 1
            elif isinstance(ev, h2.events.RequestReceived):
                self.paths[ev.stream_id] = dict(ev.headers)[":path"]
                self.stat["open"] += 1
                self.stat["streams"] += 1
                self.stat["max"] = max(self.stat["max"], self.stat["open"])
            elif isinstance(ev, h2.events.StreamEnded):
                path = self.paths.pop(ev.stream_id, "/")
                hold = float(path.split("=", 1)[1]) if path.startswith("/hold=") else 0.0
                asyncio.get_running_loop().call_later(hold, self._answer, ev.stream_id)
        if not self.up.silent:
            self.t.write(self.c.data_to_send())

    def _answer(self, sid: int) -> None:
        self.stat["open"] -= 1
        if self.up.silent or self.t.is_closing():
            return
        self.c.send_headers(sid, [(":status", "200"), ("content-length", "2")])
        self.c.send_data(sid, b"ok", end_stream=True)
        self.t.write(self.c.data_to_send())

    def connection_lost(self, exc: Exception | None) -> None:
        self.stat["closed"] = True


class H2Upstream:
    """An h2c origin on its own loop thread: `/hold=S` is answered after S seconds, anything else at
    once. It records the PINGs it gets and, per connection, the streams at once (`max`). `silent`:
    after its SETTINGS it sends nothing (no PING ACK, no response), yet keeps the connection open.
    `max_streams`: its SETTINGS_MAX_CONCURRENT_STREAMS (else the `h2` library's 100)."""

    def __init__(self, silent: bool = False, max_streams: int = 0) -> None:
        self.silent = silent
        self.max_streams = max_streams
        self.pings = 0
        self.conns: list[dict[str, Any]] = []
        self.loop, self.srv, self.port = serve_on_thread(lambda: _H2Conn(self))

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.srv.close)
        self.loop.call_soon_threadsafe(self.loop.stop)


def cluster(**policy: Any) -> Cluster:
    return Cluster(ClusterKey("t/app", 80), TrafficPolicy(**policy), time.monotonic, random.Random(1),
                   "app.t.svc.cluster.local")


def proxy_to(port: int, protocol: str, codec: str = "nghttp2", **policy: Any) -> Proxy:
    def decide(head: RequestHead, ds: Downstream) -> Decision:
        return Forward(service="t/app", port=port, route="app")
    return Proxy(decide, protocols={port: protocol}, settings=HttpSettings(h2_codec=codec), cluster=cluster(**policy))


def get(conn: http.client.HTTPConnection, path: str) -> tuple[int, bytes]:
    conn.request("GET", path)
    r = conn.getresponse()
    return r.status, r.read()


def stats(p: Proxy) -> dict[str, float]:
    return p.call(lambda: p.cluster.breaker.stats())  # type: ignore[return-value]


def wait_for(cond: Any, timeout: float = 5.0) -> bool:
    deadline = time.time() + timeout
    while not cond() and time.time() < deadline:
        time.sleep(0.02)
    return bool(cond())


@pytest.fixture(params=["nghttp2", "h2"])
def codec(request: pytest.FixtureRequest) -> str:
    return request.param


# --- maxConnectionDuration ----------------------------------------------------------------------

def test_http1_connection_is_replaced_after_max_connection_duration_and_no_request_fails() -> None:
    """An upstream HTTP/1.1 connection older than maxConnectionDuration carries its request in
    flight to the end (200), then closes; the next request opens a new one. One left idle past it
    is closed by the waypoint, and the next request does not fail on it."""
    origin = Origin()
    p = proxy_to(origin.port, "http1", max_connection_duration=0.3)
    try:
        client = http.client.HTTPConnection("127.0.0.1", p.port, timeout=10)
        assert get(client, "/slow=0.5")[0] == 200          # in flight when its connection is drained
        assert get(client, "/")[0] == 200                   # on a new connection
        assert origin.connections == 2
        # the second one reaches its age while idle, and is closed
        assert wait_for(lambda: stats(p)["upstream_cx_max_duration_reached"] == 2)
        assert get(client, "/")[0] == 200
        assert origin.connections == 3
        assert [r.status for r in p.records] == [200, 200, 200] and not [r for r in p.records if r.response_flags]
        assert stats(p)["upstream_cx_active"] == 1
        client.close()
    finally:
        p.close()
        origin.close()


def test_h2_connection_takes_no_new_stream_after_max_connection_duration(codec: str) -> None:
    """An h2 upstream connection past maxConnectionDuration gets no new stream (the next request
    opens another connection), finishes the stream it carries, then closes."""
    up = H2Upstream()
    p = proxy_to(up.port, "h2", codec, max_connection_duration=0.3)
    try:
        first: list[int] = []
        c1 = http.client.HTTPConnection("127.0.0.1", p.port, timeout=10)
        t = threading.Thread(target=lambda: first.append(get(c1, "/hold=0.8")[0]))
        t.start()
        assert wait_for(lambda: up.conns and up.conns[0]["streams"] == 1)
        # the first connection is now draining, its stream still open
        assert wait_for(lambda: stats(p)["upstream_cx_max_duration_reached"] == 1) and not first
        c2 = http.client.HTTPConnection("127.0.0.1", p.port, timeout=10)
        assert get(c2, "/")[0] == 200
        assert [c["streams"] for c in up.conns] == [1, 1]
        t.join(10)
        assert first == [200]
        assert wait_for(lambda: up.conns[0]["closed"])      # closed once its stream ended
        assert not [r for r in p.records if r.response_flags]
        assert stats(p)["upstream_cx_max_duration_reached"] >= 1
        c1.close()
        c2.close()
    finally:
        p.close()
        up.close()


# --- http2KeepAlive -----------------------------------------------------------------------------

def test_pings_keep_an_idle_h2_upstream_connection_and_it_is_reused(codec: str) -> None:
    up = H2Upstream()
    p = proxy_to(up.port, "h2", codec, h2_keepalive_interval=0.1, h2_keepalive_timeout=1.0)
    try:
        client = http.client.HTTPConnection("127.0.0.1", p.port, timeout=10)
        assert get(client, "/")[0] == 200
        assert wait_for(lambda: up.pings >= 3)              # sent while the connection is idle
        assert get(client, "/")[0] == 200
        assert len(up.conns) == 1 and not up.conns[0]["closed"]      # the answered PINGs kept it
        assert stats(p)["http2_keepalive_timeout"] == 0
        client.close()
    finally:
        p.close()
        up.close()


def test_an_h2_upstream_that_does_not_answer_pings_is_closed_and_its_request_fails(codec: str) -> None:
    """A silent upstream (it took the request, then answers nothing, PINGs included) is closed
    once a PING goes unanswered for the timeout: the request on it ends as Envoy ends it (503 UC,
    "connection termination") instead of hanging, and `http2_keepalive_timeout` counts it."""
    up = H2Upstream(silent=True)
    p = proxy_to(up.port, "h2", codec, h2_keepalive_interval=0.2, h2_keepalive_timeout=0.3)
    try:
        client = http.client.HTTPConnection("127.0.0.1", p.port, timeout=15)
        status, body = get(client, "/")
        assert status == 503 and b"connection termination" in body
        assert up.pings >= 1 and wait_for(lambda: up.conns[0]["closed"])
        rec = p.find(lambda r: r.path == "/")
        assert [r.response_flags for r in rec] == ["UC"]
        assert stats(p)["http2_keepalive_timeout"] == 1 and stats(p)["upstream_cx_active"] == 0
        client.close()
    finally:
        p.close()
        up.close()


# --- maxConcurrentStreams -----------------------------------------------------------------------

@pytest.mark.parametrize("limit", ["policy", "server"])
def test_max_concurrent_streams_caps_the_streams_of_each_h2_upstream_connection(codec: str, limit: str) -> None:
    """`policy`: the server takes 100 streams at once; maxConcurrentStreams 2 keeps each connection
    of the waypoint at 2. `server`: no policy, the server's SETTINGS say 2. Either way the burst
    spreads over more connections (it does not queue on the first one, also when the server's
    SETTINGS arrived with the connect), and every request succeeds."""
    up = H2Upstream(max_streams=2 if limit == "server" else 0)
    p = proxy_to(up.port, "h2", codec, **({"max_concurrent_streams": 2} if limit == "policy" else {}))
    try:
        got: list[int] = []
        lock = threading.Lock()

        def one() -> None:
            c = http.client.HTTPConnection("127.0.0.1", p.port, timeout=15)
            s = get(c, "/hold=0.4")[0]
            with lock:
                got.append(s)
            c.close()

        threads = [threading.Thread(target=one) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        assert got == [200] * 6
        assert sum(c["streams"] for c in up.conns) == 6
        assert max(c["max"] for c in up.conns) <= 2 and len(up.conns) >= 3
    finally:
        p.close()
        up.close()
