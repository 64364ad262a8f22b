"""Fuzzing what ztunnel's DNS proxy makes of its UPSTREAM's replies (ztunnel/dns/wire.py
`relay_reply`, the forwarder's `_reply_or_none`), sans-IO: the bytes a resolver (or someone spoofing
one) sends back for a query forwarded on a pod's behalf.

What must hold for any reply: `relay_reply` raises ValueError (a reply the forwarder drops: it
keeps waiting over UDP, tries the next upstream over TCP) or returns the client's reply, never
another exception (which turned the whole exchange into a SERVFAIL and a logged traceback), never
slowly; a reply returned carries the client's id, QR, the client's opcode and exactly the client's
question (the pod never gets an answer for a question it did not ask), and fits the client's
limit. Replies: real responses (answers, CNAME chains, EDNS, TC, every rcode) with wrong ids,
other questions, duplicated and empty question sections; then bytes mutated, compression pointers
aimed in loops and past the end, counts set huge; and random bytes. Three budgets:
- the unit suite: a few hundred examples each (a few seconds);
- `-m fuzz`: `AMBIT_FUZZ_EXAMPLES` examples each (default 3,000);
- a long local run: `python -m tests.unit.ztunnel.test_dns_upstream_fuzz --cases 300000`.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Iterator

import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.support import fuzzing
from ztunnel.dns.forwarder import _reply_or_none
from ztunnel.dns.upstream import TCP_MAX
from ztunnel.dns.wire import Query, parse, relay_reply, upstream_query

UNIT_EXAMPLES = 300
LONG_EXAMPLES = fuzzing.fuzz_examples(3000)
SENT_ID = 0x4242


def client_query(name: str, rdtype: str, edns: bool, client_id: int = 7) -> Query:
    m = dns.message.make_query(name, rdtype, use_edns=0 if edns else None, payload=4096 if edns else None)
    m.id = client_id
    q = parse(m.to_wire())
    assert isinstance(q, Query)
    return q


QUERIES = [client_query("example.com.", "A", False), client_query("Example.ORG.", "AAAA", True),
           client_query("x.svc.cluster.local.", "SRV", True), client_query("a" * 63 + ".b.", "TXT", False)]


def sent_for(q: Query) -> dns.message.Message:
    return upstream_query(q, SENT_ID)


def check(q: Query, data: bytes, max_size: int) -> bytes | None:
    """Relay `data` as the reply to `q`'s forwarded query; the invariants; the reply or None."""
    sent = sent_for(q)
    t0 = time.process_time()
    try:
        out = relay_reply(sent, data, q, max_size)
    except ValueError:
        out = None
    assert time.process_time() - t0 < 1.0, "relay_reply took over 1 s of CPU"
    again = _reply_or_none(sent, q, max_size, data)
    assert (again is None) == (out is None)
    if out is None:
        return None
    # (an RRset's records come out in set order: compare what the bytes say, not the bytes)
    assert dns.message.from_wire(again) == dns.message.from_wire(out)
    assert len(out) <= max_size, (len(out), max_size)
    r = dns.message.from_wire(out)
    assert r.id == q.message.id and r.flags & dns.flags.QR
    assert r.opcode() == q.message.opcode()
    assert [(x.name, x.rdtype, x.rdclass) for x in r.question] == \
           [(x.name, x.rdtype, x.rdclass) for x in q.message.question], (r.question, q.message.question)
    return out


# --- replies --------------------------------------------------------------------------------------

def response(q: Query, *, rid: int = SENT_ID, question: str | None = None, rcode: int = 0, answers: int = 1,
             cname: bool = False, tc: bool = False, edns: bool = False, extra_question: bool = False,
             no_question: bool = False) -> bytes:
    sent = sent_for(q)
    r = dns.message.make_response(sent, our_payload=1232)
    r.id = rid
    if question is not None:
        r.question = [dns.rrset.RRset(dns.name.from_text(question), sent.question[0].rdclass, sent.question[0].rdtype)]
    if extra_question:
        r.question = [*r.question, r.question[0]]
    if no_question:
        r.question = []
    r.set_rcode(rcode)
    if tc:
        r.flags |= dns.flags.TC
    if not edns:
        r.use_edns(False)
    owner = sent.question[0].name
    if cname:
        target = dns.name.from_text("target.example.net.")
        r.answer.append(dns.rrset.from_text(owner, 60, "IN", "CNAME", target.to_text()))
        owner = target
    if answers:
        r.answer.append(dns.rrset.from_text_list(owner, 60, "IN", "A", [f"10.0.{i // 250}.{i % 250}"
                                                                         for i in range(answers)]))
    r.additional.append(dns.rrset.from_text("other.example.", 60, "IN", "A", "10.9.9.9"))
    return r.to_wire()


# the arguments of `response`, drawn; the message is made in the test (dnspython draws its ids from
# `random`, which hypothesis wants kept out of strategies)
queries = st.sampled_from(QUERIES)
replies = st.tuples(queries, st.fixed_dictionaries(dict(
    rid=st.sampled_from([SENT_ID, SENT_ID ^ 1, 0]),
    question=st.one_of(st.none(), st.sampled_from(["example.com.", "EXAMPLE.com.", "evil.example.", "."])),
    rcode=st.sampled_from([0, 1, 2, 3, 4, 5, 9, 16]),
    answers=st.integers(0, 40),
    cname=st.booleans(), tc=st.booleans(), edns=st.booleans(),
    extra_question=st.booleans(), no_question=st.booleans(),
)))
max_sizes = st.sampled_from([512, 1232, 4096, TCP_MAX])


def _inside(rng: random.Random, b: bytearray) -> int:
    return rng.randrange(max(len(b), 1))


def _truncate(rng: random.Random, b: bytearray, pos: int) -> None:
    """Truncated."""
    del b[pos:pos + rng.randint(1, 16)]


def _count(rng: random.Random, b: bytearray, pos: int) -> None:
    """A count made huge or wrong."""
    if len(b) > 12:
        i = 4 + 2 * rng.randrange(4)
        b[i:i + 2] = (rng.choice((0xFFFF, 0, 1, 2, int.from_bytes(b[i:i + 2], "big") + 1)) % 65536).to_bytes(2, "big")


def _pointer(rng: random.Random, b: bytearray, pos: int) -> None:
    """A compression pointer: at itself, forward, past the end."""
    if len(b) > 12:
        target = rng.choice((pos, pos + 2, 12, len(b) + 10, rng.randrange(0x3FFF)))
        b[pos:pos + 2] = (0xC000 | (target & 0x3FFF)).to_bytes(2, "big")


def _flags(rng: random.Random, b: bytearray, pos: int) -> None:
    """The flags."""
    if len(b) > 12:
        b[2] ^= 1 << rng.randrange(8)
        b[3] ^= 1 << rng.randrange(8)


MUTATIONS = (fuzzing.set_byte, fuzzing.flip_bit, _truncate, _count, _pointer, fuzzing.insert_random(8), _flags)


def mutate(rng: random.Random, data: bytes) -> bytes:
    return fuzzing.mutate_bytes(rng, data, MUTATIONS, most=4, at=_inside)


@given(replies, max_sizes)
@fuzzing.unit_budget(UNIT_EXAMPLES)
def test_a_reply_is_relayed_only_for_the_question_asked(reply: tuple[Query, dict], max_size: int) -> None:
    q, kw = reply
    check(q, response(q, **kw), max_size)


@given(replies, max_sizes, st.integers(0, 2**32))
@fuzzing.unit_budget(UNIT_EXAMPLES)
def test_mutated_replies_are_dropped_or_relayed_never_raised(reply: tuple[Query, dict], max_size: int,
                                                             seed: int) -> None:
    q, kw = reply
    check(q, mutate(random.Random(seed), response(q, **kw)), max_size)


@given(queries, st.binary(max_size=200), max_sizes)
@fuzzing.unit_budget(UNIT_EXAMPLES, too_slow_ok=False)
def test_random_bytes_behind_the_right_header_are_dropped_or_relayed(q: Query, body: bytes, max_size: int) -> None:
    check(q, SENT_ID.to_bytes(2, "big") + b"\x81\x80" + body, max_size)
    check(q, body, max_size)


@pytest.mark.fuzz
@given(replies, max_sizes, st.integers(0, 2**32))
@fuzzing.fuzz_budget(LONG_EXAMPLES)
def test_fuzz_mutated_replies_long(reply: tuple[Query, dict], max_size: int, seed: int) -> None:
    q, kw = reply
    check(q, mutate(random.Random(seed), response(q, **kw)), max_size)


# --- the long local run ----------------------------------------------------------------------------

def _long_cases(rng: random.Random) -> Iterator[tuple[Query, bytes, int]]:
    """Real replies to each query, mutated, relayed within a random limit."""
    seeds = [(q, response(q, answers=n, cname=c, edns=e, tc=t)) for q in QUERIES for n in (0, 1, 30)
             for c in (False, True) for e in (False, True) for t in (False, True)]
    while True:
        q, data = rng.choice(seeds)
        yield q, mutate(rng, data), rng.choice((512, 1232, TCP_MAX))


def long_run(cases: int, seed: int) -> int:
    return fuzzing.long_run(cases, seed, _long_cases, lambda case: check(*case))


if __name__ == "__main__":
    sys.exit(fuzzing.main(long_run, cases=300_000))
