"""What ztunnel's DNS proxy sends a client is always a response to that client's question, or
SERVFAIL: never its own query echoed, never another client's reply (the real `Forwarder` and
`PodDns.handle`, against a hostile upstream on a loopback port; no netns, no dig).

Why: once, under a loaded full run, tests/lab/test_egress.py's dig got its own query back as the
answer (no QR, no NXDOMAIN). The cause was not the proxy (a client socket given port 15053 sent
its captured query to itself: tests/lab/test_dns_capture.py,
test_a_socket_given_the_dns_proxy_port_does_not_get_its_own_query_back), but the proxy is where the
property must hold whatever the upstream does. Forty queries are under way at once, from clients
whose ids collide (resolvers of different pods pick ids independently), and the upstream answers
each with a scripted mix of what must not reach the client: the query itself, the reply to another
client's query, a reply with the right id for another question, the right reply without QR; then
the right answer (NXDOMAIN) or nothing (the proxy's timeout). The script comes from a seeded
random generator, so a failure names its seed and replays.
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import pytest
from prometheus_client import CollectorRegistry

from ambit.zds import PodInfo
from tests.unit.ztunnel.test_dns_sockets import mesh, plain_sockets
from ztunnel.dns.forwarder import Forwarder, Upstream
from ztunnel.dns.metrics import DnsMetrics
from ztunnel.dns.server import DnsProxy, PodDns
from ztunnel.pods import PodProxy

CLIENTS = 40
TIMEOUT = 0.4           # the forwarder's, per attempt: a silent upstream costs this
BAD = ("echo", "other-client", "other-question", "no-qr")


def nxdomain(query: dns.message.Message) -> bytes:
    r = dns.message.make_response(query)
    r.set_rcode(dns.rcode.NXDOMAIN)
    return r.to_wire()


class Hostile(asyncio.DatagramProtocol):
    """An upstream that sends each query, before anything else, what `script[name]` lists (bad
    replies), then the right answer if `answers[name]`."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.transport: asyncio.DatagramTransport | None = None
        self.seen: list[dns.message.Message] = []
        self.answers: dict[str, bool] = {}

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        assert self.transport is not None
        q = dns.message.from_wire(data)
        name = q.question[0].name.to_text()
        for bad in self.rng.sample(BAD, self.rng.randint(1, len(BAD))):
            if bad == "echo":
                out = data
            elif bad == "other-client":
                others = [m for m in self.seen if m.question[0].name != q.question[0].name]
                if not others:
                    continue
                out = nxdomain(self.rng.choice(others))
            elif bad == "other-question":
                other = dns.message.make_query("elsewhere.example.", "A")
                other.id = q.id
                out = nxdomain(other)
            else:
                r = dns.message.make_response(q)
                r.set_rcode(dns.rcode.NXDOMAIN)
                r.flags &= ~dns.flags.QR
                out = r.to_wire()
            self.transport.sendto(out, addr)
        self.seen.append(q)
        if self.answers[name]:
            self.transport.sendto(nxdomain(q), addr)


async def _run(seed: int) -> None:
    rng = random.Random(seed)
    loop = asyncio.get_running_loop()
    up_transport, upstream = await loop.create_datagram_endpoint(lambda: Hostile(rng), local_addr=("127.0.0.1", 0))
    port = up_transport.get_extra_info("sockname")[1]
    node = DnsProxy(mesh(), Forwarder([Upstream("127.0.0.1", port)], TIMEOUT, rng=random.Random(seed)),
                    DnsMetrics(CollectorRegistry()), sockets=plain_sockets)
    pod = PodDns(node, PodProxy(PodInfo("uid-client", "client", "demo", "10.1.0.9", "node1", "client",
                                        labels={"app": "client"}), netns_fd=-1))
    try:
        queries, got = [], {}
        for i in range(CLIENTS):
            q = dns.message.make_query(f"nothing-{i}.example.com.", "A")
            q.id = rng.choice([7, 7, 4242, rng.randrange(65536)])      # ids collide across clients
            upstream.answers[q.question[0].name.to_text()] = rng.random() < 0.7
            queries.append(q)
            got[i] = []
            pod.handle(q.to_wire(), "udp", got[i].append)
        await asyncio.wait(list(pod.forwards), timeout=TIMEOUT * 4)
        assert not pod.forwards, "a forward did not end"
        for i, q in enumerate(queries):
            assert len(got[i]) == 1, (seed, i, got[i])
            r = dns.message.from_wire(got[i][0])
            why = f"seed {seed}, client {i}: {r}"
            assert r.flags & dns.flags.QR, why
            assert r.id == q.id, why
            assert r.question == q.question, why
            want = dns.rcode.NXDOMAIN if upstream.answers[q.question[0].name.to_text()] else dns.rcode.SERVFAIL
            assert r.rcode() == want, why
    finally:
        pod.close()
        up_transport.close()


@pytest.mark.parametrize("seed", range(5))
def test_a_client_gets_a_response_to_its_own_question_or_servfail(seed: int) -> None:
    asyncio.run(_run(seed))


def test_an_upstream_that_echoes_over_tcp_is_servfail() -> None:
    """Over TCP the first message back is taken: the query echoed there is not the reply either."""
    async def main() -> None:
        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            n = struct.unpack("!H", await reader.readexactly(2))[0]
            writer.write(struct.pack("!H", n) + await reader.readexactly(n))
            await writer.drain()
            writer.close()
        server = await asyncio.start_server(echo, "127.0.0.1", 0, family=socket.AF_INET)
        port = server.sockets[0].getsockname()[1]
        node = DnsProxy(mesh(), Forwarder([Upstream("127.0.0.1", port)], TIMEOUT), DnsMetrics(CollectorRegistry()),
                        sockets=plain_sockets)
        pod = PodDns(node, PodProxy(PodInfo("uid-client", "client", "demo", "10.1.0.9", "node1", "client"),
                                    netns_fd=-1))
        q = dns.message.make_query("nothing-here.example.com.", "A")
        got: list[bytes] = []
        try:
            pod.handle(q.to_wire(), "tcp", got.append)
            await asyncio.wait(list(pod.forwards), timeout=TIMEOUT * 4)
        finally:
            pod.close()
            server.close()
        assert len(got) == 1
        r = dns.message.from_wire(got[0])
        assert r.flags & dns.flags.QR and r.id == q.id and r.question == q.question
        assert r.rcode() == dns.rcode.SERVFAIL
    asyncio.run(main())
