"""Retries and timeouts through the engine on loopback (real sockets, real clients), with the
exchange driven by a route's `RoutePolicy` and attempts reported to a real `Cluster`."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import h2.config
import h2.connection
import h2.events
import pytest

from ambit.model import Retry, TrafficPolicy
from tests.unit.waypoint.harness import Proxy
from waypoint.http.engine import UpstreamTarget
from waypoint.http.plug import connect_tcp
from waypoint.http.settings import HttpSettings
from waypoint.request import Downstream, Forward, RequestHead
from waypoint.resilience.policy import RoutePolicy
from waypoint.resilience.retry import compile_retry
from waypoint.traffic.cluster import Cluster, ClusterKey


class _H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a: object) -> None:
        pass

    def _any(self) -> None:
        srv = self.server
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while size := int(self.rfile.readline().strip().split(b";")[0], 16):
                body += self.rfile.read(size)
                self.rfile.readline()
            self.rfile.readline()
        else:
            n = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(n) if n else b""
        with srv.lock:                          # type: ignore[attr-defined]
            srv.count += 1                      # type: ignore[attr-defined]
            k = srv.count                       # type: ignore[attr-defined]
        if srv.delay:                           # type: ignore[attr-defined]
            time.sleep(srv.delay)               # type: ignore[attr-defined]
        fail = srv.fail_every and k % srv.fail_every == 0   # type: ignore[attr-defined]
        out = json.dumps({"n": k, "port": srv.server_address[1], "sha": hashlib.sha256(body).hexdigest()}).encode()
        self.send_response(503 if fail else 200)
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        try:
            self.wfile.write(out)
        except OSError:         # the proxy gave up on this try (a timeout)
            pass

    do_GET = do_POST = _any


class Backend:
    def __init__(self, fail_every: int = 0, delay: float = 0.0) -> None:
        self.srv = ThreadingHTTPServer(("127.0.0.1", 0), _H)
        self.srv.daemon_threads = True
        self.srv.count, self.srv.fail_every, self.srv.delay = 0, fail_every, delay   # type: ignore[attr-defined]
        self.srv.lock = threading.Lock()                 # type: ignore[attr-defined]
        self.port = self.srv.server_address[1]
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    @property
    def count(self) -> int:
        return self.srv.count                            # type: ignore[attr-defined]

    def close(self) -> None:
        self.srv.shutdown()
        self.srv.server_close()


class Setup:
    """A proxy whose one route goes to `ports` (round robin, honouring `exclude`) with `policy`."""

    def __init__(self, ports: list[int], policy: RoutePolicy | None, traffic: TrafficPolicy | None = None,
                 settings: HttpSettings | None = None, protocol: str = "http1") -> None:
        self.ports = ports
        self.protocol = protocol
        self.policy = policy
        self.cluster = Cluster(ClusterKey("test/svc", 80), traffic or TrafficPolicy(), time.monotonic, None)  # type: ignore[arg-type]
        self.rr = 0

        def decide(head: RequestHead, ds: Downstream) -> Forward:
            return Forward(service="test/svc", port=80, route="test#svc", policy=self.policy)

        self.proxy = Proxy(decide, settings=settings)
        self.proxy.call(lambda: setattr(self.proxy.engine, "upstream", self.upstream))

    def upstream(self, fwd: Forward, head: RequestHead, down: Downstream,
                 exclude: frozenset[str] = frozenset()) -> UpstreamTarget:
        cands = [p for p in self.ports if f"127.0.0.1:{p}" not in exclude] or self.ports
        port = cands[self.rr % len(cands)]
        self.rr += 1
        return UpstreamTarget(f"127.0.0.1:{port}", f"127.0.0.1:{port}", lambda: connect_tcp("127.0.0.1", port, 5),
                              self.protocol, self.cluster)

    def get(self, path: str = "/", data: bytes | None = None, timeout: float = 10) -> tuple[int, bytes, float]:
        t0 = time.monotonic()
        req = urllib.request.Request(f"http://127.0.0.1:{self.proxy.port}{path}", data=data)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.read(), time.monotonic() - t0
        except urllib.error.HTTPError as e:
            return e.code, e.read(), time.monotonic() - t0

    def stats(self) -> dict[str, float]:
        return self.proxy.call(self.cluster.stats)  # type: ignore[return-value]

    def close(self) -> None:
        self.proxy.close()


@pytest.fixture
def half() -> Iterator[Backend]:
    b = Backend(fail_every=2)
    yield b
    b.close()


def _policy(**kw: object) -> RoutePolicy:
    retry = kw.pop("retry", None)
    return RoutePolicy(retry=compile_retry(retry), **kw)  # type: ignore[arg-type]


def test_retry_on_5xx_turns_half_failing_into_all_success(half: Backend) -> None:
    s = Setup([half.port], _policy(retry=Retry(attempts=2, retry_on=["5xx"], backoff=0.001)))
    try:
        got = [s.get()[0] for _ in range(20)]
        assert got == [200] * 20
        st = s.stats()
        # every 2nd answer fails: after the first request, each request's first try fails
        assert st["upstream_rq_retry"] == 19 and st["upstream_rq_retry_success"] == 19
        assert half.count == 39
        assert s.proxy.live_exchanges() == 0
    finally:
        s.close()


def test_default_policy_does_not_retry_503(half: Backend) -> None:
    s = Setup([half.port], None)
    try:
        got = [s.get()[0] for _ in range(10)]
        assert got.count(503) == 5 and half.count == 10 and s.stats()["upstream_rq_retry"] == 0
    finally:
        s.close()


def test_retries_exhausted_forward_the_last_answer_with_urx() -> None:
    bad = Backend(fail_every=1)
    s = Setup([bad.port], _policy(retry=Retry(attempts=2, retry_on=["gateway-error"], backoff=0.001)))
    try:
        assert s.get()[0] == 503
        assert bad.count == 3
        assert s.proxy.find(lambda r: r.response_flags == "URX")
        assert s.stats()["upstream_rq_retry_limit_exceeded"] == 1
    finally:
        s.close()
        bad.close()


def test_post_body_is_replayed_on_retry(half: Backend) -> None:
    s = Setup([half.port], _policy(retry=Retry(attempts=2, retry_on=["5xx"], backoff=0.001)))
    body = b"x" * 100_000
    try:
        for _ in range(4):
            st, out, _ = s.get("/", data=body)
            assert st == 200 and json.loads(out)["sha"] == hashlib.sha256(body).hexdigest()
        assert s.stats()["upstream_rq_retry"] == 3 and half.count == 7
    finally:
        s.close()


def test_body_over_the_retry_buffer_is_not_retried(half: Backend) -> None:
    s = Setup([half.port], _policy(retry=Retry(attempts=2, retry_on=["5xx"], backoff=0.001)),
              settings=HttpSettings(retry_buffer_bytes=1000))
    try:
        got = [s.get("/", data=b"y" * 5000)[0] for _ in range(4)]
        assert got.count(503) == 2 and s.stats()["upstream_rq_retry"] == 0
    finally:
        s.close()


def test_route_timeout_is_504_ut_on_time() -> None:
    slow = Backend(delay=2.0)
    s = Setup([slow.port], _policy(timeout=0.3))
    try:
        st, body, took = s.get()
        assert st == 504 and body == b"upstream request timeout"
        assert 0.28 <= took < 0.8
        assert s.proxy.find(lambda r: r.response_flags == "UT" and r.status == 504)
        assert s.stats()["upstream_rq_timeout"] == 1
    finally:
        s.close()
        slow.close()


def test_per_try_timeout_is_retried_onto_the_fast_endpoint() -> None:
    slow, fast = Backend(delay=2.0), Backend()
    s = Setup([slow.port, fast.port], _policy(per_try_timeout=0.2, retry=Retry(attempts=2, retry_on=["5xx"],
                                                                              backoff=0.001)))
    try:
        for _ in range(4):
            st, out, took = s.get()
            assert st == 200 and json.loads(out)["port"] == fast.port and took < 1.0
        st = s.stats()
        # round robin puts every first try on the slow one; the retry excludes it
        assert st["upstream_rq_per_try_timeout"] == 4 and st["upstream_rq_retry_success"] == 4
    finally:
        s.close()
        slow.close()
        fast.close()


def test_per_try_timeout_without_a_retry_condition_is_504_ut() -> None:
    slow = Backend(delay=2.0)
    s = Setup([slow.port], _policy(per_try_timeout=0.2))    # Istio's default retryOn: no timeout retry
    try:
        st, _, took = s.get()
        assert st == 504 and took < 0.8
        assert s.proxy.find(lambda r: r.response_flags == "UT")
    finally:
        s.close()
        slow.close()


def test_budget_refuses_retries_with_uo() -> None:
    bad = Backend(fail_every=1)
    tp = TrafficPolicy(retry_budget=True, retry_budget_percent=0.0, retry_budget_min_concurrency=0)
    s = Setup([bad.port], _policy(retry=Retry(attempts=2, retry_on=["5xx"], backoff=0.001)), traffic=tp)
    try:
        assert s.get()[0] == 503 and bad.count == 1
        assert s.proxy.find(lambda r: r.response_flags == "UO")
        assert s.stats()["upstream_rq_retry_overflow"] == 1
    finally:
        s.close()
        bad.close()


# --- gRPC ------------------------------------------------------------------------------------------

def test_grpc_unavailable_retried_by_the_default_policy() -> None:
    from ambitctl.lab.apps import grpc_echo
    server, port = grpc_echo.serve(0, grpc_echo.Echo(fail_every=2), host="127.0.0.1")
    s = Setup([port], None, protocol="h2")
    try:
        assert grpc_echo.tally(f"127.0.0.1:{s.proxy.port}", 20) == {"OK": 20}
        st = s.stats()
        assert st["upstream_rq_retry"] == 19 and st["upstream_rq_retry_success"] == 19
    finally:
        s.close()
        server.stop(0)


class _MuteH2(asyncio.Protocol):
    """An h2c server that takes requests and never answers (not even at the gRPC deadline, which
    a grpcio server enforces itself and would race the waypoint's timer)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = transport
        self.c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        self.c.initiate_connection()
        self.t.write(self.c.data_to_send())  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        for ev in self.c.receive_data(data):
            if isinstance(ev, h2.events.DataReceived):
                self.c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        self.t.write(self.c.data_to_send())  # type: ignore[attr-defined]


def test_grpc_timeout_header_is_honoured_and_answered_unavailable() -> None:
    import subprocess

    import grpc

    loop = asyncio.new_event_loop()
    srv = loop.run_until_complete(loop.create_server(_MuteH2, "127.0.0.1", 0))
    port = srv.sockets[0].getsockname()[1]
    threading.Thread(target=loop.run_forever, daemon=True).start()
    s = Setup([port], _policy(timeout=0.3), protocol="h2")
    try:
        # the route timeout caps grpc-timeout (5 s here); Envoy answers the 504 as grpc-status 14
        t0 = time.monotonic()
        with grpc.insecure_channel(f"127.0.0.1:{s.proxy.port}") as ch:
            fn = ch.unary_unary("/t.T/Slow")
            with pytest.raises(grpc.RpcError) as e:
                fn(b"x", timeout=5)
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE and "timeout" in e.value.details()
            assert time.monotonic() - t0 < 1.0
        # a grpc-timeout below the route timeout is the one the waypoint applies
        t0 = time.monotonic()
        r = subprocess.run(["curl", "-s", "-D", "-", "-o", "/dev/null", "--http2-prior-knowledge",
                            "-H", "content-type: application/grpc", "-H", "te: trailers", "-H", "grpc-timeout: 100m",
                            "--data-binary", "@-", f"http://127.0.0.1:{s.proxy.port}/t.T/Slow"],
                           input=b"\0\0\0\0\x01x", capture_output=True, timeout=10)
        took = time.monotonic() - t0
        assert b"grpc-status: 14" in r.stdout and b"grpc-message: upstream request timeout" in r.stdout, r.stdout
        assert took < 1.0
        recs = s.proxy.find(lambda r: r.response_flags == "UT" and r.grpc_status == "14")
        assert len(s.proxy.wait_records(2)) == 2 and len(recs) == 2
        # measured inside the proxy: the route timeout (0.3 s), then grpc-timeout (0.1 s)
        assert 290 <= recs[0].duration_ms < 700 and 95 <= recs[1].duration_ms < 250
        # the timed-out upstream streams were reset, not left to hold the h2 connection's slots
        open_streams = s.proxy.call(lambda: sum(len(c.streams) for cs in s.proxy.engine.pools.h2.values() for c in cs))
        assert open_streams == 0
    finally:
        s.close()
        loop.call_soon_threadsafe(srv.close)
        loop.call_soon_threadsafe(loop.stop)


def test_per_try_timeout_starts_when_a_streamed_body_ends() -> None:
    """A chunked upload that takes longer than the per-try timeout is not cut: the try's clock
    starts when the request is whole (Envoy), and a body is replayed on the retry."""
    import subprocess
    slow, fast = Backend(delay=2.0), Backend()
    s = Setup([slow.port, fast.port], _policy(per_try_timeout=0.3, retry=Retry(attempts=1, retry_on=["reset"],
                                                                             backoff=0.001)))
    try:
        script = ("import sys,time\nfor i in range(4):\n    sys.stdout.buffer.write(b'z'*1000); "
                  "sys.stdout.flush(); time.sleep(0.15)\n")
        feeder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
        r = subprocess.run(["curl", "-sS", "-m", "10", "-H", "transfer-encoding: chunked", "--data-binary", "@-",
                            f"http://127.0.0.1:{s.proxy.port}/"], stdin=feeder.stdout, capture_output=True, timeout=20)
        feeder.wait()
        out = json.loads(r.stdout)
        assert out["port"] == fast.port and out["sha"] == hashlib.sha256(b"z" * 4000).hexdigest()
        assert s.stats()["upstream_rq_per_try_timeout"] == 1
    finally:
        s.close()
        slow.close()
        fast.close()


@pytest.mark.parametrize(("succeed_after", "status"), [(3, 200), (4, 503)])
def test_a_reset_on_a_reused_connection_counts_against_a_policy_that_retries_resets(
        succeed_after: int, status: int) -> None:
    """A route whose policy retries resets (Gateway API's `retry`: attempts 3) sends at most 1 + 3
    tries: a reset on a reused pooled connection is one of its retries. It was replayed on a fresh
    connection first, uncounted (the idle-close race rule, which stays for policies that do not
    retry resets), so a backend that read the request and reset it got a 5th try and upstream's
    HTTPRouteRetryConnectionError (succeedAfter 4, attempts 3) got 200 instead of 5xx."""
    from ambitctl.lab.apps.conformance_echo import ConformanceHandler, ConformanceServer
    from controller.translate.routes import GW_RETRY_ON

    srv = ConformanceServer(("127.0.0.1", 0), ConformanceHandler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    s = Setup([srv.server_address[1]], _policy(retry=Retry(attempts=3, retry_on=list(GW_RETRY_ON), backoff=0.001)))
    try:
        assert s.get("/warm")[0] == 200          # the pool now holds a kept-alive connection
        assert s.get(f"/retry/x?uuid=u&succeedAfter={succeed_after}")[0] == status
        assert srv.attempts["u"] == min(succeed_after, 4)        # the tries that were reset
    finally:
        s.close()
        srv.shutdown()
        srv.server_close()


def test_a_minimum_backoff_holds_the_retry_back_that_long(half: Backend) -> None:
    """Gateway API `retry.backoff` (`Retry.min_backoff`): the retry of a failed try waits at least
    the backoff. Envoy's full jitter, applied before, sent it after a uniform [0, backoff)."""
    s = Setup([half.port], _policy(retry=Retry(attempts=2, retry_on=["5xx"], backoff=0.3, min_backoff=True)))
    try:
        assert s.get()[0] == 200                # answered 200 (every 2nd answer fails)
        status, _, took = s.get()               # fails once, retried
        assert (status, half.count) == (200, 3) and took >= 0.3, took
    finally:
        s.close()
