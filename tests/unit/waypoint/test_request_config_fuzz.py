"""Fuzzing the waypoint's request path with hostile-but-accepted configuration: every mutation
tests/unit/controller/test_config_fuzz.py makes of a valid object (its seeds, mutators and
pipeline, imported) that the controller accepts is applied to the waypoint's and the ingress
gateway's config as the config stream delivers it, and then requests go through the real
`WaypointProxy` (decide: JWT, CUSTOM/DENY/ALLOW authorization, routing with its matches, weights,
redirects, rewrites, CORS, header ops, faults, mirrors; upstream: clusters, subsets, load
balancing with consistent hashes and locality plans, session persistence, outlier detection) and
the real engine (HTTP/1.1 and h2c, retries, timeouts, pools), in process and without sockets.

Why: what the waypoint builds only when a request comes (a Maglev table, a locality plan, a
retry or mirror policy, a redirect) was never reached by the configuration fuzzer, which stops at
the data plane's compilation; a DestinationRule with `maglev.tableSize: 64` made the waypoint spin
forever at the first request for that host.

The harness: a fresh event loop per case whose clock is virtual (`VirtualLoop`: when nothing is
ready it jumps to the next timer, so a configured fault delay, backoff or timeout costs no wall
time), downstream connections on fake transports fed by a client that writes HTTP/1.1 or h2c
bytes, and upstream connections to in-process origins (HTTP/1.1 or h2c, as the target asks)
answering 200 or 503. The requests are drawn per case: the hosts the config routes (every Service
port the waypoint's route table knows, the ingress gateway's listener ports and hostnames), methods,
paths, queries, headers and cookies from the seeds and from the mutated object's own strings, JWTs
(signed by a key the fuzzer's own RequestAuthentication trusts, or not), CORS preflights, gRPC.

What must hold before any request: every route of the accepted config is in each gateway's route
table (one the table leaves out, for a regex RE2 refuses, was accepted and is not honoured).
What must hold for every request (any status is fine):
1. it gets a whole HTTP response (or, on h2, a reset stream) within `VIRTUAL_LIMIT` s of the
   virtual clock (more than any timeout the waypoint applies by default; unless it is still
   retrying, as a route with attempts in the billions and no timeout asks) and 5 s of wall time;
2. no exception escapes: none reaches the event loop's exception handler, and nothing is logged
   with a traceback (the engine catches a `decide` or `upstream` that raised, logs it and answers
   500: still a bug);
3. it takes at most 1 s of CPU (and 1 % of a core for as long as it lasts, in virtual time), and
   the process's peak size grows by at most 128 MiB meanwhile.

Three budgets, as the other fuzz modules (tests/support/fuzzing.py): the unit suite (a few dozen
examples), `-m fuzz` (`AMBIT_FUZZ_EXAMPLES`), and a long local run:
`python -m tests.unit.waypoint.test_request_config_fuzz --cases 3000` (about 8 cases a second; every
other case the next of a systematic sweep of the seeds' fields, `sweep`). `--only HTTPRoute,GRPCRoute`
(kinds, or `Kind/namespace/name`) restricts the sweep and the draws to those seeds; `--sweep-only`
makes every case a sweep step and ends after one pass (`--sweep-size` counts it), `--shard I/N`
splits that pass between N runs side by side, `--no-sweep` draws at random only.

Found: text outside latin-1 in a VirtualService `rewrite.authority` (or an HTTPRoute URLRewrite's
hostname or path) hung the request until the stream idle timeout, in a `redirect.authority` closed
the client's connection unanswered; and, looking at why, CR/LF there were accepted and injected
headers into the upstream request or the redirect (tests/unit/controller/test_config_validation.py,
tests/unit/waypoint/test_header_ops_wire.py).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import copy
import dataclasses
import functools
import json
import logging
import random
import re
import resource
import selectors
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import httptools
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given
from hypothesis import strategies as st

from ambit.dataplane.telemetry.metrics import Metrics
from ambit.gatewayclasses import INGRESS_CLASSES
from tests.support import fuzzing
from tests.unit.controller import test_config_fuzz as config_fuzz
from tests.unit.waypoint.fakes import FakeTransport
from waypoint.app import WaypointProxy
from waypoint.config import WaypointConfig
from waypoint.http import Engine, RequestRecord, UpstreamTarget
from waypoint.ingress import listener_group
from waypoint.ingress_listen import IngressListeners
from waypoint.request import Downstream
from waypoint.settings import WaypointSettings, load
from waypoint.telemetry.metrics import HttpMetrics

UNIT_EXAMPLES = 15
LONG_EXAMPLES = fuzzing.fuzz_examples(20)     # (bounded: the unit suite runs it)
WALL_LIMIT = 5.0            # wall seconds a request may take (a real hang: a loop that never yields)
VIRTUAL_LIMIT = 600.0       # virtual seconds a request may take (the stream idle timeout is 300 s)
CPU_LIMIT = 1.0             # CPU seconds a request may take, and
CPU_SHARE = 0.01            # the share of a core it may use for as long as it lasts (virtual seconds)
RETRYING = 100              # upstream attempts that make a request still unanswered no hang (retrying)
MEMORY_LIMIT = 128 << 20    # bytes the process may grow by (its peak) while a request is served
REQUESTS = 30               # requests per gateway per case (about a millisecond each)
Obj = dict[str, Any]
Key = tuple[str, str, str]


# --- a virtual clock ---------------------------------------------------------------------------------

class _VirtualSelector(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
    """A selector that never waits: a poll with a timeout moves its loop's virtual clock by
    that much instead (nothing here does real I/O). Only a poll without a timeout, nothing ready
    and no timer at all, really blocks: a hang, which the wall-clock alarm ends."""

    loop: VirtualLoop | None = None

    def select(self, timeout: float | None = None) -> list[Any]:
        if timeout is None:
            return super().select(timeout)
        if timeout > 0 and self.loop is not None:
            self.loop.now += timeout
        return []


class VirtualLoop(asyncio.SelectorEventLoop):  # type: ignore[misc,name-defined]
    """asyncio's loop on a virtual clock: when no callback is ready it moves the clock to the
    next timer instead of sleeping (`_VirtualSelector`), so a fault delay of 10 s, a retry
    backoff or a request timeout costs a loop turn."""

    def __init__(self) -> None:
        selector = _VirtualSelector()
        super().__init__(selector)
        selector.loop = self
        self.now = 1000.0

    def time(self) -> float:
        return self.now


# --- in-process origins ------------------------------------------------------------------------------

class _OriginSide(asyncio.Transport):
    """The origin's end of an in-memory upstream connection: what it writes reaches the
    waypoint's upstream protocol on the next loop turn."""

    def __init__(self, proxy_side: _ProxySide) -> None:
        super().__init__()
        self.peer = proxy_side
        self.closed = False

    def write(self, data: Any) -> None:
        if not self.closed and data:
            self.peer.loop.call_soon(self.peer.deliver, bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.peer.loop.call_soon(self.peer.lost)


class _ProxySide(asyncio.Transport):
    """The waypoint's end of an in-memory upstream connection, to an `Origin`."""

    def __init__(self, loop: asyncio.AbstractEventLoop, proto: asyncio.Protocol,
                 origin: Callable[[_OriginSide], Any]) -> None:
        super().__init__()
        self.loop, self.proto, self.closed = loop, proto, False
        self.origin_side = _OriginSide(self)
        self.origin = origin(self.origin_side)

    def write(self, data: Any) -> None:
        if not self.closed and data:
            self.loop.call_soon(self._to_origin, bytes(data))

    def _to_origin(self, data: bytes) -> None:
        if not self.origin_side.closed:
            self.origin.data_received(data)

    def deliver(self, data: bytes) -> None:
        if not self.closed:
            self.proto.data_received(data)

    def lost(self) -> None:
        if not self.closed:
            self.closed = True
            self.proto.connection_lost(None)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.origin_side.closed = True
            self.loop.call_soon(self.proto.connection_lost, None)

    abort = close

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.proto = protocol   # type: ignore[assignment]

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self.proto

    def can_write_eof(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


class _H1Origin:
    """One HTTP/1.1 origin connection: answers each request it parses with `status(path)`."""

    def __init__(self, t: _OriginSide, status: Callable[[str], int]) -> None:
        self.t, self.status = t, status
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""

    def on_message_begin(self) -> None:
        self.url = b""

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_message_complete(self) -> None:
        method = self.parser.get_method()
        code = self.status(self.url.decode("latin-1"))
        body = b"" if method == b"HEAD" else b"origin"
        self.t.write(b"HTTP/1.1 %d X\r\ncontent-length: 6\r\nx-origin: h1\r\n\r\n%b" % (code, body))

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.t.close()
        except httptools.HttpParserError:
            self.t.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            self.t.close()


class _H2Origin:
    """One h2c origin connection: answers each request with `status(path)` (gRPC requests with
    grpc-status trailers)."""

    def __init__(self, t: _OriginSide, status: Callable[[str], int]) -> None:
        self.t, self.status = t, status
        self.c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8",
                                                                      validate_inbound_headers=False))
        self.c.initiate_connection()
        self.heads: dict[int, dict[str, str]] = {}
        self.t.write(self.c.data_to_send())

    def data_received(self, data: bytes) -> None:
        try:
            events = self.c.receive_data(data)
        except h2.exceptions.ProtocolError:
            self.t.write(self.c.data_to_send())
            self.t.close()
            return
        for ev in events:
            if isinstance(ev, h2.events.RequestReceived):
                self.heads[ev.stream_id] = dict(ev.headers)     # type: ignore[arg-type]
            elif isinstance(ev, h2.events.DataReceived):
                self.c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                with contextlib.suppress(h2.exceptions.ProtocolError):      # (a stream the proxy reset)
                    self._answer(ev.stream_id, self.heads.pop(ev.stream_id, {}))
        self.t.write(self.c.data_to_send())

    def _answer(self, sid: int, head: dict[str, str]) -> None:
        code = self.status(head.get(":path", "/"))
        if head.get("content-type", "").startswith("application/grpc"):
            self.c.send_headers(sid, [(":status", "200"), ("content-type", "application/grpc")])
            self.c.send_data(sid, b"\x00\x00\x00\x00\x00")
            self.c.send_headers(sid, [("grpc-status", "0" if code == 200 else "14")], end_stream=True)
        elif head.get(":method") == "HEAD":
            self.c.send_headers(sid, [(":status", str(code)), ("content-length", "6")], end_stream=True)
        else:
            self.c.send_headers(sid, [(":status", str(code)), ("content-length", "6")])
            self.c.send_data(sid, b"origin", end_stream=True)


class Origin:
    """Every upstream endpoint of a case: it answers 200, or 503 always or every other request
    (`mode`), so that retries, outlier detection and failover have something to do."""

    def __init__(self, mode: int) -> None:
        self.mode = mode        # 0: all 200; 1: all 503; 2: alternately
        self.answered = 0
        self.connections = 0

    def status(self, path: str) -> int:
        self.answered += 1
        return 200 if self.mode == 0 else 503 if self.mode == 1 else (200, 503)[self.answered % 2]

    def connector(self, protocol: str) -> Callable[[], Any]:
        """A target's `connect`: an in-memory connection to this origin, speaking `protocol`."""
        def origin_end(t: _OriginSide) -> Any:
            self.connections += 1
            return _H2Origin(t, self.status) if protocol == "h2" else _H1Origin(t, self.status)

        class Plug:
            def attach(self, proto: asyncio.Protocol) -> None:
                proto.connection_made(_ProxySide(asyncio.get_running_loop(), proto, origin_end))

        async def connect() -> Any:
            return Plug()
        return connect


# --- downstream clients ------------------------------------------------------------------------------

@dataclass
class Request:
    method: str
    path: str
    authority: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    h2: bool = False


class _Client(FakeTransport):
    """The client end of a downstream connection: parses what the waypoint writes and resolves
    `done` with the response status (0: closed without one; -1: an h2 stream reset)."""

    def __init__(self, proto: asyncio.BaseProtocol, req: Request, done: asyncio.Future[int]) -> None:
        super().__init__(proto)
        self.req, self.done = req, done
        self.status = 0
        if req.h2:
            self.h2c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None,
                                                                            validate_inbound_headers=False))
        else:
            self.parser = httptools.HttpResponseParser(self)

    def _finish(self, status: int) -> None:
        if not self.done.done():
            self.done.set_result(status)

    # httptools
    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        if self.req.method == "HEAD" and self.status >= 200:
            self._finish(self.status)

    def on_message_complete(self) -> None:
        if self.status >= 200:
            self._finish(self.status)

    def write(self, data: Any) -> None:
        super().write(data)
        if self.done.done():
            return
        if self.req.h2:
            self._h2(bytes(data))
            return
        try:
            self.parser.feed_data(bytes(data))
        except httptools.HttpParserUpgrade:
            self._finish(self.status)
        except httptools.HttpParserError as e:
            self.done.set_exception(AssertionError(f"malformed response {bytes(self.written)[:300]!r}: {e}"))

    def _h2(self, data: bytes) -> None:
        try:
            events = self.h2c.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            self.done.set_exception(AssertionError(f"malformed h2 from the waypoint: {e!r}"))
            return
        for ev in events:
            if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == 1:
                self.status = int(dict(ev.headers)[b":status"])
                if ev.stream_ended is not None or self.req.method == "HEAD":
                    self._finish(self.status)
            elif isinstance(ev, h2.events.DataReceived):
                self.h2c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded) and ev.stream_id == 1:
                self._finish(self.status)
            elif isinstance(ev, h2.events.StreamReset) and ev.stream_id == 1:
                self._finish(-1)
            elif isinstance(ev, h2.events.ConnectionTerminated):
                self._finish(self.status or -1)
        out = self.h2c.data_to_send()
        if out and not self.closed:
            asyncio.get_running_loop().call_soon(self.answer, out)

    def answer(self, raw: bytes) -> None:
        if not self.closed:
            super().answer(raw)

    def close(self) -> None:
        super().close()
        self._finish(self.status if self.req.h2 and self.status else 0)

    abort = close

    def request_bytes(self) -> bytes:
        r = self.req
        if r.h2:
            c = self.h2c
            c.initiate_connection()
            hdrs = [(":method", r.method), (":scheme", "http"), (":authority", r.authority), (":path", r.path),
                    *r.headers]
            c.send_headers(1, [(k.encode(), v.encode()) for k, v in hdrs], end_stream=not r.body)
            if r.body:
                c.send_data(1, r.body, end_stream=True)
            return c.data_to_send()
        lines = [f"{r.method} {r.path} HTTP/1.1", f"host: {r.authority}",
                 *(f"{k}: {v}" for k, v in r.headers)]
        if r.body:
            lines.append(f"content-length: {len(r.body)}")
        return "\r\n".join(lines).encode() + b"\r\n\r\n" + r.body


# --- the case: configs, targets, requests ------------------------------------------------------------

@functools.cache
def _jwt_key() -> ec.EllipticCurvePrivateKey:
    """The key of the fuzzer's own issuer (made once, when first asked: not at import)."""
    return ec.generate_private_key(ec.SECP256R1())


JWT_ISSUER = "https://fuzz.example.com"


@functools.cache
def jwt_seed() -> Obj:
    """A RequestAuthentication the fuzzer holds the private key of, so that requests carry tokens
    that verify and the claims reach routing and authorization."""
    pub = jwt.algorithms.ECAlgorithm.to_jwk(_jwt_key().public_key(), as_dict=True)
    jwks = json.dumps({"keys": [{**pub, "kid": "fz", "alg": "ES256", "use": "sig"}]})
    return config_fuzz._obj(config_fuzz.SEC, "RequestAuthentication", "fuzz-jwt", "demo", {
        "targetRefs": [{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "waypoint"}],
        "jwtRules": [{"issuer": JWT_ISSUER, "jwks": jwks, "audiences": ["echo"],
                      "outputClaimToHeaders": [{"header": "x-groups", "claim": "groups"}],
                      "fromCookies": ["session"]}]})


JWT_KEY: Key = ("RequestAuthentication", "demo", "fuzz-jwt")

_NET, _GW, _SEC = config_fuzz.NET, config_fuzz.GW, config_fuzz.SEC


@functools.cache
def request_seeds() -> tuple[Obj, ...]:
    """Seeds beside test_config_fuzz's, valid, for what only a request builds or evaluates and
    those do not say: a Maglev table, a ring hashed on a query parameter or the source address,
    failover priorities, weighted endpoints of a ServiceEntry, session persistence by cookie and
    by header, Gateway API retries with backoff and timeouts, gRPC faults, several mirrors, regex
    rewrites, derived redirect ports, DENY and AUDIT policies and an ALLOW on the fuzzer's JWT
    claims. A mutation of one of their values (an odd int in `tableSize`, a duration, a regex)
    is what reaches the request path."""
    obj = config_fuzz._obj
    return (
        jwt_seed(),
        obj(_NET, "DestinationRule", "v1-maglev", "demo", {
            "host": "echo-v1.demo.svc.cluster.local",
            "trafficPolicy": {
                "loadBalancer": {"consistentHash": {"httpQueryParameterName": "q", "maglev": {"tableSize": 7}}},
                "outlierDetection": {"consecutive5xxErrors": 1, "interval": "1s", "baseEjectionTime": "30s",
                                     "maxEjectionPercent": 100, "minHealthPercent": 0},
                "connectionPool": {"http": {"maxRetries": 1, "http1MaxPendingRequests": 2, "maxRequestsPerConnection": 1,
                                            "idleTimeout": "1s"}, "tcp": {"maxConnections": 1}}},
            "subsets": [{"name": "a", "labels": {"version": "v1"}, "trafficPolicy": {"loadBalancer": {
                "consistentHash": {"httpCookie": {"name": "sticky", "path": "/x"}, "ringHash": {"minimumRingSize": 3}}}}}]}),
        obj(_NET, "DestinationRule", "v3-ring", "demo", {
            "host": "echo-v3.demo.svc.cluster.local",
            "trafficPolicy": {"loadBalancer": {"consistentHash": {"useSourceIp": True, "ringHash": {"minimumRingSize": 16}},
                                               "localityLbSetting": {"enabled": True, "failoverPriority": [
                                                   "topology.kubernetes.io/region", "version"]}},
                              "outlierDetection": {"consecutiveGatewayErrors": 1, "baseEjectionTime": "1s"}},
            "subsets": [{"name": "v3", "labels": {"version": "v3"}}]}),
        obj(_NET, "ServiceEntry", "weighted", "demo", {
            "hosts": ["static.example.com"], "location": "MESH_EXTERNAL", "resolution": "STATIC",
            "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}],
            "endpoints": [{"address": "192.0.2.10", "weight": 1, "locality": "us-east/a", "labels": {"v": "1"}},
                          {"address": "192.0.2.11", "weight": 5, "locality": "us-west/b", "labels": {"v": "2"}},
                          {"address": "192.0.2.12", "locality": "us-east/a", "labels": {"v": "2"}}]}),
        obj(_NET, "DestinationRule", "weighted", "demo", {
            "host": "static.example.com",
            "trafficPolicy": {"loadBalancer": {"simple": "LEAST_REQUEST", "warmupDurationSecs": "10s",
                                               "localityLbSetting": {"enabled": True, "distribute": [
                                                   {"from": "us-east/*", "to": {"us-east/*": 10, "us-west/*": 90}}]}},
                              "outlierDetection": {"consecutive5xxErrors": 2, "interval": "2s", "baseEjectionTime": "5s"}},
            "subsets": [{"name": "two", "labels": {"v": "2"}, "trafficPolicy": {
                "loadBalancer": {"consistentHash": {"httpHeaderName": "x-user", "maglev": {"tableSize": 65537}}}}}]}),
        obj(_NET, "VirtualService", "static", "demo", {
            "hosts": ["static.example.com"],
            "http": [{"match": [{"headers": {"x-user": {"regex": "a.*"}}, "sourceLabels": {"app": "client"}}],
                      "route": [{"destination": {"host": "static.example.com", "subset": "two"}, "weight": 60},
                                {"destination": {"host": "static.example.com"}, "weight": 40}],
                      "retries": {"attempts": 4, "perTryTimeout": "100ms", "retryOn": "5xx,retriable-status-codes,503",
                                  "retryIgnorePreviousHosts": True, "retryRemoteLocalities": True, "backoff": "25ms"},
                      "timeout": "2s"},
                     {"match": [{"uri": {"prefix": "/redirect"}}],
                      "redirect": {"authority": "other.example.com", "derivePort": "FROM_PROTOCOL_DEFAULT",
                                   "scheme": "https", "redirectCode": 308}},
                     {"match": [{"uri": {"regex": "/v3/.*"}}],
                      "rewrite": {"uriRegexRewrite": {"match": "^/v3/(.*)$", "rewrite": "/\\1"}, "authority": "x.example"},
                      "route": [{"destination": {"host": "static.example.com"}}]},
                     {"route": [{"destination": {"host": "static.example.com"}}],
                      "fault": {"abort": {"percentage": {"value": 50}, "grpcStatus": "UNAVAILABLE"},
                                "delay": {"percentage": {"value": 50}, "fixedDelay": "2s"}},
                      "mirrors": [{"destination": {"host": "echo-v1"}, "percentage": {"value": 50}},
                                  {"destination": {"host": "static.example.com", "subset": "two"}}],
                      "headers": {"request": {"set": {"x-s": "downstream"}, "remove": ["cookie"]},
                                  "response": {"add": {"x-r": "1"}, "remove": ["x-origin"]}},
                      "corsPolicy": {"allowOrigins": [{"prefix": "https://"}], "allowMethods": ["GET", "PUT"],
                                     "allowHeaders": ["*"], "exposeHeaders": ["*"], "maxAge": "1s",
                                     "allowCredentials": False, "unmatchedPreflights": "IGNORE"}}]}),
        obj(_GW, "HTTPRoute", "sessions", "demo", {
            "parentRefs": [{"group": "", "kind": "Service", "name": "echo-v2", "port": 8080}],
            "rules": [
                {"matches": [{"path": {"type": "PathPrefix", "value": "/a"}}],
                 "sessionPersistence": {"sessionName": "sid", "type": "Cookie", "absoluteTimeout": "1h",
                                        "idleTimeout": "10m", "cookieConfig": {"lifetimeType": "Permanent"}},
                 "backendRefs": [{"name": "echo-v1", "port": 8080, "weight": 1},
                                 {"name": "echo-v2", "port": 8080, "weight": 1}],
                 "timeouts": {"request": "1s", "backendRequest": "500ms"},
                 "retry": {"attempts": 3, "backoff": "1s", "codes": [500, 503]}},
                {"matches": [{"headers": [{"name": "x-session", "type": "RegularExpression", "value": ".+"}]}],
                 "sessionPersistence": {"sessionName": "x-session", "type": "Header"},
                 "backendRefs": [{"name": "echo-v3", "port": 8080}]},
                {"matches": [{"path": {"type": "RegularExpression", "value": "/r(e+)direct"}}],
                 "filters": [{"type": "RequestRedirect", "requestRedirect": {
                     "port": 8443, "path": {"type": "ReplaceFullPath", "replaceFullPath": "/"}}}]},
                {"filters": [{"type": "URLRewrite", "urlRewrite": {
                                 "hostname": "rewritten.example", "path": {"type": "ReplaceFullPath", "replaceFullPath": "/"}}},
                             {"type": "CORS", "cors": {"allowOrigins": ["*"], "allowCredentials": True,
                                                       "allowHeaders": ["x-a"], "exposeHeaders": ["x-b"]}},
                             {"type": "ResponseHeaderModifier", "responseHeaderModifier": {
                                 "set": [{"name": "x-set", "value": "1"}], "remove": ["content-type"]}},
                             {"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "echo-v1", "port": 8080},
                                                                         "fraction": {"numerator": 1, "denominator": 3}}}],
                 "backendRefs": [{"name": "echo-v2", "port": 8080}]}]}),
        *gateway_api_seeds(),
        obj(_SEC, "AuthorizationPolicy", "v2-deny", "demo", {
            "targetRefs": [{"kind": "Service", "group": "", "name": "echo-v2"}], "action": "DENY",
            "rules": [{"to": [{"operation": {"notPaths": ["/a*", "/"], "methods": ["DELETE", "PUT"]}}],
                       "when": [{"key": "request.headers[x-debug]", "values": ["1", "*2"]}]}]}),
        obj(_SEC, "AuthorizationPolicy", "v2-audit", "demo", {
            "targetRefs": [{"kind": "Service", "group": "", "name": "echo-v2"}], "action": "AUDIT",
            "rules": [{"to": [{"operation": {"paths": ["*"]}}]}]}),
        obj(_SEC, "AuthorizationPolicy", "v3-claims", "demo", {
            "targetRefs": [{"kind": "Service", "group": "", "name": "echo-v3"}], "action": "ALLOW",
            "rules": [{"from": [{"source": {"requestPrincipals": [f"{JWT_ISSUER}/*"]}}],
                       "when": [{"key": "request.auth.claims[groups]", "values": ["admins"]},
                                {"key": "request.auth.audiences", "values": ["echo"]}]},
                      {"to": [{"operation": {"paths": ["/public/*", "/echo.Echo/*"]}}]}]}),
    )


def gateway_api_seeds() -> tuple[Obj, ...]:
    """HTTPRoute and GRPCRoute seeds that say together everything Ambit accepts of them on the
    request path: every filter type it takes (rule's and backend's), weighted backends (one at 0),
    matches on path (each type), method, headers and query parameters (exact and regex), timeouts,
    retries, session persistence in both of its shapes, redirects with each path modifier, port
    and code; gRPC method matches of each shape (exact, service or method alone, regex) with
    header matches; and an ingress route with filters. Attached where little else routes (echo-v1
    and echo-v2's gRPC port, the ingress gateway's `*.example.com` listener), so requests reach
    them; their mutations are what the sweep (`--only HTTPRoute,GRPCRoute`) goes through."""
    obj = config_fuzz._obj
    return (
        obj(_GW, "HTTPRoute", "rich-http", "demo", {
            "parentRefs": [{"group": "", "kind": "Service", "name": "echo-v1", "port": 8080}],
            "rules": [
                {"name": "exact",
                 "matches": [{"path": {"type": "Exact", "value": "/exact"}, "method": "POST",
                              "headers": [{"name": "x-user", "value": "alice"},
                                          {"type": "RegularExpression", "name": "x-env", "value": "prod-[0-9]+"}],
                              "queryParams": [{"name": "q", "value": "1"},
                                              {"type": "RegularExpression", "name": "token", "value": ".*"}]},
                             {"path": {"type": "Exact", "value": "/a"}}],
                 "filters": [{"type": "RequestHeaderModifier", "requestHeaderModifier": {
                                 "set": [{"name": "x-set", "value": "s"}], "add": [{"name": "x-add", "value": "a"}],
                                 "remove": ["x-debug"]}},
                             {"type": "ResponseHeaderModifier", "responseHeaderModifier": {
                                 "set": [{"name": "x-rset", "value": "s"}], "add": [{"name": "x-radd", "value": "a"}],
                                 "remove": ["server"]}},
                             {"type": "URLRewrite", "urlRewrite": {
                                 "hostname": "rewritten.internal", "path": {"type": "ReplaceFullPath", "replaceFullPath": "/full"}}},
                             {"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "echo-v2", "port": 8080},
                                                                         "percent": 50}},
                             {"type": "CORS", "cors": {"allowOrigins": ["https://*.example.com", "http://a.example.org:8080"],
                                                       "allowMethods": ["GET", "POST"], "allowHeaders": ["x-a", "x-user"],
                                                       "exposeHeaders": ["x-rset"], "maxAge": 60, "allowCredentials": True}}],
                 "backendRefs": [{"name": "echo-v1", "port": 8080, "weight": 2, "filters": [
                                     {"type": "RequestHeaderModifier", "requestHeaderModifier": {
                                         "set": [{"name": "x-backend", "value": "v1"}], "remove": ["x-a"]}},
                                     {"type": "ResponseHeaderModifier", "responseHeaderModifier": {
                                         "add": [{"name": "x-from", "value": "v1"}]}}]},
                                 {"name": "echo-v2", "port": 8080, "weight": 0},
                                 {"name": "echo-v3", "port": 8080, "weight": 1, "filters": [
                                     {"type": "ResponseHeaderModifier", "responseHeaderModifier": {
                                         "set": [{"name": "x-from", "value": "v3"}]}}]}],
                 "timeouts": {"request": "3s", "backendRequest": "1s"},
                 "retry": {"attempts": 2, "codes": [502, 503], "backoff": "10ms"},
                 "sessionPersistence": {"type": "Cookie", "absoluteTimeout": "1h",
                                        "cookie": {"name": "rs", "path": "/", "lifetimeType": "Session"}}},
                {"name": "prefix",
                 "matches": [{"path": {"type": "PathPrefix", "value": "/api"}}],
                 "filters": [{"type": "URLRewrite", "urlRewrite": {
                                 "hostname": "api.internal", "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/v2"}}},
                             {"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "echo", "port": 8080},
                                                                         "fraction": {"numerator": 1, "denominator": 2}}},
                             {"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "echo-v3", "port": 8080},
                                                                         "percent": 100}}],
                 "backendRefs": [{"name": "echo-v2", "port": 8080, "weight": 1}],
                 "timeouts": {"request": "0s"},
                 "sessionPersistence": {"type": "Header", "header": {"name": "x-rs"}}},
                {"matches": [{"path": {"type": "PathPrefix", "value": "/go"}}],
                 "filters": [{"type": "RequestRedirect", "requestRedirect": {
                     "scheme": "https", "hostname": "r.example.com", "port": 8443, "statusCode": 307,
                     "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/gone"}}}]},
                {"matches": [{"path": {"type": "RegularExpression", "value": "/re/[a-z]+"}, "method": "DELETE"},
                             {"path": {"type": "RegularExpression", "value": "/re/[0-9]+"}}],
                 "filters": [{"type": "RequestRedirect", "requestRedirect": {
                     "statusCode": 303, "path": {"type": "ReplaceFullPath", "replaceFullPath": "/"}}}]},
                {"matches": [{"headers": [{"name": "x-b", "value": "bee"}], "method": "GET"}],
                 "filters": [{"type": "CORS", "cors": {"allowOrigins": ["*"], "allowMethods": ["*"],
                                                       "allowHeaders": ["*"], "exposeHeaders": ["*"]}}],
                 "backendRefs": [{"name": "echo-v3", "port": 8080, "weight": 0}, {"name": "echo", "port": 8080, "weight": 1}],
                 "retry": {}},
                {"matches": [{"path": {"type": "PathPrefix", "value": "/none"}}],
                 "filters": [{"type": "RequestHeaderModifier", "requestHeaderModifier": {"add": [{"name": "x-n", "value": "1"}]}}]},
                {"name": "rest", "backendRefs": [{"name": "echo-v1", "port": 8080}]}]}),
        obj(_GW, "GRPCRoute", "rich-grpc", "demo", {
            "parentRefs": [{"group": "", "kind": "Service", "name": "echo-v1", "port": 7070},
                           {"group": "", "kind": "Service", "name": "echo-v2", "port": 7070}],
            "rules": [
                {"name": "say",
                 "matches": [{"method": {"type": "Exact", "service": "echo.Echo", "method": "Say"},
                              "headers": [{"name": "x-user", "value": "alice"},
                                          {"type": "RegularExpression", "name": "x-env", "value": "prod.*"}]}],
                 "filters": [{"type": "RequestHeaderModifier", "requestHeaderModifier": {
                                 "set": [{"name": "x-g", "value": "1"}], "add": [{"name": "x-ga", "value": "2"}],
                                 "remove": ["x-debug"]}},
                             {"type": "ResponseHeaderModifier", "responseHeaderModifier": {
                                 "set": [{"name": "x-gr", "value": "1"}], "remove": ["x-origin"]}},
                             {"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "echo-v3", "port": 7070},
                                                                         "percent": 30}}],
                 "backendRefs": [{"name": "echo-v1", "port": 7070, "weight": 3, "filters": [
                                     {"type": "RequestHeaderModifier", "requestHeaderModifier": {
                                         "add": [{"name": "x-gb", "value": "v1"}]}},
                                     {"type": "ResponseHeaderModifier", "responseHeaderModifier": {
                                         "set": [{"name": "x-gfrom", "value": "v1"}]}}]},
                                 {"name": "echo-v2", "port": 7070, "weight": 1}],
                 "sessionPersistence": {"sessionName": "gs", "type": "Cookie", "absoluteTimeout": "10m",
                                        "cookieConfig": {"lifetimeType": "Permanent"}}},
                {"matches": [{"method": {"method": "Other"}},
                             {"method": {"type": "RegularExpression", "service": "grpc\\..*", "method": "X|Y"}}],
                 "backendRefs": [{"name": "echo-v2", "port": 7070}],
                 "sessionPersistence": {"sessionName": "x-gs", "type": "Header"}},
                {"matches": [{"method": {"service": "echo.Echo"}, "headers": [{"name": "x-b", "value": "bee"}]}],
                 "filters": [{"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "echo-v1", "port": 7070},
                                                                         "fraction": {"numerator": 1, "denominator": 4}}}],
                 "backendRefs": [{"name": "echo-v3", "port": 7070, "weight": 0}, {"name": "echo", "port": 7070, "weight": 5}]},
                {"backendRefs": [{"name": "echo", "port": 7070}]}]}),
        obj(_GW, "HTTPRoute", "ingress-filters", "demo", {
            "parentRefs": [{"name": "ingress", "sectionName": "http"}],
            "hostnames": ["redir.example.com", "*.wild.example.com"],
            "rules": [
                {"matches": [{"path": {"type": "PathPrefix", "value": "/app"}}],
                 "filters": [{"type": "URLRewrite", "urlRewrite": {"hostname": "echo.demo.svc.cluster.local"}},
                             {"type": "RequestHeaderModifier", "requestHeaderModifier": {
                                 "set": [{"name": "x-forwarded-host", "value": "edge"}]}},
                             {"type": "CORS", "cors": {"allowOrigins": ["https://a.example.com"], "allowCredentials": True}}],
                 "backendRefs": [{"name": "echo", "port": 8080, "weight": 9}, {"name": "echo-v1", "port": 8080, "weight": 1}],
                 "timeouts": {"request": "2s"}},
                {"filters": [{"type": "RequestRedirect", "requestRedirect": {"scheme": "https", "statusCode": 301}}]}]}),
    )


@functools.cache
def _request_seeds_by_key() -> dict[Key, Obj]:
    return {config_fuzz.object_key(o): o for o in request_seeds()}


def request_keys() -> list[Key]:
    return list(_request_seeds_by_key())


_DURATION = re.compile(r"[0-9.]+(ms|s|m|h)")


def _leaves(obj: Obj) -> list[config_fuzz.Path_]:
    """The paths of `obj`'s scalars, but its apiVersion and kind."""
    return [p for p in config_fuzz.paths(obj) if not isinstance(config_fuzz.get(obj, p), (dict, list))
            and p[-1] not in ("apiVersion", "kind")]


def odd_leaf(obj: Obj, c: config_fuzz.Chooser) -> Obj:
    """A copy of `obj` with one scalar (a number, a string, a flag) replaced by an odd value of
    its own type (test_config_fuzz's `odd_like`): the mutation most likely to be accepted and yet
    to say something no seed says (a table size that is no prime, a duration of 0, a regex) -
    what the request path then has to live with. test_config_fuzz's mutations mostly change the
    shape, which validation refuses."""
    out = copy.deepcopy(obj)
    leaves = _leaves(out)
    # most of the time a number or a duration: sizes, counts, percentages and times are what the
    # request path computes with
    numbers = [p for p in leaves if isinstance(config_fuzz.get(out, p), (int, float))
               or _DURATION.fullmatch(str(config_fuzz.get(out, p)))]
    if numbers and c.integer(0, 3):
        leaves = numbers
    if leaves:
        path = c.pick(leaves)
        config_fuzz.put(out, path, c.pick(config_fuzz.odd_like(config_fuzz.get(out, path))))
    return out


def mutated(key: Key, c: config_fuzz.Chooser) -> Any:
    """test_config_fuzz's `mutated` (for this module's seeds too), or one to three `odd_leaf`s."""
    obj: Any = _request_seeds_by_key().get(key)
    if c.integer(0, 1):
        for _ in range(c.integer(1, 3)):
            obj = odd_leaf(obj if obj is not None else config_fuzz.WORLD[key], c)
        return obj
    if obj is None:
        return config_fuzz.mutated(key, c)
    for _ in range(c.integer(1, 3)):
        obj = config_fuzz.mutate(obj, c) if isinstance(obj, dict) else obj
    return obj


EDGE_KEY: Key = ("VirtualService", "demo", "edge")


@functools.cache
def _beside() -> dict[Key, Obj]:
    """What every case has beside its mutated objects: this module's seeds, and test_config_fuzz's
    VirtualService `edge` for its ingress Gateway only: with the `mesh` gateway too, its hosts
    `*` take every mesh Service without a route of its own to its one `/edge` route, and most
    requests would end in a 404 before reaching what the seeds configure."""
    edge = copy.deepcopy(config_fuzz.WORLD[EDGE_KEY])
    edge["spec"]["gateways"] = ["edge"]
    return {**_request_seeds_by_key(), EDGE_KEY: edge, WAYPOINT_POD_KEY: WAYPOINT_POD,
            **{config_fuzz.object_key(o): o for o in AUTHORIZERS}}


# A pod of the waypoint, through which the ingress gateway reaches the Services bound to it: without
# one, every request the ingress gateway routes ends in a 503 before any balancing.
WAYPOINT_POD = config_fuzz._pod("waypoint-7d9f", "demo", "10.244.1.99",
                                {"gateway.networking.k8s.io/gateway-name": "waypoint"}, node="node-2")
WAYPOINT_POD_KEY: Key = config_fuzz.object_key(WAYPOINT_POD)
# The Services of test_config_fuzz's external authorizers (`EXT_AUTHZ`: gRPC and HTTP), so that a
# CUSTOM policy's check is sent (to the in-process origin) and its answer interpreted
AUTHORIZERS = (config_fuzz._svc("opa", "demo", "10.96.0.30", {"grpc": 9191}, {"app": "echo"}),
               config_fuzz._svc("oauth2", "demo", "10.96.0.31", {"http": 4180}, {"app": "echo"}))


def with_request_seeds(key: Key, more: list[tuple[Key, Any]]) -> list[tuple[Key, Any]]:
    """`more` and, beside, what every case has (`_beside`) that neither `key` nor `more` replace."""
    taken = {key, *(k for k, _ in more)}
    return [*more, *((k, o) for k, o in _beside().items() if k not in taken)]


def token(rng: random.Random) -> str:
    claims: dict[str, Any] = {"iss": rng.choice([JWT_ISSUER, JWT_ISSUER, "https://issuer.example.com", "x"]),
                              "sub": rng.choice(["alice", "bob", "", "a" * 300]),
                              "aud": rng.choice(["echo", ["echo", "x"], "other", 7]),
                              "groups": rng.choice([["admins"], "admins", ["a", 1], None]),
                              "exp": time.time() + rng.choice([3600, -3600, 10 ** 12])}
    tok = jwt.encode({k: v for k, v in claims.items() if v is not None}, _jwt_key(), algorithm="ES256",
                     headers={"kid": rng.choice(["fz", "fz", "k1", "other"])})
    r = rng.randrange(6)
    return tok if r < 4 else tok[:-3] + "abc" if r == 4 else \
        base64.urlsafe_b64encode(b'{"alg":"none"}').decode().rstrip("=") + ".e30."


ENDPOINTS = ["10.244.1.10:8080", "10.244.1.11:8080", "10.244.1.12:8080", "192.0.2.10:80", "192.0.2.11:80",
             "10.244.1.99:15008", "[::1]:80", "999.1.1.1:99999", ":"]


def session_value(rng: random.Random) -> str:
    """A session's value (waypoint/traffic/session.py): base64 of an endpoint, or of Envoy's
    `envoy.Cookie {address, expires}` with an expiry past, near or far; or garbage."""
    address = rng.choice(ENDPOINTS).encode()
    r = rng.randrange(4)
    if r == 0:
        raw = address
    elif r < 3:
        expires = rng.choice([1, int(time.time()) + 60, 2 ** 63 - 1, 2 ** 64 - 1])
        varint = bytearray()
        while True:
            varint.append((expires & 0x7F) | (0x80 if expires > 0x7F else 0))
            expires >>= 7
            if not expires:
                break
        raw = b"\x0a" + bytes([len(address)]) + address + b"\x10" + bytes(varint)
    else:
        raw = bytes(rng.randrange(256) for _ in range(rng.randrange(40)))
    return base64.b64encode(raw).decode()


def strings_of(value: Any) -> list[str]:
    """Every string in `value` (keys too): what routes, policies and rules of a mutated object
    may match, so that requests hit what the mutation touched."""
    out: list[str] = []
    if isinstance(value, str):
        out.append(value)
    elif isinstance(value, dict):
        for k, v in value.items():
            out.extend(strings_of(k))
            out.extend(strings_of(v))
    elif isinstance(value, list):
        for v in value:
            out.extend(strings_of(v))
    return out


def _header_safe(s: str) -> str:
    """`s` as a header value a client can send (latin-1, no control characters)."""
    return "".join(ch for ch in s if " " <= ch <= "~")[:200]


def _token_chars(s: str) -> str:
    return "".join(ch for ch in s.lower() if ch.isascii() and (ch.isalnum() or ch in "-_."))[:60]


PATHS = ["/", "/api/v1/x", "/API/V2/y", "/reviews", "/reviews/v2/1", "/old", "/tea", "/a", "/a/b", "/redirect",
         "/cors", "/admin", "/admin/x", "/edge", "/edge/x", "/public/x", "/v3/a/b", "/echo.Echo/Say", "/v1/z/x", "/%2e%2e/x", "//x", "/x;y", "/é",
         "/status/503", "/" + "a" * 2000]
QUERIES = ["", "", "?q=1", "?q=v", "?q=1&q=2", "?token=", "?x=%zz", "?" + "&".join(f"k{i}=v" for i in range(50))]
HEADERS = [("x-user", "alice"), ("x-env", "prod-1"), ("x-a", "1"), ("x-b", "bee"), ("x-debug", "1"), ("x-c", "c"),
           ("cookie", "s=abc; other=1"), ("cookie", "s="), ("origin", "https://a.example.com"),
           ("origin", "https://b.example.org"), ("origin", "null"), ("access-control-request-method", "POST"),
           ("access-control-request-headers", "x-a, x-z"), ("user-agent", "fuzz"), ("x-forwarded-for", "1.2.3.4"),
           ("x-forwarded-proto", "https"), ("content-type", "application/json"), ("x-request-id", "r1"),
           ("te", "trailers"), ("x-r", "r"), ("x-sub", "forged"), ("x-jwt-payload", "forged"),
           ("ambit-waypoint-hops", "9"), ("x-session", "MTkyLjAuMi4xMTo4MA=="), ("x-session", "%%%"),
           ("cookie", "sid=MTAuMjQ0LjEuMTE6ODA4MA"), ("cookie", "sticky=\"MTAuMjQ0LjEuMTA6ODA4MA==\""),
           ("x-user", "a" * 3000), ("grpc-timeout", "1S"), ("x-envoy-upstream-rq-timeout-ms", "1")]
METHODS = ["GET", "GET", "GET", "POST", "OPTIONS", "HEAD", "PUT", "DELETE", "PATCH"]


@dataclass(frozen=True)
class Target:
    """Where a request arrives: the tunnel's `Downstream` and the authorities that name it."""

    down: Downstream
    authorities: tuple[str, ...]
    grpc: bool = False


def mesh_targets(proxy: WaypointProxy) -> list[Target]:
    """Every Service port of the waypoint's route table, as a client's tunnel names it (the VIP,
    else the Service alone: its routes decide all the same)."""
    v = proxy.config.view
    out: list[Target] = []
    seen: set[tuple[str, str, int]] = set()
    for hr in list(v.table.hosts.values()) + list(v.table.by_service.values()):
        svc = v.services.get(hr.service) if hr.service else None
        ports = [p.port for p in svc.ports] if svc is not None else [80]
        for port in ports or [80]:
            k = (hr.service, hr.hostname, port)
            if k in seen:
                continue
            seen.add(k)
            vip = svc.vips[0] if svc is not None and svc.vips else ""
            down = None
            if vip:
                down, _ = proxy.downstream("spiffe://cluster.local/ns/demo/sa/client", "10.244.1.50", f"{vip}:{port}")
            if down is None or down.service != hr.service:
                down = Downstream("spiffe://cluster.local/ns/demo/sa/client", "10.244.1.50", "demo",
                                  (("app", "client"),), vip, port, hr.service, hr.hostname)
            short = hr.hostname.split(".")[0]
            grpc = svc is not None and any(p.port == port and p.protocol in ("GRPC", "HTTP2") for p in svc.ports)
            out.append(Target(down, (hr.hostname, f"{hr.hostname}:{port}", short, f"{vip}:{port}" if vip else short),
                              grpc))
    return out


def ingress_targets(proxy: WaypointProxy) -> list[Target]:
    """The ingress gateway's HTTP and HTTPS listener ports, with the hostnames they route (an
    HTTPS request on the listener group its SNI chose)."""
    out: list[Target] = []
    for port in proxy.config.view.ingress.ports.values():
        if port.protocol not in ("HTTP", "HTTPS"):
            continue
        hosts = tuple(h.replace("*", "x") for h in port.table.hosts) or ("app.example.com",)
        if port.protocol == "HTTP":
            out.append(Target(Downstream(source_ip="203.0.113.7", destination_port=port.port, edge="http",
                                         local_ip="10.244.9.9"), hosts))
            continue
        for ln in port.listeners:
            out.append(Target(Downstream(source_ip="203.0.113.7", destination_port=port.port, edge="https",
                                         listener=listener_group(ln), local_ip="10.244.9.9"), hosts))
    return out


def draw_request(rng: random.Random, target: Target, words: list[str]) -> Request:
    """A request to `target`: from the seeds' vocabulary and the mutated object's `words`."""
    method = rng.choice(METHODS)
    if words and rng.random() < 0.03:
        method = _token_chars(rng.choice(words)).upper() or method
    path = rng.choice(PATHS)
    slashed = [w for w in words if w.startswith("/")]
    if slashed and rng.random() < 0.5:
        path = rng.choice(slashed)
    path = "".join(ch if " " < ch <= "~" else "%%%02X" % (ord(ch) & 0xFF) for ch in path) or "/"
    if not path.startswith("/"):
        path = "/" + path
    path += rng.choice(QUERIES)
    if rng.random() < 0.15:
        path += ("&" if "?" in path else "?") + "token=" + token(rng)
    headers = [rng.choice(HEADERS) for _ in range(rng.randrange(5))]
    for _ in range(rng.randrange(3) if words else 0):
        name = _token_chars(rng.choice(words)) or "x-w"
        headers.append((name, _header_safe(rng.choice(words))))
    if rng.random() < 0.3:
        where = rng.randrange(3)
        tok = token(rng)
        headers.append(("authorization", f"Bearer {tok}") if where == 0 else
                       ("x-jwt", f"Bearer {tok}") if where == 1 else ("cookie", f"session={tok}"))
    if rng.random() < 0.2:
        headers.append(("cookie", f"sid={session_value(rng)}") if rng.random() < 0.5 else
                       ("x-session", session_value(rng)))
    if method == "OPTIONS" and rng.random() < 0.7:
        headers += [("origin", "https://a.example.com"), ("access-control-request-method", rng.choice(METHODS))]
    headers = [(k, v) for k, v in headers if k not in ("host", "content-length", "transfer-encoding", "connection",
                                                       "upgrade")]
    grpc = target.grpc and rng.random() < 0.7
    if grpc:
        method, path = "POST", rng.choice(["/echo.Echo/Say", "/echo.Echo/Other", "/grpc.Other/X"])
        headers.append(("content-type", "application/grpc"))
    body = b"" if method in ("GET", "HEAD", "OPTIONS") and rng.random() < 0.9 else \
        (b"\x00\x00\x00\x00\x00" if grpc else b"x" * rng.choice([1, 100, 5000]))
    authority = rng.choice(target.authorities)
    if rng.random() < 0.1:      # a port that is not the Service's, or none, an IPv6 literal, a trailing dot
        authority = rng.choice([f"{authority.split(':')[0]}:{rng.choice([1, 443, 8443, 65535])}", "[::1]:80",
                                "[::1]", authority.split(":")[0] + ".", authority.upper(), "a:b:c"])
    upgrade = not grpc and method == "GET" and rng.random() < 0.05
    if upgrade:
        headers += [("connection", "Upgrade"), ("upgrade", "websocket"), ("sec-websocket-version", "13"),
                    ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")]
    # (HEAD over HTTP/1.1 only: the h2 library takes a HEAD response's content-length for its body's)
    return Request(method, path, authority, headers, body,
                   h2=method != "HEAD" and not upgrade and (grpc or rng.random() < 0.3))


def _max_rss() -> int:
    """The process's peak resident size so far, in bytes (Linux counts it in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss << 10


# --- the properties ----------------------------------------------------------------------------------

class Findings(logging.Handler):
    """Log records with a traceback (an exception the waypoint caught and logged), and what the
    event loop's exception handler is given (an exception nothing caught)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[1] is not None:
            self.seen.append(f"{record.name}: {record.getMessage()}: {record.exc_info[1]!r}\n"
                             f"{logging.Formatter().formatException(record.exc_info)}")

    def loop_error(self, loop: asyncio.AbstractEventLoop, ctx: dict[str, Any]) -> None:
        exc = ctx.get("exception")
        self.seen.append(f"event loop: {ctx.get('message')} {exc!r}")


@dataclass
class Outcome:
    """What one request came to."""

    request: Request
    status: int = 0
    cpu: float = 0.0
    problems: list[str] = field(default_factory=list)
    records: list[tuple[int, str, str]] = field(default_factory=list)     # (status, flags, detail) logged


@functools.cache
def _settings(ingress: bool) -> WaypointSettings:
    argv = ["--waypoint", "demo/ingress" if ingress else "demo/waypoint", "--pod-name", "wp-0", "--node", "node-2"]
    if ingress:
        argv += ["--gateway-class", "ambit"]
    s = load(argv)
    return dataclasses.replace(s, http=dataclasses.replace(s.http, drain_timeout=0.0))


def drive(cfg: WaypointConfig, ingress: bool, rng: random.Random, words: list[str], n: int) -> list[Outcome]:
    """`n` requests through a `WaypointProxy` on `cfg`, each on its own downstream connection, in
    one event loop on the virtual clock; what each came to."""
    findings = Findings()
    root = logging.getLogger()
    root.addHandler(findings)
    loop = VirtualLoop()
    loop.set_exception_handler(findings.loop_error)
    outcomes: list[Outcome] = []
    try:
        loop.run_until_complete(_drive(cfg, ingress, rng, words, n, outcomes, findings))
    finally:
        try:
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()
            root.removeHandler(findings)
    return outcomes


async def _drive(cfg: WaypointConfig, ingress: bool, rng: random.Random, words: list[str], n: int,
                 outcomes: list[Outcome], findings: Findings) -> None:
    metrics = Metrics()         # Istio's metrics and the Telemetry API's overrides, as the binary has them
    proxy = WaypointProxy(_settings(ingress), cfg, None, rng=random.Random(rng.random()),
                          http_metrics=HttpMetrics(metrics.registry), registry=metrics.registry, tcp_metrics=metrics)
    if ingress:     # an ingress gateway's decide routes by its listeners (none opened here)
        proxy.ingress = IngressListeners("127.0.0.1", lambda plug, down: None, lambda *a: None)
    origin = Origin(rng.choice((0, 0, 1, 2)))
    loop = asyncio.get_running_loop()

    def upstream(*args: Any) -> UpstreamTarget | None:
        t = proxy.upstream(*args)
        return dataclasses.replace(t, connect=origin.connector(t.protocol)) if t is not None else None

    records: list[RequestRecord] = []

    def access_log(rec: RequestRecord) -> None:
        records.append(rec)
        proxy._access_log(rec)

    proxy.engine = engine = Engine(proxy.settings.http, proxy.decide, upstream, access_log=access_log,
                                   stats=proxy._stats, rng=proxy.rng)
    targets = ingress_targets(proxy) if ingress else mesh_targets(proxy)
    if not targets:
        await engine.shutdown()
        return
    # the targets the mutated object names come first, the others now and then
    named = [t for t in targets if any(w and (w in t.authorities[0] or t.authorities[0] in w) for w in words)]
    demo = [t for t in targets if t.down.service.startswith("demo/")] or targets
    for _ in range(n):
        r = rng.random()
        target = rng.choice(named if named and r < 0.6 else demo if r < 0.85 else targets)
        req = draw_request(rng, target, words)
        out = Outcome(req)
        outcomes.append(out)
        before, logged = len(findings.seen), len(records)
        c0, rss0, v0, tries = time.process_time(), _max_rss(), loop.time(), origin.answered
        try:
            with config_fuzz.bounded(f"{req.method} {req.path[:80]}", WALL_LIMIT):
                out.status = await _one(engine, target.down, req)
        except TimeoutError:
            # Still retrying (a route's `attempts` in the billions and no timeout: Envoy, which Istio
            # gives no route timeout either, retries as long) is what the config asked for
            if origin.answered - tries < RETRYING:
                out.problems.append(f"no response within {VIRTUAL_LIMIT:.0f} s (virtual)")
            else:
                out.status = -2
        except (AssertionError, config_fuzz.Hang) as e:
            out.problems.append(str(e))
        out.cpu = time.process_time() - c0
        if out.cpu > CPU_LIMIT + CPU_SHARE * (loop.time() - v0):
            out.problems.append(f"took {out.cpu:.2f} s of CPU in {loop.time() - v0:.1f} s (virtual)")
        grew = _max_rss() - rss0
        if grew > MEMORY_LIMIT:
            out.problems.append(f"the process grew by {grew >> 20} MiB")
        if out.status == 0 and not out.problems:
            out.problems.append("the connection was closed without a response")
        out.problems.extend(findings.seen[before:])
        out.records = [(r.status, r.response_flags, r.detail) for r in records[logged:]]
    before = len(findings.seen)
    await engine.shutdown()
    if outcomes:    # what went wrong after the last response (a mirror, the drain) is the last request's
        outcomes[-1].problems.extend(findings.seen[before:])


async def _one(engine: Engine, down: Downstream, req: Request) -> int:
    """One request on a fresh downstream connection: its response status (-1: an h2 reset)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[int] = loop.create_future()
    proto = engine.protocol(down)
    client = _Client(proto, req, done)
    try:
        raw = client.request_bytes()
    except (h2.exceptions.ProtocolError, ValueError, UnicodeEncodeError):
        req.h2 = False      # a header h2 itself refuses to send: over HTTP/1.1 instead
        client = _Client(proto, req, done)
        raw = client.request_bytes()
    proto.connection_made(client)
    client.proto.data_received(raw)     # (the tunnel protocol hands itself over: `client.proto` follows)
    try:
        return await asyncio.wait_for(asyncio.shield(done), VIRTUAL_LIMIT)
    finally:
        client.close()
        await asyncio.sleep(0)


def check(key: Key, obj: Any, *more: tuple[Key, Any], seed: int = 0, n: int = REQUESTS) -> None:
    """test_config_fuzz's properties for the world with `key` replaced by `obj` (and `more`), and
    then this module's for requests through each gateway that applied it (see the docstring)."""
    configs = config_fuzz.check(key, obj, *more)
    rng = random.Random(seed)
    words = [w for w in strings_of(obj) + [s for _, o in more for s in strings_of(o)] if 0 < len(w) < 300]
    for (ns, name, cls), cfg in configs.items():
        left_out = [*cfg.view.table.errors, *(e for p in cfg.view.ingress.ports.values() for e in p.table.errors)]
        assert not left_out, f"{ns}/{name}: accepted config, routes left out of the table: {left_out}"
        with config_fuzz.quiet("ambit.waypoint", "ambit.waypoint.access", "waypoint.http", "ambit.waypoint.config"):
            outcomes = drive(cfg, cls in INGRESS_CLASSES, rng, words, n)
        bad = [o for o in outcomes if o.problems]
        assert not bad, "\n".join(f"{ns}/{name}: {o.request}: {o.problems}" for o in bad)


# --- hypothesis ------------------------------------------------------------------------------------

def _keys() -> list[Key]:
    """What a case mutates: the seeds that say the most to the request path more often."""
    return config_fuzz.KEYS + config_fuzz.RICH_KEYS * 2 + request_keys() * 8


def test_the_seeds_translate_cleanly_and_every_request_gets_a_response() -> None:
    """The fuzzer starts from valid input that requests go through: were a seed refused, or the
    unmutated world answered with an exception, its mutations would test nothing."""
    from controller.validation import validate_object
    for o in request_seeds():
        assert validate_object(o) == [], [str(e) for e in validate_object(o)]
    key = request_keys()[0]
    check(key, request_seeds()[0], *with_request_seeds(key, []), seed=1, n=40)


@given(st.sampled_from(_keys()), st.data(), st.integers(0, 2 ** 32))
@fuzzing.unit_budget(UNIT_EXAMPLES)
def test_requests_through_any_accepted_config_get_a_response(key: Key, data: st.DataObject, seed: int) -> None:
    c = config_fuzz.Drawn(data)
    check(key, mutated(key, c), *with_request_seeds(key, []), seed=seed)


@pytest.mark.fuzz
@given(st.sampled_from(_keys()), st.data(), st.integers(0, 2 ** 32))
@fuzzing.fuzz_budget(LONG_EXAMPLES)
def test_fuzz_requests_through_accepted_config_long(key: Key, data: st.DataObject, seed: int) -> None:
    test_requests_through_any_accepted_config_get_a_response.hypothesis.inner_test(key, data, seed)


# --- the long local run ------------------------------------------------------------------------------

Case = tuple[Key, Any, list[tuple[Key, Any]], int]


def chosen(key: Key, only: tuple[str, ...]) -> bool:
    """Whether a long run restricted to `only` (kinds, or `Kind/namespace/name`; nothing: every
    seed) mutates `key`."""
    return not only or any(o in (key[0], "/".join(key)) for o in only)


def _sweep_seeds(only: tuple[str, ...] = ()) -> list[tuple[Key, Obj]]:
    """The seeds `sweep` goes through: this module's, then test_config_fuzz's rich ones."""
    return [(k, o) for k, o in [*_request_seeds_by_key().items(), *((k, config_fuzz.WORLD[k]) for k in config_fuzz.RICH_KEYS)]
            if chosen(k, only)]


def sweep(only: tuple[str, ...] = (), once: bool = False) -> Iterator[tuple[Key, Obj]]:
    """Every scalar of this module's seeds and test_config_fuzz's rich ones (those `only` names)
    set to each odd value of its type (`odd_like`), one after the other, and again unless `once`:
    a random draw reaches a given field and value rarely (the values outside latin-1 that hung a
    rewritten request were found this way, after 20,000 random cases had not)."""
    while True:
        for key, seed in _sweep_seeds(only):
            for path in _leaves(seed):
                for value in config_fuzz.odd_like(config_fuzz.get(seed, path)):
                    obj = copy.deepcopy(seed)
                    config_fuzz.put(obj, path, value)
                    yield key, obj
        if once:
            return


def sweep_size(only: tuple[str, ...] = ()) -> int:
    """How many cases one pass of `sweep` has."""
    return sum(len(config_fuzz.odd_like(config_fuzz.get(seed, p))) for _, seed in _sweep_seeds(only)
               for p in _leaves(seed))


def _long_cases(rng: random.Random, only: tuple[str, ...] = (), sweep_only: bool = False,
                shard: tuple[int, int] = (0, 1), no_sweep: bool = False) -> Iterator[Case]:
    """Every other case the next of `sweep` (`sweep_only`: every case, and one pass; `no_sweep`:
    none, for random draws after a pass has been made); else a seed
    mutated (this module's and test_config_fuzz's rich ones most of the time), now and then with
    another mutated beside it; the unmutated seeds of this module beside. `only` restricts both to
    the seeds it names (`chosen`); `shard` (i, n) takes the sweep's cases i, i + n, ...: n runs
    side by side share one pass."""
    c = config_fuzz.Rolled(rng)
    swept = (case for i, case in enumerate(sweep(only, once=sweep_only)) if i % shard[1] == shard[0])
    pools = [[k for k in keys if chosen(k, only)]
             for keys in (request_keys(), config_fuzz.RICH_KEYS, config_fuzz.KEYS)]
    beside = [k for k in config_fuzz.RICH_KEYS + request_keys() if chosen(k, only)]
    if not any(pools):
        raise ValueError(f"--only {','.join(only)} names no seed")
    while True:
        if sweep_only or (not no_sweep and rng.random() < 0.5):
            case = next(swept, None)
            if case is None:
                return
            yield (*case, [], rng.randrange(2 ** 32))
            continue
        r = rng.random()
        pool = pools[0 if r < 0.5 else 1 if r < 0.8 else 2] or next(p for p in pools if p)
        key = rng.choice(pool)
        more = [(k, mutated(k, c)) for k in rng.sample(beside, min(len(beside), rng.choice((0, 0, 0, 1))))
                if k != key]
        yield key, mutated(key, c), more, rng.randrange(2 ** 32)


def _described(case: Case) -> str:
    key, obj, more, seed = case
    return f"(request seed {seed}) " + config_fuzz._described((key, obj, more))


def long_run(cases: int, seed: int, only: tuple[str, ...] = (), sweep_only: bool = False,
             shard: tuple[int, int] = (0, 1), no_sweep: bool = False) -> int:
    return fuzzing.long_run(cases, seed, lambda rng: _long_cases(rng, only, sweep_only, shard, no_sweep),
                            lambda case: check(case[0], case[1], *with_request_seeds(case[0], case[2]), seed=case[3]),
                            describe=_described, progress_every=100)


def _shard(text: str) -> tuple[int, int]:
    i, n = (int(x) for x in text.split("/"))
    if not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"want I/N with 0 <= I < N, got {text}")
    return i, n


OPTIONS = argparse.ArgumentParser(add_help=False)
OPTIONS.add_argument("--only", type=lambda t: tuple(x for x in t.split(",") if x), default=(),
                     help="mutate and sweep only these seeds: kinds (HTTPRoute,GRPCRoute) or Kind/namespace/name")
OPTIONS.add_argument("--sweep-only", action="store_true",
                     help="every case from the sweep, which ends the run after one pass (--cases bounds it)")
OPTIONS.add_argument("--no-sweep", action="store_true", help="random cases only (after a pass of the sweep)")
OPTIONS.add_argument("--shard", type=_shard, default=(0, 1),
                     help="I/N: this run takes the sweep's cases I, I+N, ... (N runs share one pass)")
OPTIONS.add_argument("--sweep-size", action="store_true", help="print how many cases one sweep pass has, and exit")


if __name__ == "__main__":
    opts, rest = OPTIONS.parse_known_args()
    if opts.sweep_size:
        print(sweep_size(opts.only))
        sys.exit(0)

    def run(cases: int, seed: int) -> int:
        return long_run(cases, seed, opts.only, opts.sweep_only, opts.shard, opts.no_sweep)
    sys.exit(fuzzing.main(run, cases=3000, argv=rest, parents=[OPTIONS]))
