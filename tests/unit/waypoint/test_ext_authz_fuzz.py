"""Fuzzing how the waypoint reads an external authorizer's answer (waypoint/authz/extauthz_http.py,
extauthz_grpc.py) and applies it (extauthz.py), with hypothesis: a malicious or broken authorizer.

What must hold for any answer (status, headers, body, trailers; for gRPC any framing and any
CheckResponse, including arbitrary protobuf bytes): `interpret` never raises and gives ALLOWED,
DENIED or ERROR; a denial's status is one HTTP can carry (200..599); every header it would write
(on the request upstream, on the response or the denial downstream) is a valid field, name a
token and value free of CR, LF and NUL, and encodable as the engine writes them (latin-1 bytes);
an allowing check never edits a header the proxy owns (framing, Host, pseudo-headers), and
`edit_request`/`edit_response` never raise. Three budgets, as tests/unit/dataplane/test_hbone_fuzz.py
(no long-run mode: the answers are small).
"""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ambit.api import ext_authz_pb2 as pb
from ambit.httpfields import PROXY_OWNED_HEADERS
from ambit.model import ExtAuthzProvider
from tests.support import fuzzing
from waypoint.authz import extauthz_grpc, extauthz_http
from waypoint.authz.extauthz import ALLOWED, DENIED, RESULTS, CheckResult, edit_request, edit_response

UNIT_EXAMPLES = 300
LONG_EXAMPLES = fuzzing.fuzz_examples(1000)
TOKEN = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz")
HTTP = ExtAuthzProvider("p", "http", "authz", 80, headers_to_upstream_on_allow=["x-*", "content-length", "host"],
                        headers_to_downstream_on_allow=["*-set", "x-*"])
HTTP_DENY = ExtAuthzProvider("p", "http", "authz", 80, headers_to_downstream_on_deny=["x-*"])
REQUEST = [("content-length", "10"), ("x-a", "1"), ("transfer-encoding", "chunked")]


def valid_field(name: str, value: str) -> bool:
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return bool(name) and TOKEN.issuperset(name) and not any(c in value for c in "\r\n\x00")


def checked(r: CheckResult) -> CheckResult:
    assert r.result in RESULTS, r
    if r.result == DENIED:
        assert 200 <= r.status <= 599, r.status
        assert isinstance(r.body, bytes)
    for k, v in (*r.upstream_set, *r.upstream_add, *r.reply_headers, *((k, v) for _, k, v in r.downstream)):
        assert valid_field(k, v), (k, v)
    if r.result == ALLOWED:
        edited = edit_request(REQUEST, r)
        assert [h for h in edited if h[0] in PROXY_OWNED_HEADERS] == REQUEST[::2], edited
        edit_response([("content-type", "text/plain")], r.downstream)
    return r


# --- strategies --------------------------------------------------------------------------------

names = st.one_of(st.sampled_from(["x-a", "X-B", "content-length", "transfer-encoding", "host", ":path", ":status",
                                   "connection", "set-cookie", "a-set", "", "x y", "x\r\ninjected", "é", "x\x00"]),
                  st.text(max_size=10))
values = st.one_of(st.sampled_from(["v", "", "0", "a\r\nx-injected: 1", "\n", "\x00", "é", "€", "\U0001F600",
                                    "v" * 2000]), st.text(max_size=10))
header_lists = st.lists(st.tuples(names, values), max_size=6)


@st.composite
def check_responses(draw: st.DrawFn) -> bytes:
    r = pb.CheckResponse()
    r.status.code = draw(st.integers(-(2**31), 2**31 - 1))
    r.status.message = draw(values)
    if draw(st.booleans()):
        for k, v in draw(header_lists):
            o = r.ok_response.headers.add()
            o.header.key, o.header.value = k, v
            if draw(st.booleans()):
                o.append.value = draw(st.booleans())
        r.ok_response.headers_to_remove.extend(n for n, _ in draw(header_lists))
        for k, v in draw(header_lists):
            o = r.ok_response.response_headers_to_add.add()
            o.header.key, o.header.value = k, v
            o.append_action = draw(st.integers(0, 2**31 - 1))
    else:
        d = r.denied_response
        d.status.code = draw(st.one_of(st.sampled_from([0, 200, 302, 401, 403, 599, 600]), st.integers(-(2**31), 2**31 - 1)))
        d.body = draw(values)
        for k, v in draw(header_lists):
            o = d.headers.add()
            o.header.key, o.header.value = k, v
    return r.SerializeToString()


@st.composite
def grpc_bodies(draw: st.DrawFn) -> bytes:
    msg = draw(st.one_of(check_responses(), st.binary(max_size=60)))
    flag = draw(st.sampled_from([0, 0, 1, 255]))
    length = len(msg) + draw(st.sampled_from([0, 0, 0, -1, 1, 2**31]))
    return struct.pack(">BI", flag, max(0, min(length, 2**32 - 1))) + msg + draw(st.binary(max_size=4))


grpc_status = st.sampled_from([[("grpc-status", "0")], [("grpc-status", "2"), ("grpc-message", "x")], [], None,
                               [("GRPC-STATUS", "0")], [("grpc-status", "0x")]])


# --- properties --------------------------------------------------------------------------------

parsed_names = st.one_of(st.sampled_from(["x-a", "X-B", "content-length", "transfer-encoding", "host", "connection",
                                          "set-cookie", "a-set", "x-envoy-auth-headers-to-remove"]),
                         st.text(alphabet=sorted(TOKEN), min_size=1, max_size=10))
parsed_values = st.one_of(st.sampled_from(["v", "", "0", "host, content-length, x-a", ":path", "\xe9\xff", "v" * 2000]),
                          st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=10))


@given(st.integers(200, 599), st.lists(st.tuples(parsed_names, parsed_values), max_size=6), st.binary(max_size=40),
       st.booleans())
@fuzzing.unit_budget(UNIT_EXAMPLES, too_slow_ok=False)
def test_any_http_authorizer_answer(status: int, headers: list[tuple[str, str]], body: bytes, on_deny: bool) -> None:
    """What the waypoint's HTTP legs can deliver (a final status, fields their parsers accept:
    a token name, a value of bytes without CR, LF or NUL), anything within that."""
    checked(extauthz_http.interpret(HTTP_DENY if on_deny else HTTP, status, headers, body))


@given(st.integers(0, 999), header_lists, grpc_bodies(), grpc_status)
@fuzzing.unit_budget(UNIT_EXAMPLES)
def test_any_grpc_authorizer_answer(status: int, headers: list[tuple[str, str]], body: bytes,
                                    trailers: Any) -> None:
    checked(extauthz_grpc.interpret(status if status % 3 else 200, headers, body, trailers))


@pytest.mark.fuzz
@given(grpc_bodies(), grpc_status)
@fuzzing.fuzz_budget(LONG_EXAMPLES)
def test_fuzz_grpc_check_responses_long(body: bytes, trailers: Any) -> None:
    checked(extauthz_grpc.interpret(200, [("content-type", "application/grpc")], body, trailers))
