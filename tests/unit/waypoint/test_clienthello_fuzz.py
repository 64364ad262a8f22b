"""Fuzzing the ClientHello SNI parser of TLS passthrough and SNI routing (waypoint/clienthello.py).

What must hold for any bytes a client sends: `HelloReader.feed` never raises, never takes long,
and says NeedMore, Hello or Malformed; it never stays undecided past `MAX_BUFFER` bytes nor holds
more than it was fed; a decided verdict stays; a name it returns is a DNS host name (lower-case
ASCII labels, nothing else); however the bytes are cut into reads, the verdict is the same; and for
a real hello (Python's OpenSSL client, with and without SNI and ALPN, TLS 1.2 and 1.3, re-cut into
records of any size) it is exactly the name that was sent. Three budgets:
- the unit suite: a few hundred examples each (a few seconds);
- `-m fuzz`: `AMBIT_FUZZ_EXAMPLES` examples each (default 3,000);
- a long local run: `python -m tests.unit.waypoint.test_clienthello_fuzz --cases 1000000`.
"""

from __future__ import annotations

import functools
import random
import re
import ssl
import sys
import time
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.support import fuzzing
from waypoint.clienthello import MAX_BUFFER, NEED_MORE, Hello, HelloReader, Malformed, NeedMore, parse

UNIT_EXAMPLES = 300
LONG_EXAMPLES = fuzzing.fuzz_examples(3000)
DNS_NAME = re.compile(r"(?:[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\.)*[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")


@functools.lru_cache(maxsize=512)
def client_hello(server_name: str | None, alpn: tuple[str, ...] = (), tls12: bool = False) -> bytes:
    """The first flight of a real TLS client (OpenSSL through the ssl module, a MemoryBIO handshake)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    if tls12:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def records(hello: bytes, sizes: list[int]) -> bytes:
    """The hello's handshake bytes re-cut into records of the given sizes (cycled)."""
    hs, out, i, k = hello[5:], bytearray(), 0, 0
    while i < len(hs):
        n = max(1, sizes[k % len(sizes)]) if sizes else len(hs)
        out += b"\x16\x03\x01" + len(hs[i:i + n]).to_bytes(2, "big") + hs[i:i + n]
        i, k = i + n, k + 1
    return bytes(out) + hello[5 + len(hs):]


def feed(chunks: list[bytes]):
    """Feed `chunks` to one reader; assert the invariants on each step; the final verdict."""
    r = HelloReader()
    fed, decided = 0, None
    for chunk in chunks:
        t0 = time.process_time()
        v = r.feed(chunk)
        assert time.process_time() - t0 < 1.0, "feed took over 1 s of CPU"
        fed += len(chunk)
        assert isinstance(v, (NeedMore, Hello, Malformed)), v
        if decided is not None:
            assert v == decided, "a decided verdict changed"
        elif not isinstance(v, NeedMore):
            decided = v
        if isinstance(v, NeedMore):
            assert fed <= MAX_BUFFER, f"undecided after {fed} bytes"
            assert len(r._pending) + len(r._hs) <= fed, "holds more than it was fed"
        if isinstance(v, Hello) and v.server_name is not None:
            assert DNS_NAME.fullmatch(v.server_name) and len(v.server_name) <= 253, v.server_name
        if isinstance(v, Malformed):
            assert v.reason and "\n" not in v.reason, v
    return decided or NEED_MORE


def same_verdict(a: object, b: object) -> bool:
    return type(a) is type(b) and (not isinstance(a, Hello) or a == b)


def check(data: bytes, cuts: list[int]) -> object:
    whole = feed([data])
    pieces = feed(fuzzing.split(data, cuts))
    if len(data) <= MAX_BUFFER:
        assert same_verdict(whole, pieces), (whole, pieces)
    return whole


# --- strategies -------------------------------------------------------------------------------------

label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,14}[a-z0-9])?", fullmatch=True)
names = st.builds(lambda ls, tld, upper: ".".join([*ls, tld]).upper() if upper else ".".join([*ls, tld]),
                  st.lists(label, max_size=4), st.from_regex(r"[a-z][a-z0-9]{0,5}", fullmatch=True), st.booleans())
alpns = st.sampled_from([(), ("h2",), ("h2", "http/1.1"), ("x" * 200,)])
cuts = st.lists(st.integers(min_value=0, max_value=100_000), max_size=6)


def _nudge_length(rng: random.Random, b: bytearray, pos: int) -> None:
    """A length field nudged: the parser's favourite target."""
    if len(b) > 8:
        i = rng.randrange(len(b) - 1)
        v = (int.from_bytes(b[i:i + 2], "big") + rng.choice((-2, -1, 1, 2, 256, -256))) % 65536
        b[i:i + 2] = v.to_bytes(2, "big")


# (the splice of itself: a repeated extension)
MUTATIONS = (fuzzing.set_byte, fuzzing.flip_bit, fuzzing.insert_random(8), fuzzing.delete(16), _nudge_length,
             fuzzing.splice(64, longer_than=8))


def mutate(rng: random.Random, data: bytes) -> bytes:
    return fuzzing.mutate_bytes(rng, data, MUTATIONS, most=5)


@given(st.one_of(st.none(), names), alpns, st.booleans(), st.lists(st.integers(1, 400), max_size=3), cuts)
@fuzzing.unit_budget(UNIT_EXAMPLES)
def test_a_real_hello_gives_exactly_the_name_sent_however_cut(name: str | None, alpn: tuple[str, ...], tls12: bool,
                                                              sizes: list[int], cuts_: list[int]) -> None:
    hello = client_hello(name, alpn, tls12)
    data = records(hello, sizes)
    want = Hello(name.lower() if name else None)
    if len(data) <= MAX_BUFFER:
        assert feed([data]) == want
        assert feed(fuzzing.split(data, cuts_)) == want
        assert feed(fuzzing.split(data + b"\x17\x03\x03\x00\x05hello", cuts_)) == want    # what follows is not ours
        assert parse(data[:len(data) - 1]) == NEED_MORE


@given(st.binary(max_size=600), cuts)
@fuzzing.unit_budget(UNIT_EXAMPLES, too_slow_ok=False)
def test_random_bytes_are_need_more_or_malformed(data: bytes, cuts_: list[int]) -> None:
    check(data, cuts_)
    check(b"\x16\x03\x01" + data, cuts_)       # past the record type check


@given(st.one_of(st.none(), names), alpns, st.booleans(), st.integers(0, 2**32), cuts)
@fuzzing.unit_budget(UNIT_EXAMPLES)
def test_mutated_real_hellos_never_raise_and_name_only_dns_names(name: str | None, alpn: tuple[str, ...], tls12: bool,
                                                                 seed: int, cuts_: list[int]) -> None:
    check(mutate(random.Random(seed), client_hello(name, alpn, tls12)), cuts_)


def _spliced(t: tuple[str, bytes, int]) -> bytes:
    name, junk, at = t
    raw = name.encode()
    at %= len(raw) + 1
    return raw[:at] + junk + raw[at:]


# names, bytes, and names with a character that must not be in one (at the end of a label too)
hosts = st.one_of(names.map(str.encode), st.binary(min_size=1, max_size=70),
                  st.tuples(names, st.sampled_from([b"\n", b"\r\n", b"\x00", b" ", b".", b"..", b"\xff", b"-", b"*",
                                                    b"\xc3\xa4", b"/", b":443", b"a" * 64]),
                            st.integers(0, 100)).map(_spliced))


@given(hosts, st.integers(1, 300), st.integers(0, 2**32))
@fuzzing.unit_budget(UNIT_EXAMPLES)
def test_a_server_name_of_any_bytes_is_returned_only_when_it_is_a_dns_name(host: bytes, size: int, seed: int) -> None:
    """The name's bytes replaced (every length fixed up): returned as sent, lower-cased, when they
    are a DNS host name; Malformed otherwise."""
    sent = "pass.example.com"
    hello = client_hello(sent)
    i = hello.index(sent.encode())
    body = bytearray(hello[5:i] + host + hello[i + len(sent):])
    d = len(host) - len(sent)

    def bump(pos: int, size_: int) -> None:
        body[pos:pos + size_] = (int.from_bytes(body[pos:pos + size_], "big") + d).to_bytes(size_, "big")

    j = i - 5                               # the name's offset in the handshake bytes
    for pos in (j - 2, j - 5, j - 7):       # the host name, server_name list and extension lengths
        bump(pos, 2)
    bump(1, 3)                              # the handshake message
    pos = 4 + 2 + 32
    pos += 1 + body[pos]
    pos += 2 + int.from_bytes(body[pos:pos + 2], "big")
    pos += 1 + body[pos]
    bump(pos, 2)                            # the extensions block
    data = records(b"\x16\x03\x01\x00\x00" + bytes(body), [size])
    v = feed([data])
    try:
        text = host.decode("ascii").lower()
    except UnicodeDecodeError:
        text = None
    if text is not None and len(text) <= 253 and DNS_NAME.fullmatch(text):
        assert v == Hello(text), (host, v)
    else:
        assert isinstance(v, Malformed), (host, v)
    del seed


@pytest.mark.fuzz
@given(st.one_of(st.none(), names), alpns, st.booleans(), st.integers(0, 2**32), cuts)
@fuzzing.fuzz_budget(LONG_EXAMPLES)
def test_fuzz_mutated_hellos_long(name: str | None, alpn: tuple[str, ...], tls12: bool, seed: int,
                                  cuts_: list[int]) -> None:
    check(mutate(random.Random(seed), client_hello(name, alpn, tls12)), cuts_)


@pytest.mark.fuzz
@given(st.binary(max_size=2000), cuts)
@fuzzing.fuzz_budget(LONG_EXAMPLES)
def test_fuzz_random_records_long(data: bytes, cuts_: list[int]) -> None:
    check(b"\x16\x03\x01" + data, cuts_)


# --- the long local run -----------------------------------------------------------------------------

def _long_cases(rng: random.Random) -> Iterator[tuple[bytes, list[int]]]:
    """Mutated real hellos (and the same re-cut into records), each cut into up to four reads."""
    seeds = [client_hello(n, a, t) for n in (None, "pass.example.com", "a.b")
             for a in ((), ("h2", "http/1.1")) for t in (False, True)]
    seeds += [records(s, [rng.randint(1, 300)]) for s in seeds]
    while True:
        data = mutate(rng, rng.choice(seeds))
        yield data, [rng.randrange(len(data) + 1) for _ in range(rng.randrange(4))]


def long_run(cases: int, seed: int) -> int:
    return fuzzing.long_run(cases, seed, _long_cases, lambda case: check(*case))


if __name__ == "__main__":
    sys.exit(fuzzing.main(long_run, cases=1_000_000))
