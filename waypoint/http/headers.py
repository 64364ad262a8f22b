"""Header rules a proxy applies between its two legs (pure functions).

- Hop-by-hop headers describe one connection, not the message (RFC 9110 §7.6.1): `Connection` and
  every header it names, `Keep-Alive`, `Proxy-Connection`, `Proxy-Authenticate`,
  `Proxy-Authorization`, `TE` (except `TE: trailers`, which gRPC needs on HTTP/2), `Transfer-Encoding`
  (each leg frames its own body), `Upgrade` (kept only on an upgrade the proxy passes through) and
  `HTTP2-Settings` (RFC 7540 §3.2.1: it belongs to the h2c upgrade of one connection).
  HTTP/2 forbids all of them on the wire (RFC 9113 §8.2.2), so they go on both translations too.
- Upgrades: only WebSocket is tunnelled, as Istio configures Envoy (`upgrade_configs`: websocket);
  `Upgrade: h2c` is stripped and the request served as HTTP/1.1 (Envoy's HTTP/1 codec: "removing
  unsupported h2c upgrade headers", envoyproxy/envoy#7981): passed on, an h2c-capable backend's
  101 would turn the connection into HTTP/2 straight to it, past routing and authorization. Any
  other upgrade gets 403, as Envoy answers one it is not configured for (`upgrade_failed`).
- The authority (Host, or absolute-form's host) must be RFC 3986's `host [":" port]` with no
  userinfo (RFC 9110 §4.2.4) and a port up to 65535 (`valid_authority`); RFC 9112 §3.2 asks a 400
  for anything else.
- `x-request-id` is kept when present and generated (a UUID4) when absent, as Envoy does for a
  request it treats as internal (the waypoint's HCM sets `use_remote_address: false`).
- W3C `traceparent`/`tracestate` and B3 `x-b3-*` pass untouched. Only a configured tracer adds or
  rewrites them (waypoint/telemetry/tracing_sdk.py), as Envoy injects a context only when its HCM
  has one: a waypoint without tracing that added an unsampled `traceparent` to every request told
  each app's parent-based sampler (OpenTelemetry's default) never to trace.
- `x-forwarded-proto` is set to the downstream scheme when the client did not send one.

An ingress gateway's clients (from outside the mesh) are sanitized first, as an edge Envoy does:
their x-request-id is replaced, x-forwarded-proto set from the connection, ... (waypoint/http/edge.py).
"""

from __future__ import annotations

import random as _random
import re
from collections.abc import Iterable
from operator import itemgetter

HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "proxy-authenticate",
                        "proxy-authorization", "te", "transfer-encoding", "upgrade", "http2-settings"})
_NONE: frozenset[str] = frozenset()
_CONNECTION_OPTIONS = frozenset({"upgrade", "close", "keep-alive"})   # Connection tokens that name no header
_CONNECTION_ONLY = frozenset({"connection"})
# RFC 4122 version 4: the variant bits 10 and the version nibble 4, as uuid.UUID(version=4) sets them
_UUID_CLEAR = ~((0xC000 << 48) | (0xF000 << 64))
_UUID_V4 = (0x8000 << 48) | (4 << 76)
# Informational (1xx) heads one upstream response may carry before its final head (103 Early Hints
# repeated, 100 Continue): they are dropped, not relayed, and each is bounded like a final head;
# more of them is 502 UPE, so an upstream streaming 1xx heads cannot keep the proxy parsing for ever.
MAX_INFORMATIONAL = 16
# a header's name: map it over a header list to test the names in C (no bytecode per header)
header_name = itemgetter(0)
TUNNELLED_UPGRADES = frozenset({"websocket"})   # Upgrade values relayed after a 101 (Istio's HCM)
H2C = "h2c"
_PORT = r"(?::(?:[0-9]{0,4}|[0-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?"
# RFC 3986 §3.2.2 host: IP-literal (IPv6 or IPvFuture) or reg-name (IPv4 is one), then the port
_AUTHORITY = re.compile(
    r"(?:\[(?:[0-9A-Fa-f:.]+|[vV][0-9A-Fa-f]+\.[A-Za-z0-9._~!$&'()*+,;=:-]+)\]"
    r"|(?:[A-Za-z0-9._~!$&'()*+,;=-]|%[0-9A-Fa-f]{2})*)" + _PORT)


# Authorities `valid_authority` accepted, keyed on the exact text: a waypoint sees few (its
# Services' names), and the full match costs ~0.7 µs per request, a set test ~30 ns. Only valid
# ones are kept, at most _KNOWN_MAX of at most _KNOWN_LEN characters (then it starts over), so
# clients sending many distinct Hosts cost memory bounded by a few hundred KB and nothing skips
# the check. Callers test `authority in known_authorities` first.
known_authorities: set[str] = set()
_KNOWN_MAX = 512
_KNOWN_LEN = 255


def valid_authority(authority: str) -> bool:
    """Is `authority` a `host [":" port]` (see the module docstring)? One regex match in C, or a
    set test for one already accepted."""
    if authority in known_authorities:
        return True
    if _AUTHORITY.fullmatch(authority) is None:
        return False
    if len(authority) <= _KNOWN_LEN:
        if len(known_authorities) >= _KNOWN_MAX:
            known_authorities.clear()
        known_authorities.add(authority)
    return True


def upgrade_value(headers: Iterable[tuple[str, str]]) -> str:
    """The request's `Upgrade` value, trimmed and lower-case, several fields joined with ","
    (compared whole, as Envoy compares it)."""
    return ",".join(v.strip() for k, v in headers if k == "upgrade").lower()


def connection_tokens(headers: Iterable[tuple[str, str]]) -> set[str]:
    """The lower-case names listed in `Connection` headers."""
    out: set[str] = set()
    for k, v in headers:
        if k == "connection":
            out.update(t.strip().lower() for t in v.split(",") if t.strip())
    return out


# Fields a trailer section must not carry (RFC 9110 §6.5.1): those that frame the message or control
# the connection (and Host, Trailer). A next hop's parser may act on them all the same: llhttp reads
# a trailer `Transfer-Encoding` or `Connection: close` as the message's own (the client's keep-alive
# connection then ends, and the next response on it is refused), and a trailer `Content-Length` as
# a framing error. So they are dropped where trailers enter the engine, as a recipient may (§6.5.1).
NOT_IN_TRAILERS = HOP_BY_HOP | {"content-length", "host", "trailer"}


def trailer_fields(trailers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """`trailers` without the fields a trailer section must not carry (`NOT_IN_TRAILERS`)."""
    if NOT_IN_TRAILERS.isdisjoint(map(header_name, trailers)):
        return trailers     # (gRPC's grpc-status and grpc-message: one pass in C)
    return [h for h in trailers if h[0] not in NOT_IN_TRAILERS]


def strip_hop_by_hop(headers: list[tuple[str, str]], *, keep_upgrade: bool = False) -> list[tuple[str, str]]:
    """`headers` without hop-by-hop headers. `keep_upgrade`: an upgrade passed through keeps
    `Upgrade` and gets `Connection: upgrade` back, so the next hop sees the handshake."""
    if not keep_upgrade:
        if HOP_BY_HOP.isdisjoint(map(header_name, headers)):
            return list(headers)    # the common request: nothing to strip, one pass in C
        present = HOP_BY_HOP.intersection(map(header_name, headers))
        if present == _CONNECTION_ONLY:     # the common response: `Connection: keep-alive` (or close)
            kept = []
            for h in headers:
                if h[0] != "connection":
                    kept.append(h)
                elif h[1].strip().lower() not in _CONNECTION_OPTIONS:
                    break           # it names headers (or several tokens): the general case below
            else:
                return kept
    named: set[str] | frozenset[str] = _NONE
    for k, _ in headers:        # most messages name nothing in Connection: skip building the set
        if k == "connection":
            named = connection_tokens(headers) - _CONNECTION_OPTIONS
            break
    out = []
    for k, v in headers:
        if k in named:
            continue
        if k in HOP_BY_HOP:
            if k == "te" and v.strip().lower() == "trailers":
                out.append((k, "trailers"))
            elif k == "upgrade" and keep_upgrade:
                out.append((k, v))
            continue
        out.append((k, v))
    if keep_upgrade:
        out.append(("connection", "upgrade"))
    return out


def request_id(rng: _random.Random) -> str:
    """A UUID4 from the injected random source (tests pass a seeded one): the text of
    `uuid.UUID(int=bits, version=4)`, formatted directly (the UUID object costs more than the rest)."""
    n = (rng.getrandbits(128) & _UUID_CLEAR) | _UUID_V4
    h = f"{n:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def new_traceparent(rng: _random.Random) -> str:
    """A W3C trace context (version 00) with a fresh trace id and span id, not sampled."""
    trace = rng.getrandbits(128) or 1
    span = rng.getrandbits(64) or 1
    return f"00-{trace:032x}-{span:016x}-00"


def add_forwarded(headers: list[tuple[str, str]], scheme: str, rng: _random.Random) -> tuple[list[tuple[str, str]], str]:
    """`headers` with x-forwarded-proto and x-request-id ensured; also the request id."""
    proto = False
    rid = None
    for k, v in headers:        # one pass: this runs for every request
        if k == "x-forwarded-proto":
            proto = True
        elif k == "x-request-id":
            if rid is None:
                rid = v
    out = list(headers)
    if not proto:
        out.append(("x-forwarded-proto", scheme))
    if rid is None:
        rid = request_id(rng)
        out.append(("x-request-id", rid))
    return out, rid


def is_grpc(headers: Iterable[tuple[str, str]]) -> bool:
    """content-type application/grpc, application/grpc+proto, ... (gRPC over HTTP/2 spec; not
    gRPC-Web, see `is_grpc_type`)."""
    for k, v in headers:
        if k == "content-type":
            return is_grpc_type(v)
    return False


def is_grpc_type(content_type: str) -> bool:
    """A content-type value of gRPC (see `is_grpc`): `application/grpc` alone or with a `+suffix`,
    as Envoy's Grpc::Common::hasGrpcContentType. gRPC-Web (`application/grpc-web...`) is not gRPC:
    its clients get plain HTTP local replies (a 403 stays a 403), no grpc-timeout deadline, no
    gRPC retry conditions, as through Envoy without a grpc_web filter."""
    ct = content_type.lower()
    return ct.startswith("application/grpc") and (len(ct) == 16 or ct[16] == "+")


# HTTP status of a local reply -> gRPC status, as Envoy maps them for gRPC clients
# (envoy source/common/grpc/status.cc `Utility::httpToGrpcStatus`).
_HTTP_TO_GRPC = {400: 13, 401: 16, 403: 7, 404: 12, 429: 14, 502: 14, 503: 14, 504: 14}


def grpc_status_for(http_status: int) -> int:
    """Envoy's HTTP → gRPC status mapping for local replies (anything unlisted is UNKNOWN)."""
    return _HTTP_TO_GRPC.get(http_status, 2)


# gRPC status -> HTTP status, as Envoy reads a gRPC answer for outlier detection
# (envoy source/common/grpc/status.cc `Utility::grpcToHttpStatus`; anything else is 500).
_GRPC_TO_HTTP = {0: 200, 1: 499, 2: 500, 3: 400, 4: 504, 5: 404, 6: 409, 7: 403, 8: 429, 9: 400, 10: 409,
                 11: 400, 12: 501, 13: 500, 14: 503, 15: 500, 16: 401}


def http_status_for_grpc(grpc_status: str) -> int:
    """The HTTP status Envoy counts for a `grpc-status` value (one that is not a known code, or no
    number at all, is Envoy's InvalidCode: 500)."""
    if grpc_status.isascii() and grpc_status.isdigit():
        return _GRPC_TO_HTTP.get(int(grpc_status), 500)
    return 500
