"""The ClientHello SNI parser (waypoint/clienthello.py) on real hellos from Python's OpenSSL client,
cut, re-fragmented and broken: a complete hello gives its SNI, a prefix asks for more, anything else
is Malformed, never an exception, and undecided input stays bounded."""

from __future__ import annotations

import random
import ssl

import pytest

from waypoint.clienthello import MAX_BUFFER, NEED_MORE, Hello, HelloReader, Malformed, parse


def client_hello(server_name: str | None, **ctx_opts: object) -> bytes:
    """The first flight of a real TLS client (OpenSSL through the ssl module)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    for k, v in ctx_opts.items():
        setattr(ctx, k, v)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def records(hello: bytes, size: int) -> bytes:
    """The same handshake bytes re-cut into records of at most `size` bytes."""
    hs = hello[5:]
    return b"".join(b"\x16\x03\x01" + len(c).to_bytes(2, "big") + c
                    for c in (hs[i:i + size] for i in range(0, len(hs), size)))


def test_a_real_hello_gives_its_server_name_lower_cased() -> None:
    assert parse(client_hello("Pass.Example.COM")) == Hello("pass.example.com")
    assert parse(client_hello("a.b.example.com", maximum_version=ssl.TLSVersion.TLSv1_2)) == Hello("a.b.example.com")


def test_a_hello_without_sni_is_a_hello_with_no_name() -> None:
    assert parse(client_hello(None)) == Hello(None)


def test_every_prefix_of_a_hello_asks_for_more() -> None:
    hello = client_hello("pass.example.com")
    for n in range(len(hello)):
        assert parse(hello[:n]) == NEED_MORE, n


def test_a_hello_across_several_records_and_followed_by_more_bytes() -> None:
    hello = client_hello("pass.example.com")
    for size in (1, 7, 100, 16384):
        cut = records(hello, size)
        if len(cut) <= MAX_BUFFER:
            assert parse(cut) == Hello("pass.example.com"), size
    # bytes after the hello (TLS 1.3 early data, a second record) are not the parser's
    assert parse(hello + b"\x17\x03\x03\x00\x05hello") == Hello("pass.example.com")


@pytest.mark.parametrize(("data", "why"), [
    (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", "not a TLS handshake"),
    (b"\x16\x02\x00\x00\x05\x01\x00\x00\x01\x00", "not TLS"),
    (b"\x16\x03\x01\x00\x00", "handshake record of 0 bytes"),
    (b"\x16\x03\x01\x40\x01", "handshake record of 16385 bytes"),
    (b"\x16\x03\x01\x00\x04\x02\x00\x00\x00", "not a ClientHello"),
    (b"\x16\x03\x01\x00\x04\x01\xff\xff\xff", "over the 32768 byte limit"),
])
def test_what_is_no_client_hello_is_malformed(data: bytes, why: str) -> None:
    v = parse(data)
    assert isinstance(v, Malformed) and why in v.reason, v


def _bump(body: bytearray, pos: int, size: int, d: int) -> None:
    body[pos:pos + size] = (int.from_bytes(body[pos:pos + size], "big") + d).to_bytes(size, "big")


def _splice(hello: bytes, i: int, old_len: int, new: bytes) -> bytearray:
    """The hello with bytes [i, i+old_len) of its extensions replaced by `new`; the record, handshake
    and extensions-block lengths fixed up."""
    d = len(new) - old_len
    body = bytearray(hello[:i] + new + hello[i + old_len:])
    _bump(body, 3, 2, d)             # record length
    _bump(body, 6, 3, d)             # handshake length
    pos = 9 + 2 + 32                 # after the version and random: session id, suites, compression
    pos += 1 + body[pos]
    pos += 2 + int.from_bytes(body[pos:pos + 2], "big")
    pos += 1 + body[pos]
    _bump(body, pos, 2, d)           # the extensions block
    return body


def _with_sni_bytes(hello: bytes, old: bytes, new: bytes) -> bytes:
    """The hello with its SNI host name replaced by `new` (every length fixed up)."""
    i = hello.index(old)
    body = _splice(hello, i, len(old), new)
    for pos in (i - 2, i - 5, i - 7):       # host name, server_name list, extension lengths
        _bump(body, pos, 2, len(new) - len(old))
    return bytes(body)


def test_a_server_name_that_is_no_dns_name_is_malformed() -> None:
    hello = client_hello("pass.example.com")
    assert parse(_with_sni_bytes(hello, b"pass.example.com", b"pass.example.org")) == Hello("pass.example.org")
    for bad in (b"pass..example.com", b"pass.exam ple.com", b"p\xc3\xa4ss.example.com", b"-a.example.com"):
        v = parse(_with_sni_bytes(hello, b"pass.example.com", bad))
        assert isinstance(v, Malformed), bad


def test_a_duplicated_extension_and_broken_lengths_are_malformed() -> None:
    hello = client_hello("pass.example.com")
    i = hello.index(b"pass.example.com")
    ext = hello[i - 9:i + len(b"pass.example.com")]        # the whole server_name extension
    assert ext[:2] == b"\x00\x00"
    v = parse(bytes(_splice(hello, hello.index(ext), len(ext), ext + ext)))
    assert isinstance(v, Malformed) and "twice" in v.reason
    # the host name's length says one byte more than there is
    broken = bytearray(hello)
    broken[i - 1] += 1
    assert isinstance(parse(bytes(broken)), Malformed)


def test_random_corruption_never_raises() -> None:
    hello = client_hello("pass.example.com")
    rng = random.Random(7)
    for _ in range(3000):
        b = bytearray(hello)
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        cut = bytes(b[:rng.randint(0, len(b))])
        assert isinstance(parse(cut), (type(NEED_MORE), Hello, Malformed))


def test_undecided_input_is_bounded() -> None:
    # a hello declared at 20 KiB, sent in 1-byte records: more than MAX_BUFFER without a verdict
    hs = b"\x01" + (20000).to_bytes(3, "big") + bytes(20000)
    data = b"".join(b"\x16\x03\x01\x00\x01" + hs[i:i + 1] for i in range(0, 7000))
    assert parse(data[:1000]) == NEED_MORE
    v = parse(data)
    assert isinstance(v, Malformed) and "no complete ClientHello" in v.reason


def test_a_hello_fed_as_it_arrives_is_read_once_however_it_is_cut() -> None:
    """The listener feeds each read to one `HelloReader`: a hello cut into 1-byte records, one per
    read, gets the same verdict as whole, and so does undecided input past the bound. (Re-parsing
    everything read on each read was quadratic: seconds of CPU per connection for such a client.)"""
    hello = client_hello("pass.example.com")
    for size, step in ((1, 6), (1, 1), (7, 5), (100, 33), (16384, 1000)):
        cut = records(hello, size)
        r = HelloReader()
        verdicts = [r.feed(cut[i:i + step]) for i in range(0, len(cut), step)]
        assert verdicts[-1] == Hello("pass.example.com"), (size, step)
        assert all(v == NEED_MORE for v in verdicts[:-1]), (size, step)
        assert r.feed(b"\x17\x03\x03\x00\x01x") == Hello("pass.example.com"), "decided: stays"
    hs = b"\x01" + (20000).to_bytes(3, "big") + bytes(20000)
    data = b"".join(b"\x16\x03\x01\x00\x01" + hs[i:i + 1] for i in range(0, 7000))
    r = HelloReader()
    verdicts = [r.feed(data[i:i + 6]) for i in range(0, len(data), 6)]
    assert isinstance(verdicts[-1], Malformed) and "no complete ClientHello" in verdicts[-1].reason
    assert isinstance(HelloReader().feed(b"GET / HTTP/1.1\r\n"), Malformed)


def test_a_server_name_list_with_two_host_names_is_malformed() -> None:
    """RFC 6066 3: one name per type. The gateway routing by the first while a backend serves the
    last would route one name and serve another."""
    hello = client_hello("pass.example.com")
    i = hello.index(b"pass.example.com")
    second = b"\x00" + len(b"other.example.com").to_bytes(2, "big") + b"other.example.com"
    body = _splice(hello, i + len(b"pass.example.com"), 0, second)
    for pos in (i - 5, i - 7):      # the server_name list and extension lengths; the first name's stays
        _bump(body, pos, 2, len(second))
    v = parse(bytes(body))
    assert isinstance(v, Malformed) and "more than one host_name" in v.reason, v


@pytest.mark.parametrize("bad", [b"pass.example.com\n", b"pass\n.example.com", b"0\n"])
def test_a_server_name_with_a_newline_after_a_label_is_malformed(bad: bytes) -> None:
    """Regression (found by test_clienthello_fuzz.py): labels were checked with `re.match` and a
    pattern ending in `$`, which also matches before a final newline; "pass\\n.example.com" came back
    as the name, one a `*.example.com` TLSRoute took and the refusal log printed as two lines."""
    v = parse(_with_sni_bytes(client_hello("pass.example.com"), b"pass.example.com", bad))
    assert isinstance(v, Malformed) and "is not a DNS host name" in v.reason, v


def test_a_record_of_another_type_is_malformed_as_soon_as_its_first_byte_arrives_however_cut() -> None:
    """Regression (found by test_clienthello_fuzz.py's long run): after a complete record of an
    unfinished hello, the first bytes of a record of another type were only checked when the next
    read came, so one read said NeedMore where the same bytes in two reads said Malformed."""
    hello = records(client_hello("pass.example.com"), 100)
    first = 5 + int.from_bytes(hello[3:5], "big")
    data = hello[:first] + b"\x17\x03"          # a complete first record, then an application-data header
    whole = parse(data)
    r = HelloReader()
    assert r.feed(hello[:first]) == NEED_MORE
    cut = r.feed(b"\x17\x03")
    assert isinstance(whole, Malformed) and isinstance(cut, Malformed) and "record type 23" in whole.reason, whole
