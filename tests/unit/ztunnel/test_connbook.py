"""ConnBook: on every path a connection releases exactly the limits it took, is counted opened and
closed exactly once, and writes exactly one access-log line."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from ambit.dataplane.hbone.limits import ConnLimiter
from ambit.dataplane.telemetry.accesslog import ConnRecord
from ambit.dataplane.telemetry.metrics import FLAG_DENY, MUTUAL_TLS, ConnLabels, Metrics
from ztunnel.connbook import ConnBook


class Sink:
    def __init__(self) -> None:
        self.records: list[ConnRecord] = []

    def emit(self, rec: ConnRecord) -> None:
        self.records.append(rec)


def counters(m: Metrics) -> dict[tuple[str, str], float]:
    out = {}
    for fam in text_string_to_metric_families(m.exposition().decode()):
        for s in fam.samples:
            if s.name.endswith("_total"):
                out[(s.name, s.labels.get("response_flags", ""))] = s.value
    return out


def book(m: Metrics, sink: Sink) -> ConnBook:
    return ConnBook(ConnRecord("inbound", "10.0.0.1:1", "10.0.0.2:80"), m, sink,
                    labels=ConnLabels("destination", destination_workload="echo", connection_security_policy=MUTUAL_TLS))


def test_a_refused_connection_releases_its_limits_and_counts_once():
    m, sink = Metrics(), Sink()
    per_pod, per_ip = ConnLimiter(1, "per pod"), ConnLimiter(5, "per ip")
    c = book(m, sink)
    assert c.hold(per_ip, "10.0.0.1") and c.hold(per_pod, "echo")
    assert not per_pod.acquire("echo"), "the slot is held while the connection lives"
    c.refuse("403 denied", FLAG_DENY, "demo/deny-all")
    c.finish()
    assert per_pod.acquire("echo") and per_ip.acquire("10.0.0.1"), "finish() released both"
    assert [r.policy for r in sink.records] == ["demo/deny-all"]
    got = counters(m)
    assert got[("istio_tcp_connections_opened_total", FLAG_DENY)] == 1
    assert got[("istio_tcp_connections_closed_total", FLAG_DENY)] == 1


def test_a_full_limiter_refuses_without_holding_anything():
    m, sink = Metrics(), Sink()
    lim = ConnLimiter(1, "outbound connections per pod")
    assert lim.acquire("client")
    c = book(m, sink)
    assert not c.hold(lim, "client")
    assert c.refused and "outbound connections per pod: limit 1 reached" in c.rec.error
    c.finish()
    assert not lim.acquire("client"), "the other connection still holds its slot; nothing was released twice"


def test_a_served_connection_counts_bytes_once_and_is_not_flagged():
    m, sink = Metrics(), Sink()
    c = book(m, sink)
    c.up()
    c.sent, c.recv = 100, 2000
    c.finish()
    rec = sink.records[0]
    assert (rec.bytes_sent, rec.bytes_recv, rec.error) == (100, 2000, "")
    got = counters(m)
    assert got[("istio_tcp_connections_opened_total", "-")] == 1
    # Istio's names: "sent" is the response (towards the source), "received" the request.
    assert got[("istio_tcp_sent_bytes_total", "-")] == 2000
    assert got[("istio_tcp_received_bytes_total", "-")] == 100


def test_an_open_connections_bytes_show_at_each_scrape_and_are_counted_once() -> None:
    """Istio's ztunnel counts a connection's bytes while it lasts. Ambit added them at close only:
    a connection open for hours showed no bytes on any dashboard until it closed, then all at
    once. Real sockets: a client -> relay -> echo app; scrapes while it is open, then the close."""
    import asyncio

    from ambit.dataplane.relay import Leg, TCPRelay

    def sent_received(m: Metrics) -> tuple[float, float]:
        got = counters(m)
        return got.get(("istio_tcp_sent_bytes_total", "-"), 0.0), got.get(("istio_tcp_received_bytes_total", "-"), 0.0)

    async def main() -> None:
        m, sink = Metrics(), Sink()

        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while data := await reader.read(65536):
                writer.write(data * 2)      # the response direction: twice the request's bytes
                await writer.drain()
            writer.close()

        app = await asyncio.start_server(echo, "127.0.0.1", 0)
        loop = asyncio.get_running_loop()
        books: list[ConnBook] = []

        async def accepted(client: Leg) -> None:
            _, upstream = await loop.create_connection(Leg, "127.0.0.1", app.sockets[0].getsockname()[1])
            c = book(m, sink)
            c.up()
            c.hand_off(TCPRelay(client, upstream), set())
            books.append(c)

        srv = await loop.create_server(lambda: Leg(on_made=lambda leg: loop.create_task(accepted(leg))), "127.0.0.1", 0)
        r, w = await asyncio.open_connection("127.0.0.1", srv.sockets[0].getsockname()[1])
        try:
            w.write(b"x" * 1000)
            assert await r.readexactly(2000)
            assert sent_received(m) == (2000, 1000)         # still open: the bytes so far
            assert sent_received(m) == (2000, 1000)         # a second scrape adds nothing more
            w.write(b"y" * 500)
            assert await r.readexactly(1000)
            assert sent_received(m) == (3000, 1500)
            w.close()
            for _ in range(200):
                if sink.records:
                    break
                await asyncio.sleep(0.01)
            assert sink.records and (sink.records[0].bytes_sent, sink.records[0].bytes_recv) == (1500, 3000)
            assert sent_received(m) == (3000, 1500)         # closed: the rest, nothing counted twice
            assert counters(m)[("istio_tcp_connections_closed_total", "-")] == 1 and not m.live
        finally:
            srv.close()
            app.close()

    asyncio.run(main())
