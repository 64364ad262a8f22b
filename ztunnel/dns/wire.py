"""DNS messages in and out, through dnspython (pure: bytes in, bytes out; nothing parsed by hand).

What a query gets before any lookup (Istio ztunnel's handler.rs, with one deviation):
- not a DNS message at all (under a header's 12 bytes): dropped, nothing can be answered;
- a header that parses but a body that does not: FORMERR, with the query's id;
- a response (QR set): dropped. Istio answers FORMERR; answering responses lets two servers that
  both do bounce errors at each other for ever, and a pod can aim spoofed ones at us;
- an opcode other than QUERY (NOTIFY, UPDATE, ...): NOTIMP;
- not exactly one question: FORMERR.
A reply over UDP fits the client's limit (512 bytes, or its EDNS payload size): past it the
answers are left out and TC is set, and the client asks again over TCP (RFC 1035, 2671).
"""

from __future__ import annotations

from dataclasses import dataclass

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
from dns.rdtypes.ANY.CNAME import CNAME
from dns.rdtypes.IN.A import A
from dns.rdtypes.IN.AAAA import AAAA

from ztunnel.dns.lookup import Answer
from ztunnel.dns.names import Labels, labels_of, to_name
from ztunnel.dns.upstream import TCP_MAX

HEADER_SIZE = 12
UDP_MIN = 512           # what every client accepts over UDP without EDNS
SERVFAIL = dns.rcode.SERVFAIL
OUR_PAYLOAD = 1232      # the EDNS payload size we advertise (DNS flag day 2020's safe size)


@dataclass(frozen=True, slots=True)
class Query:
    """A query ztunnel may answer or forward. `qname` is None when a label is not text (forwarded:
    no mesh host has one)."""

    message: dns.message.Message
    qname: Labels | None
    rdtype: int
    rdclass: int

    @property
    def udp_limit(self) -> int:
        """The largest reply the client takes over UDP."""
        m = self.message
        return min(max(UDP_MIN, m.payload), TCP_MAX) if m.edns >= 0 else UDP_MIN

    @property
    def type_name(self) -> str:
        """The query type as Istio's `request_query_type` label writes it ("a", "aaaa", ...)."""
        return dns.rdatatype.to_text(self.rdtype).lower()

    @property
    def name_text(self) -> str:
        return self.message.question[0].name.to_text()


def parse(wire: bytes) -> Query | bytes | None:
    """The query in `wire`; or the bytes of an immediate error reply; or None: drop it."""
    if len(wire) < HEADER_SIZE:
        return None
    try:
        msg = dns.message.from_wire(wire)
    except dns.exception.DNSException:
        return _formerr(wire)
    except Exception:   # noqa: BLE001 - whatever a hostile body makes the parser raise, never a crash
        return _formerr(wire)
    if msg.flags & dns.flags.QR:
        return None
    if msg.opcode() != dns.opcode.QUERY:
        return error_reply(msg, dns.rcode.NOTIMP, UDP_MIN)
    if len(msg.question) != 1:
        return error_reply(msg, dns.rcode.FORMERR, UDP_MIN)
    q = msg.question[0]
    try:
        qname: Labels | None = labels_of(q.name)
    except ValueError:
        qname = None
    return Query(msg, qname, q.rdtype, q.rdclass)


def _formerr(wire: bytes) -> bytes | None:
    """FORMERR for a message whose header parses (its id and RD echoed), else None."""
    try:
        head = dns.message.from_wire(wire, continue_on_error=True)
    except Exception:   # noqa: BLE001 - the header itself is unreadable: nothing to reply to
        return None
    if head.flags & dns.flags.QR:
        return None
    reply = dns.message.Message(id=head.id)
    reply.flags = dns.flags.QR | dns.flags.RA | (head.flags & dns.flags.RD)
    reply.set_rcode(dns.rcode.FORMERR)
    return reply.to_wire()


def _response(msg: dns.message.Message) -> dns.message.Message:
    return dns.message.make_response(msg, recursion_available=True, our_payload=OUR_PAYLOAD)


def error_reply(msg: dns.message.Message, rcode: dns.rcode.Rcode, max_size: int) -> bytes:
    """`rcode` for the query `msg` (not authoritative)."""
    r = _response(msg)
    r.set_rcode(rcode)
    return r.to_wire(max_size=max_size, prefer_truncation=True)


def answer_reply(query: Query, answer: Answer, ttl: int, max_size: int) -> bytes:
    """The authoritative reply for a mesh host: the CNAME (when the match stripped a search
    domain), then one A or AAAA record per address; TC and no records past `max_size`."""
    r = _response(query.message)
    r.flags |= dns.flags.AA
    asked = query.message.question[0].name
    if answer.cname is not None:
        r.answer.append(_rrset(asked, dns.rdatatype.CNAME, ttl,
                               [CNAME(dns.rdataclass.IN, dns.rdatatype.CNAME, to_name(answer.cname))]))
    if answer.addresses:
        owner = to_name(answer.owner) if answer.cname is not None else asked
        cls = AAAA if query.rdtype == dns.rdatatype.AAAA else A
        r.answer.append(_rrset(owner, query.rdtype, ttl,
                               [cls(dns.rdataclass.IN, query.rdtype, ip) for ip in answer.addresses]))
    return r.to_wire(max_size=max_size, prefer_truncation=True)


def _rrset(owner: dns.name.Name, rdtype: int, ttl: int, rdatas: list[dns.rdata.Rdata]) -> dns.rrset.RRset:
    """Records made from their values (not from text, which costs a third of an answer)."""
    rrset = dns.rrset.RRset(owner, dns.rdataclass.IN, rdtype)
    rrset.update_ttl(ttl)
    for rd in rdatas:
        rrset.add(rd)
    return rrset


def upstream_query(query: Query, new_id: int) -> dns.message.Message:
    """The query as sent upstream: the client's, under an id of ours (a spoofed reply must guess
    it as well as the socket's random port)."""
    m = dns.message.from_wire(query.message.to_wire())
    m.id = new_id
    return m


def relay_reply(sent: dns.message.Message, reply_wire: bytes, client: Query, max_size: int) -> bytes:
    """The upstream's reply to `sent`, for the client: under the client's id, within `max_size`
    (TC kept or set). ValueError when `reply_wire` is not the reply to `sent`."""
    try:
        r = dns.message.from_wire(reply_wire)
    except Exception as e:  # noqa: BLE001 - the upstream's bytes are as untrusted as a client's
        raise ValueError(f"unreadable reply: {e}") from None
    if not sent.is_response(r):
        raise ValueError("not the reply to the query sent")
    if not r.question:
        # an error without its question (is_response allows it for FORMERR, SERVFAIL, NOTIMP and
        # REFUSED): the client gets that rcode for its own question, and none of the reply's records
        return error_reply(client.message, r.rcode(), max_size)
    if len(r.question) != len(sent.question):
        # is_response compares the questions as sets: the one asked, twice, passed
        raise ValueError(f"the reply has {len(r.question)} questions, not the one sent")
    r.id = client.message.id
    return r.to_wire(max_size=max_size, prefer_truncation=True)

