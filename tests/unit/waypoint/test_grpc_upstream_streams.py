"""gRPC through the waypoint against a grpcio server that limits its concurrent streams.

What users rely on: a burst of calls on a new upstream connection to a server with a low
SETTINGS_MAX_CONCURRENT_STREAMS all succeed (they wait for a stream), as they do from a gRPC client
straight to the server; none fails UNAVAILABLE because the waypoint opened more streams than the
server takes before its SETTINGS told it the limit (grpc-core resets that surplus ENHANCE_YOUR_CALM),
nor because the connection it was queued on took no more streams before it went out.
"""

from __future__ import annotations

import random
import socket
import threading
import time
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest

from ambit.model import TrafficPolicy
from tests.unit.waypoint.harness import Proxy
from waypoint.http.settings import HttpSettings
from waypoint.localreply import local_reply
from waypoint.request import Decision, Downstream, Forward, RequestHead
from waypoint.traffic.cluster import Cluster, ClusterKey

pytestmark = pytest.mark.timeout(60)


class LimitedServer:
    """grpcio server taking 2 concurrent streams per connection; /t.T/Hold answers after a wait
    that keeps the calls of a burst overlapping."""

    def __init__(self) -> None:
        def hold(req: bytes, ctx: grpc.ServicerContext) -> bytes:
            threading.Event().wait(0.2)
            return b"ok:" + req

        handler = grpc.method_handlers_generic_handler("t.T", {"Hold": grpc.unary_unary_rpc_method_handler(hold)})
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=32),
                                  options=[("grpc.max_concurrent_streams", 2)])
        self.server.add_generic_rpc_handlers((handler,))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def close(self) -> None:
        self.server.stop(0)


class SlowStart:
    """A TCP relay in front of `port` that holds the server's first bytes (its SETTINGS) for
    `delay` seconds: a server farther away than loopback, so that the calls of a burst are all at
    the waypoint before the server has said how many streams it takes."""

    def __init__(self, port: int, delay: float = 0.3) -> None:
        self.port_to, self.delay = port, delay
        self.lsock = socket.create_server(("127.0.0.1", 0))
        self.port = self.lsock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                down, _ = self.lsock.accept()
            except OSError:
                return
            up = socket.create_connection(("127.0.0.1", self.port_to))
            threading.Thread(target=self._pipe, args=(down, up, 0.0), daemon=True).start()
            threading.Thread(target=self._pipe, args=(up, down, self.delay), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket, delay: float) -> None:
        if delay:
            threading.Event().wait(delay)
        try:
            while data := src.recv(65536):
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        self.lsock.close()


@pytest.fixture(params=["nghttp2", "h2"])
def setup(request: pytest.FixtureRequest) -> Iterator[tuple[Proxy, LimitedServer]]:
    srv = LimitedServer()
    relay = SlowStart(srv.port)

    def decide(head: RequestHead, ds: Downstream) -> Decision:
        if head.path == "/t.T/Local":
            return local_reply(head, 404, "answered by the waypoint")
        return Forward(service="t/limited", port=relay.port, route="limited")

    p = Proxy(decide, protocols={relay.port: "h2"}, settings=HttpSettings(h2_codec=request.param))
    yield p, srv
    assert p.live_exchanges() == 0
    p.close()
    relay.close()
    srv.close()


def burst(p: Proxy, n: int) -> list[object]:
    """`n` concurrent calls of /t.T/Hold, once the client's connection to the waypoint is up (a
    local reply opens no upstream connection): the burst reaches the waypoint at once, and its
    connection to the server is new. Each call's answer, or its status and details."""
    with grpc.insecure_channel(f"127.0.0.1:{p.port}") as ch:
        with pytest.raises(grpc.RpcError):
            ch.unary_unary("/t.T/Local")(b"", timeout=10)
        call = ch.unary_unary("/t.T/Hold")
        pending = [call.future(b"%d" % i, timeout=30) for i in range(n)]
        got: list[object] = []
        for f in pending:
            try:
                got.append(f.result())
            except grpc.RpcError as e:
                got.append((e.code(), e.details()))
    return got


def test_a_burst_on_a_new_connection_respects_the_servers_stream_limit(setup: tuple[Proxy, LimitedServer]) -> None:
    p, _ = setup
    assert burst(p, 12) == [b"ok:%d" % i for i in range(12)]
    recs = p.find(lambda r: r.path == "/t.T/Hold" and r.grpc_status == "0")
    assert len(recs) == 12 and not [r for r in p.records if r.response_flags]


def test_calls_queued_on_a_spent_connection_go_out_on_another(setup: tuple[Proxy, LimitedServer]) -> None:
    """maxRequestsPerConnection 2: the burst's second call is queued on the new connection for its
    SETTINGS when the connection is spent (no more streams). The call was never sent, so it goes
    out on another connection, as Envoy's pool hands pending requests on; it did not fail
    UNAVAILABLE (503 UC) when the spent connection closed under it."""
    p, _ = setup
    p.cluster = Cluster(ClusterKey("t/limited", 80), TrafficPolicy(max_requests_per_connection=2), time.monotonic,
                        random.Random(1), "limited.t.svc.cluster.local")
    assert burst(p, 6) == [b"ok:%d" % i for i in range(6)]
