"""Fuzzing ztunnel's DNS proxy codec (ztunnel/dns/wire.py, server.py) with hypothesis, no sockets.

What must hold for any message a pod sends, over UDP or in TCP's length-prefixed framing, and for
any reply an upstream sends back (ztunnel/dns/wire.py's docstring has the rules):
- nothing raises out of `PodDns.handle`, `_TcpConn.data_received` or `relay_reply` (which may
  raise ValueError alone: the forwarder's "not the reply"), and nothing hangs;
- a message is dropped only when it is under a header's 12 bytes, a response (QR set), or its
  header is unreadable; every other one gets exactly one reply;
- a reply parses, is a response (QR), carries the query's id, fits the client's limit (512 bytes
  or its EDNS size over UDP, 65,535 over TCP), and says NOERROR, NXDOMAIN (an upstream's), FORMERR,
  SERVFAIL, NOTIMP, or what the upstream said.
Three budgets, as tests/unit/dataplane/test_hbone_fuzz.py: the unit suite, `-m fuzz`
(`AMBIT_FUZZ_EXAMPLES`), and `python -m tests.unit.ztunnel.test_dns_fuzz --cases 100000`.
"""

from __future__ import annotations

import asyncio
import random
import socket
import sys
import time
from collections.abc import Iterator
from typing import Any

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from ambit.model import Service, ServicePort
from ambit.zds import PodInfo
from tests.support import fuzzing
from tests.unit.ztunnel.meshcfg import config, svc, wl
from ztunnel.dns.forwarder import UpstreamError
from ztunnel.dns.metrics import DnsMetrics
from ztunnel.dns.server import DnsProxy, PodDns, _TcpConn
from ztunnel.dns.upstream import TCP_MAX
from ztunnel.dns.wire import UDP_MIN, Query, relay_reply, upstream_query
from ztunnel.pods import PodProxy

UNIT_EXAMPLES = 300
LONG_EXAMPLES = fuzzing.fuzz_examples(800)
HEADER = 12
RCODES = {dns.rcode.NOERROR, dns.rcode.NXDOMAIN, dns.rcode.FORMERR, dns.rcode.SERVFAIL, dns.rcode.NOTIMP}
MESH_NAMES = ["reviews.demo.svc.cluster.local.", "reviews.", "reviews.demo.", "api.example.com.",
              "api.example.com.demo.svc.cluster.local.", "unknown.test.", "*.svc.cluster.local.", "."]


class ScriptedForwarder:
    """The forwarder, with the upstream's reply scripted: `reply(sent)` gives the bytes an
    upstream answers the query `sent` with (None: it never answers). Relayed as `Forwarder`
    relays them: `relay_reply`, whose ValueError is a failed attempt (SERVFAIL)."""

    def __init__(self) -> None:
        self.reply: Any = None

    async def forward(self, query: Query, tcp: bool, make: Any, max_size: int) -> bytes:
        sent = upstream_query(query, 4242)
        wire = self.reply(sent) if self.reply is not None else None
        if wire is None:
            raise UpstreamError("no upstream resolver configured")
        try:
            return relay_reply(sent, wire, query, max_size)
        except ValueError as e:
            raise UpstreamError(str(e)) from None


def _mesh() -> Any:
    reviews = wl("reviews", "10.1.0.5", ns="demo")
    entry = Service(name="api.example.com", namespace="demo", hostname="api.example.com", vips=["240.240.0.1"],
                    ports=[ServicePort(443, 443, "https")], kind="ServiceEntry", resolution="DNS")
    many = Service(name="many", namespace="demo", hostname="many.demo.svc.cluster.local",
                   vips=[f"10.97.{i // 250}.{i % 250}" for i in range(200)], ports=[ServicePort(80, 80, "http")])
    return config([reviews, wl("client", "10.1.0.9", ns="demo")],
                  [svc("reviews", "10.96.0.20", [reviews], ns="demo"), entry, many])


FORWARDER = ScriptedForwarder()
NODE = DnsProxy(_mesh(), FORWARDER, DnsMetrics(CollectorRegistry()), sockets=lambda _p: None)  # type: ignore[arg-type]
POD = PodProxy(PodInfo("uid-client", "client", "demo", "10.1.0.9", "node1", "client",
                       labels={"app": "client", "version": "v1"}), netns_fd=-1)
LOOP = asyncio.new_event_loop()


def check_reply(query: bytes, reply: bytes, limit: int) -> dns.message.Message:
    """A reply to `query`: parses, QR, the query's id, within `limit`, an expected rcode."""
    assert len(reply) <= limit, (len(reply), limit)
    r = dns.message.from_wire(reply, ignore_trailing=False, continue_on_error=False)
    assert r.flags & dns.flags.QR
    assert r.id == int.from_bytes(query[:2], "big")
    return r


def udp_limit(query: bytes) -> int:
    """The client's UDP limit, read independently of the code under test (None: unreadable)."""
    try:
        m = dns.message.from_wire(query)
    except Exception:   # noqa: BLE001
        return UDP_MIN
    return min(max(UDP_MIN, m.payload), TCP_MAX) if m.edns >= 0 else UDP_MIN


def expect_drop(query: bytes) -> bool | None:
    """True: the proxy must drop `query`; False: it must reply; None: either (a header that only
    dnspython's lenient parse can read)."""
    if len(query) < HEADER:
        return True
    if query[2] & 0x80:     # QR: a response
        return True
    return None


def handle_one(query: bytes, protocol: str, upstream: Any = None) -> list[bytes]:
    """One message through `PodDns.handle`, forwards awaited; the replies sent."""
    FORWARDER.reply = upstream
    pod = PodDns(NODE, POD)
    replies: list[bytes] = []

    async def go() -> None:
        pod.handle(query, protocol, replies.append)
        if pod.forwards:
            await asyncio.wait(list(pod.forwards), timeout=2.0)
        assert not pod.forwards, "a forward did not end"
    t0 = time.process_time()
    LOOP.run_until_complete(go())
    assert time.process_time() - t0 < 2.0, "a query took over 2 s of CPU"
    assert len(replies) <= 1, replies
    drop = expect_drop(query)
    if drop is True:
        assert replies == [], replies
    if replies:
        r = check_reply(query, replies[0], TCP_MAX if protocol == "tcp" else udp_limit(query))
        if upstream is None:
            assert r.rcode() in RCODES, dns.rcode.to_text(r.rcode())
    elif drop is None:
        # dropped although its header is whole: only a header the lenient parse cannot read
        try:
            head = dns.message.from_wire(query, continue_on_error=True)
        except Exception:   # noqa: BLE001 - unreadable: a drop is right
            head = None
        assert head is None or head.flags & dns.flags.QR, f"{query!r} was dropped"
    return replies


# --- strategies --------------------------------------------------------------------------------

label = st.one_of(st.sampled_from([b"reviews", b"demo", b"svc", b"cluster", b"local", b"*", b"api", b"example",
                                   b"com", b"A" * 63]), st.binary(min_size=1, max_size=63))


@st.composite
def names(draw: st.DrawFn) -> dns.name.Name:
    if draw(st.booleans()):
        return dns.name.from_text(draw(st.sampled_from(MESH_NAMES)))
    labels = draw(st.lists(label, max_size=6))
    try:
        return dns.name.Name([*labels, b""])
    except dns.name.NameTooLong:
        return dns.name.root


rdtypes = st.one_of(st.sampled_from([dns.rdatatype.A, dns.rdatatype.AAAA, dns.rdatatype.ANY, dns.rdatatype.CNAME,
                                     dns.rdatatype.TXT, dns.rdatatype.SRV, dns.rdatatype.PTR, dns.rdatatype.OPT,
                                     dns.rdatatype.TSIG, dns.rdatatype.AXFR]),
                    st.integers(min_value=0, max_value=65535))


@st.composite
def queries(draw: st.DrawFn) -> bytes:
    """A query dnspython builds: mesh names or arbitrary labels, any type and class, EDNS with
    any payload size and options, any opcode and flags, one question or several."""
    q = dns.message.make_query(draw(names()), draw(rdtypes), rdclass=draw(st.sampled_from([1, 3, 255, 254, 0, 4242])),
                               use_edns=draw(st.sampled_from([None, False, 0, 1])),
                               payload=draw(st.sampled_from([0, 1, 511, 512, 1232, 4096, 65535])),
                               want_dnssec=draw(st.booleans()),
                               options=[dns.edns.GenericOption(draw(st.integers(0, 65535)), draw(st.binary(max_size=20)))
                                        for _ in range(draw(st.integers(0, 2)))])
    q.id = draw(st.integers(0, 65535))
    q.flags = draw(st.integers(0, 0xFFFF)) & ~0x7800 & ~dns.flags.QR | (draw(st.sampled_from([0, 0, 0, 1, 2, 4, 5, 15])) << 11)
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2]))):
        q.question.append(dns.rrset.RRset(draw(names()), 1, draw(rdtypes)))
    if draw(st.booleans()) and q.question:
        q.question = []
    return q.to_wire()


def _count(rng: random.Random, b: bytearray, pos: int) -> None:
    """A header count, anything."""
    if len(b) >= HEADER:
        i = rng.choice([4, 6, 8, 10])
        b[i:i + 2] = rng.randrange(65536).to_bytes(2, "big")


def _pointer(rng: random.Random, b: bytearray, pos: int) -> None:
    """A compression pointer anywhere."""
    if len(b) > HEADER:
        b[pos:pos] = bytes([0xC0 | rng.randrange(64), rng.randrange(256)])


MUTATIONS = (fuzzing.set_byte, fuzzing.insert_random(8), fuzzing.delete(8), _count, _pointer, fuzzing.flip_bit)


def mutate(rng: random.Random, data: bytes) -> bytes:
    return fuzzing.mutate_bytes(rng, data, MUTATIONS, most=5)


@st.composite
def upstream_replies(draw: st.DrawFn) -> Any:
    """What an upstream answers a query with: a proper response (records, rcode, TC), mutated,
    another query's, or random bytes."""
    kind = draw(st.sampled_from(["good", "mutated", "random", "none", "query"]))
    rcode = draw(st.sampled_from([0, 2, 3, 5, 15]))
    n = draw(st.integers(0, 60))
    seed = draw(st.integers(0, 2**32))
    junk = draw(st.binary(max_size=200))

    def reply(sent: dns.message.Message) -> bytes | None:
        if kind == "none":
            return None
        if kind == "random":
            return junk
        if kind == "query":
            return sent.to_wire()
        r = dns.message.make_response(sent)
        r.set_rcode(rcode)
        if sent.question:
            q = sent.question[0]
            rrs = r.find_rrset(r.answer, q.name, 1, dns.rdatatype.TXT, create=True)
            for i in range(n):
                rrs.add(dns.rdata.from_text(1, dns.rdatatype.TXT, f'"{"x" * 40}{i}"'))
        wire = r.to_wire()
        return mutate(random.Random(seed), wire) if kind == "mutated" else wire
    reply.kind = kind  # type: ignore[attr-defined]
    return reply


# --- properties --------------------------------------------------------------------------------

@given(st.binary(max_size=600), st.sampled_from(["udp", "tcp"]))
@fuzzing.unit_budget(UNIT_EXAMPLES)
def test_random_bytes(data: bytes, protocol: str) -> None:
    handle_one(data, protocol)


@given(queries(), st.sampled_from(["udp", "tcp"]))
@fuzzing.unit_budget(UNIT_EXAMPLES)
def test_odd_but_well_formed_queries_are_answered(query: bytes, protocol: str) -> None:
    assert handle_one(query, protocol), "a well-formed query got no reply"


@given(queries(), st.integers(0, 2**32), st.sampled_from(["udp", "tcp"]))
@fuzzing.unit_budget(UNIT_EXAMPLES)
def test_mutated_queries(query: bytes, seed: int, protocol: str) -> None:
    handle_one(mutate(random.Random(seed), query), protocol)


@given(queries(), upstream_replies(), st.sampled_from(["udp", "tcp"]))
@fuzzing.unit_budget(UNIT_EXAMPLES)
def test_any_upstream_reply_is_relayed_within_the_limit_or_servfail(query: bytes, upstream: Any, protocol: str) -> None:
    replies = handle_one(query, protocol, upstream)
    if replies and upstream.kind in ("random", "none", "query"):
        assert dns.message.from_wire(replies[0]).rcode() in (dns.rcode.SERVFAIL, dns.rcode.FORMERR, dns.rcode.NOTIMP,
                                                               dns.rcode.NOERROR)


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.out = bytearray()
        self.closed = False

    def write(self, data: Any) -> None:
        self.out += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_write_buffer_size(self) -> int:
        return len(self.out)


def _frames(out: bytes) -> list[bytes]:
    msgs, i = [], 0
    while i < len(out):
        n = int.from_bytes(out[i:i + 2], "big")
        msgs.append(out[i + 2:i + 2 + n])
        assert len(msgs[-1]) == n, "a reply cut short"
        i += 2 + n
    return msgs


@given(st.lists(st.one_of(queries(), st.binary(max_size=40)), max_size=6), st.lists(st.integers(0, 4000), max_size=5),
       st.lists(st.integers(0, 65535), max_size=2))
@fuzzing.unit_budget(UNIT_EXAMPLES)
def test_tcp_framing(messages: list[bytes], cuts: list[int], bogus_lengths: list[int]) -> None:
    """Length-prefixed messages cut at random points (and lengths that lie): one reply per
    whole message the proxy answers, each a whole frame; nothing raises."""
    FORWARDER.reply = None
    wire = b"".join(len(m).to_bytes(2, "big") + m for m in messages) + b"".join(n.to_bytes(2, "big") for n in bogus_lengths)
    pod = PodDns(NODE, POD)

    async def go() -> _Transport:
        conn = _TcpConn(pod)
        t = _Transport()
        conn.connection_made(t)
        pos = 0
        for c in sorted({c % (len(wire) + 1) for c in cuts}) + [len(wire)]:
            conn.data_received(wire[pos:c])
            pos = c
        if pod.forwards:
            await asyncio.wait(list(pod.forwards), timeout=2.0)
        conn.connection_lost(None)
        return t
    t = LOOP.run_until_complete(go())
    replies = _frames(bytes(t.out))
    assert len(replies) <= len(messages)
    for r in replies:
        assert dns.message.from_wire(r).flags & dns.flags.QR


@pytest.mark.fuzz
@given(st.one_of(queries(), st.binary(max_size=600)), st.integers(0, 2**32), st.booleans(), upstream_replies(),
       st.sampled_from(["udp", "tcp"]))
@fuzzing.fuzz_budget(LONG_EXAMPLES)
def test_fuzz_dns_long(query: bytes, seed: int, mutated: bool, upstream: Any, protocol: str) -> None:
    handle_one(mutate(random.Random(seed), query) if mutated else query, protocol, upstream)


# --- the long local run ---------------------------------------------------------------------------

def _long_cases(rng: random.Random) -> Iterator[tuple[bytes, str]]:
    """Queries for mesh names, mutated, over UDP or TCP."""
    seeds = [dns.message.make_query(n, t, use_edns=e).to_wire() for n in MESH_NAMES
             for t in ("A", "AAAA", "TXT") for e in (None, 0)]
    while True:
        yield mutate(rng, rng.choice(seeds)), rng.choice(["udp", "tcp"])


def long_run(cases: int, seed: int) -> int:
    return fuzzing.long_run(cases, seed, _long_cases, lambda case: handle_one(*case))


if __name__ == "__main__":
    sys.exit(fuzzing.main(long_run, cases=100_000, setup=lambda: socket.setdefaulttimeout(1)))
