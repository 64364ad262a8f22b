"""The check a gRPC ext_authz provider (MeshConfig `envoyExtAuthzGrpc`) gets, and what its answer
means: `envoy.service.auth.v3.Authorization/Check` (ambit/api/ext_authz.proto, upstream's field
numbers), a unary call over HTTP/2, as Envoy's gRPC authorization client makes it
(source/extensions/filters/common/ext_authz/ext_authz_grpc_impl.cc, check_request_utils.cc).

The CheckRequest: source (the client's address and SPIFFE id) and destination (the original
destination address and this proxy's SPIFFE id) peers; the HTTP request's id (x-request-id),
method, every header (pseudo-headers included, repeated values joined by ","), path with the query,
host, scheme, protocol, size (Content-Length, else -1) and, with `includeRequestBodyInCheck`, the
buffered body (`raw_body` with packAsBytes, else `body` as UTF-8 text), with
`x-envoy-auth-partial-body` among the headers. No context extensions.

The answer: a call that failed (HTTP status not 200, grpc-status not 0, no or unreadable message)
is an error. CheckResponse.status code 0 allows, with `ok_response` edits: `headers` set the
request header (appended when `append` is true), `headers_to_remove`, `response_headers_to_add`
(by `append`, else by `append_action`). Any other code denies: `denied_response` status (403 when
unset, or not a status HTTP can answer with: outside 200..599), body and headers.

A protobuf string may hold anything, and these become header fields on both legs: an edit whose
name is not a token or whose value holds CR, LF or NUL (a header injected into the upstream
request or the client's response) makes the answer an error, as Envoy's `validate_mutations`
does; a denial's such headers are dropped (it still denies). Values are sent as their UTF-8 bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from google.protobuf.message import DecodeError

from ambit.api import ext_authz_pb2 as pb
from ambit.httpfields import wire_value
from ambit.model import ExtAuthzProvider
from waypoint.authz.extauthz import (
    ADD,
    ADD_IF_ABSENT,
    ALLOWED,
    DENIED,
    OVERWRITE_IF_EXISTS,
    REPLY_FRAMING,
    SET,
    TRACE_OK,
    TRACE_STATUS,
    TRACE_UNAUTHZ,
    CheckResult,
    error,
)
from waypoint.request import Downstream, RequestHead

PATH = "/envoy.service.auth.v3.Authorization/Check"
PARTIAL_BODY = "x-envoy-auth-partial-body"
_PROTOCOLS = {"1.0": "HTTP/1.0", "1.1": "HTTP/1.1", "2": "HTTP/2"}
_ACTIONS = {0: ADD, 1: ADD_IF_ABSENT, 2: SET, 3: OVERWRITE_IF_EXISTS}


def grpc_timeout(seconds: float) -> str:
    """A `grpc-timeout` value (ms; at most 8 digits, as the gRPC spec allows)."""
    ms = max(1, round(seconds * 1000))
    return f"{ms}m" if ms < 10**8 else f"{max(1, round(seconds))}S"


def check_message(head: RequestHead, down: Downstream, local_identity: str, request_id: str,
                  body: bytes | None = None, partial: bool = False, pack_as_bytes: bool = False) -> pb.CheckRequest:
    """The CheckRequest for `head`; `body`: the buffered body when the provider includes it."""
    req = pb.CheckRequest()
    a = req.attributes
    a.source.address.socket_address.address = down.source_ip
    a.source.principal = down.source_identity
    a.destination.address.socket_address.address = down.destination_ip or down.local_ip
    a.destination.address.socket_address.port_value = down.destination_port
    a.destination.principal = local_identity
    h = a.request.http
    h.id = request_id
    h.method = head.method
    hm = h.headers
    hm[":authority"] = head.authority
    hm[":method"] = head.method
    hm[":path"] = head.path
    hm[":scheme"] = head.scheme
    for k, _ in head.headers:
        if k not in hm:
            v = head.header(k)
            if v is not None:
                hm[k] = v
    h.path = head.path
    h.host = head.authority
    h.scheme = head.scheme
    h.protocol = _PROTOCOLS.get(head.version, f"HTTP/{head.version}")
    cl = head.header("content-length")
    h.size = int(cl) if cl is not None and cl.isdigit() else -1
    if body is not None:
        hm[PARTIAL_BODY] = "true" if partial else "false"
        if pack_as_bytes:
            h.raw_body = body
        else:
            h.body = body.decode("utf-8", "replace")
    return req


def check_request(p: ExtAuthzProvider, hostname: str, msg: pb.CheckRequest) -> tuple[RequestHead, bytes]:
    """The HTTP/2 request carrying `msg` to the provider's Service (`hostname`: its :authority, as
    Istio sets the gRPC service's authority), with the provider's timeout as its deadline."""
    data = msg.SerializeToString()
    framed = struct.pack(">BI", 0, len(data)) + data
    headers = [("content-type", "application/grpc"), ("te", "trailers"), ("grpc-timeout", grpc_timeout(p.timeout)),
               ("content-length", str(len(framed)))]
    return RequestHead("POST", PATH, hostname, "http", headers, "2", grpc=True), framed


_TOKEN = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz")     # RFC 9110 §5.6.2, lower-cased


def _field(key: str, value: str) -> tuple[str, str] | None:
    """(name, value) as the engine carries a header field, or None when the authorizer's key is
    not a field name or its value is not a field value (RFC 9110 §5.5: no CR, LF or NUL)."""
    name = key.lower()
    if not name or not _TOKEN.issuperset(name) or "\r" in value or "\n" in value or "\x00" in value:
        return None
    return name, wire_value(value)


def _header(headers: Sequence[tuple[str, str]] | None, name: str) -> str | None:
    return next((v for k, v in headers or () if k.lower() == name), None)


def interpret(status: int, headers: Sequence[tuple[str, str]], body: bytes,
              trailers: Sequence[tuple[str, str]] | None) -> CheckResult:
    """The Check call's HTTP/2 response as a `CheckResult`."""
    if status != 200:
        return error(f"Check call answered HTTP {status}")
    gs = _header(trailers, "grpc-status") or _header(headers, "grpc-status")
    if gs is None:
        return error("Check call ended without grpc-status")
    if gs != "0":
        msg = _header(trailers, "grpc-message") or _header(headers, "grpc-message") or ""
        return error(f"Check call failed: grpc-status {gs}{' ' + msg if msg else ''}")
    if len(body) < 5:
        return error("Check call answered no message")
    flag, length = struct.unpack(">BI", body[:5])
    if flag != 0:
        return error("Check call answered a compressed message (none was offered)")
    if len(body) < 5 + length:
        return error("Check call answered a truncated message")
    resp = pb.CheckResponse()
    try:
        resp.ParseFromString(body[5:5 + length])
    except DecodeError as e:
        return error(f"Check call answered an unreadable CheckResponse: {e}")
    if resp.status.code == 0:
        ok = resp.ok_response
        set_, add = [], []
        for o in ok.headers:
            f = _field(o.header.key, o.header.value)
            if f is None:
                return error(f"Check call answered an invalid header to set: {o.header.key[:64]!r}")
            (add if o.append.value else set_).append(f)
        down = []
        for o in ok.response_headers_to_add:
            f = _field(o.header.key, o.header.value)
            if f is None:
                return error(f"Check call answered an invalid response header: {o.header.key[:64]!r}")
            action = (ADD if o.append.value else SET) if o.HasField("append") else _ACTIONS.get(o.append_action, ADD)
            down.append((action, *f))
        return CheckResult(ALLOWED, upstream_set=tuple(set_), upstream_add=tuple(add),
                           upstream_remove=tuple(n.lower() for n in ok.headers_to_remove), downstream=tuple(down))
    d = resp.denied_response
    code = d.status.code if resp.HasField("denied_response") and 200 <= d.status.code <= 599 else 403
    fields = (_field(o.header.key, o.header.value) for o in d.headers)
    reply = tuple(f for f in fields if f is not None and f[0] not in REPLY_FRAMING)
    return CheckResult(DENIED, status=code, body=d.body.encode(), reply_headers=reply,
                       reason=f"authorizer denied (status code {resp.status.code}"
                              f"{': ' + resp.status.message if resp.status.message else ''})")


def span_tags(r: CheckResult) -> dict[str, str]:
    """The check span's ext_authz tag for a Check call's result, as Envoy's gRPC client sets it
    (GrpcClientImpl::onSuccess): ok or unauthorized for an answer; none for a failed call (its
    grpc.status_code and error say it)."""
    if r.result == ALLOWED:
        return {TRACE_STATUS: TRACE_OK}
    if r.result == DENIED:
        return {TRACE_STATUS: TRACE_UNAUTHZ}
    return {}
