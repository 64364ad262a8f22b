"""Fault injection through the real engine (loopback, real clients): an abort answers locally and
never reaches the backend, a delay holds the request on a timer without blocking the loop, a client
that leaves during the delay ends the exchange cleanly, gRPC aborts are trailers-only, and the
flags reach the record (FI, DI, "DI,FI", "DI,DC")."""

from __future__ import annotations

import socket
import struct
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import grpc
import pytest

from tests.unit.waypoint.harness import GrpcOrigin, Origin, Proxy
from waypoint.request import Downstream, Forward, RequestHead
from waypoint.resilience.fault import MILLION, FaultPolicy
from waypoint.resilience.policy import RoutePolicy

pytestmark = pytest.mark.timeout(60)


def with_fault(port: int, f: FaultPolicy):
    pol = RoutePolicy(fault=f)

    def decide(head: RequestHead, ds: Downstream) -> Forward:
        return Forward(service="test/app", port=port, route="test#0", policy=pol)
    return decide


@pytest.fixture(scope="module")
def origin() -> Iterator[Origin]:
    o = Origin()
    yield o
    o.close()


def get(port: int, path: str = "/", timeout: float = 10) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_abort_answers_locally_and_never_reaches_the_backend(origin: Origin) -> None:
    p = Proxy(with_fault(origin.port, FaultPolicy(abort_status=503, abort_per_million=MILLION)))
    try:
        before = origin.requests
        assert get(p.port) == (503, b"fault filter abort")
        rec = p.find(lambda r: True)[0]
        assert (rec.status, rec.response_flags, rec.detail, rec.upstream) == (503, "FI", "fault_filter_abort", "")
        assert origin.requests == before
        assert p.live_exchanges() == 0
    finally:
        p.close()


def test_delay_holds_the_request_then_forwards(origin: Origin) -> None:
    p = Proxy(with_fault(origin.port, FaultPolicy(delay=0.3, delay_per_million=MILLION)))
    try:
        # several at once on their own connections: a timer each, the loop is never blocked
        results: list[float] = []

        def one() -> None:
            t0 = time.monotonic()
            assert get(p.port)[0] == 200
            results.append(time.monotonic() - t0)
        threads = [threading.Thread(target=one) for _ in range(8)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(results) == 8 and min(results) >= 0.3
        assert time.monotonic() - t0 < 1.5, "delays ran one after another"
        recs = p.wait_records(8)
        assert {r.response_flags for r in recs} == {"DI"} and {r.status for r in recs} == {200}
    finally:
        p.close()


def test_delay_then_abort_flags_both(origin: Origin) -> None:
    p = Proxy(with_fault(origin.port, FaultPolicy(0.2, MILLION, 500, None, MILLION)))
    try:
        t0 = time.monotonic()
        assert get(p.port)[0] == 500
        assert time.monotonic() - t0 >= 0.2
        assert p.find(lambda r: True)[0].response_flags == "DI,FI"
    finally:
        p.close()


def test_a_client_that_leaves_during_the_delay_ends_cleanly(origin: Origin) -> None:
    p = Proxy(with_fault(origin.port, FaultPolicy(delay=0.5, delay_per_million=MILLION)))
    try:
        before = origin.requests
        with socket.create_connection(("127.0.0.1", p.port)) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            time.sleep(0.1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))   # close with RST
        rec = p.find(lambda r: True)[0]
        assert rec.response_flags == "DI,DC" and rec.status == 0
        assert p.live_exchanges() == 0
        time.sleep(0.6)                     # the timer fires into a finished exchange: nothing happens
        assert origin.requests == before and len(p.records) == 1
    finally:
        p.close()


def test_a_body_sent_during_the_delay_arrives_whole(origin: Origin) -> None:
    p = Proxy(with_fault(origin.port, FaultPolicy(delay=0.2, delay_per_million=MILLION)))
    try:
        body = b"x" * 300_000                # above buffer_bytes: the client is paused, then resumed
        req = urllib.request.Request(f"http://127.0.0.1:{p.port}/", data=body, method="POST")
        with urllib.request.urlopen(req, timeout=10) as r:
            assert b'"body_len": 300000' in r.read()
    finally:
        p.close()


def test_grpc_abort_is_trailers_only_with_the_status() -> None:
    g = GrpcOrigin()
    p = Proxy(with_fault(g.port, FaultPolicy(abort_grpc=14, abort_per_million=MILLION)), protocols={g.port: "h2"})
    try:
        with grpc.insecure_channel(f"127.0.0.1:{p.port}") as ch:
            with pytest.raises(grpc.RpcError) as e:
                ch.unary_unary("/echo.Echo/Unary")(b"hi", timeout=10)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        assert e.value.details() == "fault filter abort"
        rec = p.find(lambda r: True)[0]
        assert (rec.status, rec.grpc_status, rec.response_flags) == (200, "14", "FI")
    finally:
        p.close()
        g.close()
