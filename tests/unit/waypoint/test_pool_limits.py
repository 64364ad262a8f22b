"""The pool's per-cluster limits (waypoint/http/pool.py over waypoint/traffic/breaker.py), driven
without sockets: fake connectors hand the real H1Client/H2Client a fake transport, fake exchanges
record what the pool does to them, and the test plays the origin's answers."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from ambit.model import TrafficPolicy
from tests.unit.waypoint import fakes
from waypoint.http.engine import UpstreamTarget
from waypoint.http.exchange import BODY_NONE
from waypoint.http.http2 import H2Client
from waypoint.http.pool import H1_ONLY_FOR, Pools
from waypoint.http.settings import HttpSettings
from waypoint.request import RequestHead
from waypoint.traffic.cluster import Cluster, ClusterKey

OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"     # an empty HTTP/2 SETTINGS frame (a server's preface)
SETTINGS_2 = b"\x00\x00\x06\x04\x00\x00\x00\x00\x00\x00\x03\x00\x00\x00\x02"   # MAX_CONCURRENT_STREAMS 2


class FakeTransport(fakes.FakeTransport):
    def answer(self, raw: bytes = OK) -> None:
        super().answer(raw)


class Origin:
    """A fake endpoint: every connect is recorded; `gate` (when set) holds connects until it is
    set, `fail` makes them fail."""

    def __init__(self) -> None:
        self.conns: list[FakeTransport] = []
        self.gate: asyncio.Event | None = None
        self.fail = False

    def connector(self) -> Callable[[], Any]:
        async def connect() -> Any:
            if self.gate is not None:
                await self.gate.wait()
            if self.fail:
                raise ConnectionRefusedError("refused")
            origin = self

            class Plug:
                def attach(self, proto: asyncio.Protocol) -> None:
                    t = FakeTransport(proto)
                    origin.conns.append(t)
                    proto.connection_made(t)
            return Plug()
        return connect

    @property
    def open(self) -> list[FakeTransport]:
        return [t for t in self.conns if not t.closed]


class FakeExchange:
    """What the pool and the HTTP/1.1 client call on an exchange; it ends (and tells the pool, as
    Exchange.finish does) on a response end, an overflow or a connect failure."""

    def __init__(self, pools: Pools, target: UpstreamTarget, upgrade: bool = False) -> None:
        self.pools = pools
        self.target = target
        self.up_head = RequestHead("GET", "/", "myapp", "http", [])
        self.body = BODY_NONE
        self.upgrade = upgrade
        self.done = False
        self.resp_started = False
        self.reset_code = None
        self.retried = False
        self.events: list[str] = []
        self.up: Any = None

    def bind(self, up: Any) -> None:
        self.up = up
        self.events.append("bound")
        up.send_end(None)

    def response_head(self, status: int, headers: Any, end: bool = False) -> None:
        self.events.append(str(status))

    def response_data(self, data: bytes) -> None: ...

    def response_end(self, trailers: Any) -> None:
        self._end("end")

    def overflow(self) -> None:
        self._end("UO")

    def connect_failed(self, detail: str) -> None:
        self._end("UF " + detail)

    def upstream_reset(self, flags: str, reason: str, *, retryable: bool = False) -> None:
        if retryable and not self.retried:      # as Exchange.upstream_reset: once, on a fresh connection
            self.retried = True
            self.events.append("again")
            self.pools.acquire(self.target, self, fresh=True)  # type: ignore[arg-type]
            return
        self._end("reset " + flags)

    def _end(self, what: str) -> None:
        self.events.append(what)
        self.done = True
        self.pools.attempt_over(self)  # type: ignore[arg-type]

    def request_pause(self) -> None: ...
    def request_resume(self) -> None: ...


def setup(policy: TrafficPolicy, settings: HttpSettings | None = None) -> tuple[Pools, Cluster, Origin]:
    loop = asyncio.get_running_loop()
    engine = SimpleNamespace(settings=settings or HttpSettings(), loop=loop)
    pools = Pools(engine)  # type: ignore[arg-type]
    cluster = Cluster(ClusterKey("default/myapp", 80), policy, loop.time, random.Random(1), "myapp.default.svc.cluster.local")
    return pools, cluster, Origin()


def target(cluster: Cluster, origin: Origin, key: str = "10.0.0.1:8080/http1 for 10.0.1.1",
           protocol: str = "http1") -> UpstreamTarget:
    return UpstreamTarget(key, key.split("/")[0], origin.connector(), protocol, cluster)


def send(pools: Pools, t: UpstreamTarget, **kw: Any) -> FakeExchange:
    ex = FakeExchange(pools, t, **kw)
    pools.acquire(t, ex)  # type: ignore[arg-type]
    return ex


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def run(coro: Callable[[], Any]) -> None:
    asyncio.run(coro())


# --- connections, pending, overflow ---------------------------------------------------------------

def test_max_connections_1_pending_1_the_third_request_overflows_at_once() -> None:
    async def main() -> None:
        pools, cl, origin = setup(TrafficPolicy(max_connections=1, http1_max_pending_requests=1))
        t = target(cl, origin)
        a = send(pools, t)
        await settle()
        assert a.events == ["bound"] and len(origin.conns) == 1
        b = send(pools, t)                  # waits for the one connection
        c = send(pools, t)                  # the queue is full: 503 UO now
        assert b.events == [] and c.events == ["UO"]
        s = cl.stats()
        assert (s["upstream_cx_active"], s["upstream_rq_active"], s["upstream_rq_pending_active"]) == (1, 1, 1)
        assert s["circuit_breakers_default_cx_open"] == 1 and s["circuit_breakers_default_rq_pending_open"] == 1
        assert s["upstream_rq_pending_overflow"] == 1
        origin.conns[0].answer()            # a ends; b takes the same connection
        assert a.events[-1] == "end" and b.events == ["bound"]
        origin.conns[0].answer()
        await settle()
        assert b.events[-1] == "end" and len(origin.conns) == 1
        s = cl.stats()
        assert (s["upstream_rq_active"], s["upstream_rq_pending_active"], s["upstream_cx_active"]) == (0, 0, 1)
        assert s["circuit_breakers_default_rq_pending_open"] == 0
    run(main)


def test_a_request_is_pending_while_its_connection_is_opened() -> None:
    """Envoy's accounting: the first request waits (pending) for the connection being opened, so
    with one pending slot a second request in that window overflows."""
    async def main() -> None:
        pools, cl, origin = setup(TrafficPolicy(max_connections=1, http1_max_pending_requests=1))
        origin.gate = asyncio.Event()
        t = target(cl, origin)
        a, b = send(pools, t), send(pools, t)
        assert b.events == ["UO"] and cl.stats()["upstream_rq_pending_active"] == 1
        origin.gate.set()
        await settle()
        assert a.events == ["bound"]
    run(main)


def test_the_limit_is_per_cluster_and_strict_across_endpoints() -> None:
    """Two endpoints (keys) share maxConnections 1: the second endpoint's request closes the first's
    idle connection and opens its own only after that one is gone; never two at once."""
    async def main() -> None:
        pools, cl, origin = setup(TrafficPolicy(max_connections=1))
        t1, t2 = target(cl, origin, "10.0.0.1:8080/http1 for -"), target(cl, origin, "10.0.0.2:8080/http1 for -")
        a = send(pools, t1)
        await settle()
        origin.conns[0].answer()
        assert a.events[-1] == "end" and len(origin.open) == 1      # kept idle
        b = send(pools, t2)
        assert origin.conns[0].closed and b.events == []            # made room, waits for the close
        peak = 0
        for _ in range(10):
            await asyncio.sleep(0)
            peak = max(peak, len(origin.open))
        assert b.events == ["bound"] and len(origin.conns) == 2 and peak == 1
        assert cl.stats()["upstream_cx_active"] == 1
    run(main)


def test_a_freed_connection_goes_to_another_endpoints_waiter_at_the_limit() -> None:
    async def main() -> None:
        pools, cl, origin = setup(TrafficPolicy(max_connections=1))
        t1, t2 = target(cl, origin, "e1"), target(cl, origin, "e2")
        a = send(pools, t1)
        await settle()
        b = send(pools, t2)                 # e2 waits: the cluster's one connection is busy
        await settle()
        assert b.events == [] and len(origin.conns) == 1 and cl.stats()["upstream_cx_overflow"] >= 1
        origin.conns[0].answer()            # a ends; its connection is closed to make room for e2
        await settle()
        assert a.events[-1] == "end" and origin.conns[0].closed
        assert b.events == ["bound"] and len(origin.open) == 1
    run(main)


def test_http2_max_requests_bounds_active_requests_on_http1_too() -> None:
    async def main() -> None:
        pools, cl, origin = setup(TrafficPolicy(max_connections=4, http2_max_requests=1))
        t = target(cl, origin)
        a = send(pools, t)
        await settle()
        b = send(pools, t)                  # a second connection opens, but the request may not go
        await settle()
        assert a.events == ["bound"] and b.events == ["UO"]
        assert cl.stats()["circuit_breakers_default_rq_open"] == 1
    run(main)


def test_attempt_over_frees_a_pending_slot() -> None:
    async def main() -> None:
        pools, cl, origin = setup(TrafficPolicy(max_connections=1, http1_max_pending_requests=1))
        t = target(cl, origin)
        send(pools, t)
        await settle()
        b = send(pools, t)
        b.done = True
        pools.attempt_over(b)  # type: ignore[arg-type]     # the client left while waiting
        assert cl.stats()["upstream_rq_pending_active"] == 0
        c = send(pools, t)
        assert c.events == [] and cl.stats()["upstream_rq_pending_active"] == 1
        origin.conns[0].answer()
        assert c.events == ["bound"] and b.events == []
    run(main)


def test_a_connect_failure_fails_every_waiter_of_the_endpoint_and_frees_the_slot() -> None:
    async def main() -> None:
        pools, cl, origin = setup(TrafficPolicy(max_connections=1))
        origin.fail = True
        t = target(cl, origin)
        a, b = send(pools, t), send(pools, t)
        await settle()
        assert a.events[0].startswith("UF") and b.events[0].startswith("UF")
        s = cl.stats()
        assert (s["upstream_cx_active"], s["upstream_cx_connect_fail"], s["upstream_rq_pending_active"]) == (0, 1, 0)
    run(main)


def test_connect_timeout_from_the_policy() -> None:
    async def main() -> None:
        pools, cl, origin = setup(TrafficPolicy(connect_timeout=0.05))
        origin.gate = asyncio.Event()       # never opens
        a = send(pools, target(cl, origin))
        await asyncio.sleep(0.2)
        assert a.events == ["UF connection timeout after 0.05s"]
        s = cl.stats()
        assert (s["upstream_cx_connect_timeout"], s["upstream_cx_active"]) == (1, 0)
    run(main)


# --- connection lifetime ----------------------------------------------------------------------------

def test_max_requests_per_connection_1_opens_a_connection_per_request() -> None:
    async def main() -> None:
        pools, cl, origin = setup(TrafficPolicy(max_requests_per_connection=1))
        t = target(cl, origin)
        for i in range(3):
            ex = send(pools, t)
            await settle()
            origin.conns[i].answer()
            await settle()
            assert ex.events[-1] == "end" and origin.conns[i].closed
        assert len(origin.conns) == 3
        s = cl.stats()
        assert (s["upstream_cx_max_requests"], s["upstream_cx_active"], s["upstream_cx_total"]) == (3, 0, 3)
    run(main)


def test_max_requests_per_connection_2_reuses_once() -> None:
    async def main() -> None:
        pools, cl, origin = setup(TrafficPolicy(max_requests_per_connection=2))
        t = target(cl, origin)
        for _ in range(4):
            send(pools, t)
            await settle()
            origin.open[-1].answer()
            await settle()
        assert len(origin.conns) == 2 and cl.stats()["upstream_cx_max_requests"] == 2
    run(main)


def test_idle_timeout_from_the_policy_closes_idle_connections() -> None:
    async def main() -> None:
        pools, cl, origin = setup(TrafficPolicy(http_idle_timeout=2.0), HttpSettings(upstream_idle_timeout=60.0))
        t = target(cl, origin)
        send(pools, t)
        await settle()
        origin.conns[0].answer()
        now = asyncio.get_running_loop().time()
        pools.sweep(now + 1.0)
        assert not origin.conns[0].closed
        pools.sweep(now + 2.5)
        await settle()
        assert origin.conns[0].closed
        s = cl.stats()
        assert (s["upstream_cx_idle_timeout"], s["upstream_cx_active"]) == (1, 0)
    run(main)


def test_unset_policy_keeps_the_node_defaults() -> None:
    async def main() -> None:
        pools, cl, origin = setup(TrafficPolicy(), HttpSettings(pool_max_connections=1, pool_max_pending=0))
        t = target(cl, origin)
        a, b = send(pools, t), send(pools, t)
        await settle()
        assert a.events == ["UO"] and b.events == ["UO"]     # pending 0: nothing may wait, even for a connect
        pools2, cl2, origin2 = setup(TrafficPolicy(), HttpSettings(pool_max_connections=1, pool_max_pending=1))
        t2 = target(cl2, origin2)
        c = send(pools2, t2)
        await settle()
        d = send(pools2, t2)
        assert c.events == ["bound"] and d.events == [] and cl2.breaker.limits.max_connections == 1
    run(main)


def test_a_connection_opened_under_an_older_policy_is_not_reused() -> None:
    async def main() -> None:
        pools, cl, origin = setup(TrafficPolicy(max_connections=5))
        t = target(cl, origin)
        send(pools, t)
        await settle()
        origin.conns[0].answer()
        loop = asyncio.get_running_loop()
        newer = Cluster(cl.key, TrafficPolicy(max_connections=6), loop.time, random.Random(1))
        ex = send(pools, target(newer, origin))
        await settle()
        assert origin.conns[0].closed and len(origin.conns) == 2 and ex.events == ["bound"]
        assert cl.stats()["upstream_cx_active"] == 0 and newer.stats()["upstream_cx_active"] == 1
    run(main)


def test_h2_upgrade_speaks_h2c_to_an_http1_endpoint_but_not_for_upgrades() -> None:
    async def main() -> None:
        pools, cl, origin = setup(TrafficPolicy(h2_upgrade=True))
        t = target(cl, origin)
        send(pools, t)
        await settle()
        assert isinstance(origin.conns[0].proto, H2Client)
        assert origin.conns[0].written.startswith(b"PRI * HTTP/2.0")
        ws = send(pools, t, upgrade=True)   # a websocket upgrade stays HTTP/1.1
        await settle()
        assert not isinstance(origin.conns[1].proto, H2Client) and ws.events == ["bound"]
        plain, cl2, origin2 = setup(TrafficPolicy())
        send(plain, target(cl2, origin2))
        await settle()
        assert not isinstance(origin2.conns[0].proto, H2Client)
    run(main)


def test_h2_requests_count_against_max_requests_and_spend_connections() -> None:
    async def main() -> None:
        pools, cl, origin = setup(TrafficPolicy(http2_max_requests=2, max_requests_per_connection=2))
        t = target(cl, origin, "10.0.0.9:9000/h2 for -", protocol="h2")
        a = send(pools, t)
        await settle()
        origin.conns[0].answer(SETTINGS)    # the server's preface: streams beyond the first may open
        b = send(pools, t)
        c = send(pools, t)
        await settle()
        assert a.events == ["bound"] and b.events == ["bound"] and c.events == ["UO"]
        # c found the first connection spent: a second one opened, and c overflowed when it was
        # to be attached to it (Envoy checks max_requests at attach time)
        assert len(origin.conns) == 2 and cl.stats()["upstream_rq_active"] == 2
        h2c = origin.conns[0].proto
        assert isinstance(h2c, H2Client) and h2c.closing          # spent after 2 streams
    run(main)


def test_stats_reach_the_cluster_and_its_dump() -> None:
    async def main() -> None:
        pools, cl, origin = setup(TrafficPolicy(max_connections=1, http1_max_pending_requests=1))
        t = target(cl, origin)
        send(pools, t)
        await settle()
        send(pools, t)
        send(pools, t)
        dump = cl.dump()
        assert dump["name"] == "outbound|80||myapp.default.svc.cluster.local"
        st = dump["stats"]
        assert isinstance(st, dict) and st["circuit_breakers_default_cx_open"] == 1
        assert st["upstream_rq_pending_overflow"] == 1 and st["upstream_cx_active"] == 1
        # the limits in force, as the DestinationRule set them (an operator reads why it overflowed)
        lim = dump["limits"]
        assert isinstance(lim, dict) and (lim["max_connections"], lim["max_pending_requests"]) == (1, 1)
    run(main)


def test_an_h2_connection_of_an_older_policy_is_drained() -> None:
    async def main() -> None:
        pools, cl, origin = setup(TrafficPolicy(http2_max_requests=50))
        key = "10.0.0.9:9000/h2 for -"
        send(pools, target(cl, origin, key, protocol="h2"))
        await settle()
        loop = asyncio.get_running_loop()
        newer = Cluster(cl.key, TrafficPolicy(http2_max_requests=60), loop.time, random.Random(1))
        ex = send(pools, target(newer, origin, key, protocol="h2"))
        await settle()
        old = origin.conns[0].proto
        assert isinstance(old, H2Client) and old.closing and len(origin.conns) == 2 and ex.events == ["bound"]
        assert newer.stats()["upstream_cx_active"] == 1
    run(main)


def test_an_http1_only_endpoint_that_refuses_the_h2c_upgrade_gets_http1() -> None:
    """h2UpgradePolicy UPGRADE against an HTTP/1.1-only app (the lab's echo, as in the seed
    destination-rule.yaml): the app answers the h2 preface with 505; the request goes again over
    HTTP/1.1, and so do the endpoint's next requests."""
    async def main() -> None:
        pools, cl, origin = setup(TrafficPolicy(h2_upgrade=True))
        t = target(cl, origin)
        a = send(pools, t)
        await settle()
        assert isinstance(origin.conns[0].proto, H2Client)
        origin.conns[0].answer(b"HTTP/1.1 505 HTTP Version Not Supported\r\nconnection: close\r\n\r\n")
        origin.conns[0].close()             # and closes (h2 waits for the rest of that "frame")
        await settle()
        assert a.events == ["bound", "again", "bound"] and not isinstance(origin.conns[1].proto, H2Client)
        origin.conns[1].answer()
        b = send(pools, t)
        await settle()
        assert a.events[-1] == "end" and b.events == ["bound"] and len(origin.conns) == 2
        assert cl.stats()["upstream_cx_active"] == 1
        # the mark is per endpoint and source: one churned pod's (or gone client's) is not kept
        # for ever once it has expired, though its key never comes back to look it up
        assert list(pools._h1_only) == [t.key]
        pools.sweep(asyncio.get_running_loop().time() + H1_ONLY_FOR + 1)
        assert not pools._h1_only
    run(main)


def test_an_endpoint_that_speaks_h2_keeps_streams_not_retried() -> None:
    async def main() -> None:
        import h2.config
        import h2.connection
        pools, cl, origin = setup(TrafficPolicy(h2_upgrade=True))
        a = send(pools, target(cl, origin))
        await settle()
        server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        server.initiate_connection()
        origin.conns[0].answer(server.data_to_send())
        await settle()
        c = origin.conns[0].proto
        assert isinstance(c, H2Client) and c.spoke_h2
        c.transport.close()  # type: ignore[union-attr]
        await settle()
        assert a.events == ["bound", "reset UC"]               # processed, maybe: not sent again
        assert not pools._h1_only
    run(main)


def test_an_h2_connections_wait_queue_skips_attempts_that_are_over() -> None:
    """A request waiting for a stream slot whose attempt is over (the exchange finished, or a retry
    abandoned the try; the first try's leg is the exchange itself) is neither opened, nor sent
    elsewhere when the connection goes away: only attempts the pools still hold are (to another
    connection, since they never went out)."""
    async def main() -> None:
        pools, cl, origin = setup(TrafficPolicy())
        t = target(cl, origin, "10.0.0.9:9000/h2 for -", protocol="h2")
        live, over = FakeExchange(pools, t), FakeExchange(pools, t)
        for ex in (live, over):
            pools.acquire(t, ex)  # type: ignore[arg-type]
        await settle()
        origin.conns[0].answer(SETTINGS)    # the server's preface: the second stream opens
        await settle()
        pools.attempt_over(over)  # type: ignore[arg-type]
        assert pools.holds(live) and not pools.holds(over)  # type: ignore[arg-type]
        c = H2Client(pools, "10.0.0.9:9000/h2 for -", HttpSettings())
        opened: list[object] = []
        c.open_stream = opened.append  # type: ignore[method-assign]
        c.can_open = lambda: True  # type: ignore[method-assign]
        c.waiting.extend([over, live])  # type: ignore[list-item]
        c._next()
        assert opened == [live]
        c.waiting.extend([over, live])  # type: ignore[list-item]
        elsewhere: list[object] = []
        c.pools = SimpleNamespace(  # type: ignore[assignment]
            h2_refused=lambda c: False, holds=pools.holds,
            requeue=lambda c, exes, fresh: elsewhere.extend(ex for ex in exes if pools.holds(ex)))
        c._abort_all("connection termination")
        # the live one never went out: it goes to another connection (not failed)
        assert over.events == ["bound"] and elsewhere == [live] and not c.waiting
    run(main)


def test_a_new_h2_connection_opens_one_stream_until_the_servers_settings() -> None:
    """Before the server's SETTINGS a new h2c connection carries one stream; the rest of the burst
    queues on it. SETTINGS allowing 2: a second stream opens, and the surplus goes back to the pool,
    which opens another connection for it, as it would had it known the limit (a server with a
    low limit refuses streams beyond it: grpc-core resets them ENHANCE_YOUR_CALM)."""
    async def main() -> None:
        pools, cl, origin = setup(TrafficPolicy())
        t = target(cl, origin, "10.0.0.9:9000/h2 for -", protocol="h2")
        exs = [send(pools, t) for _ in range(5)]
        await settle()
        assert [x.events for x in exs] == [["bound"], [], [], [], []] and len(origin.conns) == 1
        origin.conns[0].answer(SETTINGS_2)
        await settle()
        assert [x.events for x in exs[:2]] == [["bound"], ["bound"]]
        first = origin.conns[0].proto
        assert isinstance(first, H2Client) and len(first.streams) == 2 and not first.waiting
        assert pools._h2_streams[first] == 2          # the surplus no longer counts as its requests
        assert len(origin.conns) == 2 and [x.events for x in exs[2:]] == [["bound"], [], []]
    run(main)
