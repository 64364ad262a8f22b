"""The lab's external authorizer (AuthorizationPolicy action CUSTOM), like Istio's samples/extauthz:
one decision served both as Envoy's HTTP ext_authz service and as its gRPC `envoy.service.auth.v3.
Authorization/Check` (ambit/api/ext_authz.proto), so a mesh config can name either kind.

The decision is on the checked request's `x-ext-authz` header:
- `allow`: allowed. HTTP: 200; gRPC: OK, the request getting `x-ext-authz-check-result: allowed`
  and `x-ext-authz-check-received` (ok_response headers) and the response
  `x-ext-authz-check-result: allowed` (response_headers_to_add);
- `error`: the authorizer fails (HTTP 500; gRPC status UNAVAILABLE): the proxy's statusOnError or
  failOpen applies;
- anything else, or none: denied, 403 with body "denied by ext_authz" (gRPC: PERMISSION_DENIED with
  a denied_response carrying them);
- none, on a gRPC check, with `--allow-principal-suffix S` (env EXT_AUTHZ_ALLOW_PRINCIPAL_SUFFIX):
  allowed when the source principal ends with S (e.g. "/sa/frontend"), as Istio's sample allows
  by `--allow_service_account`. This is how a TCP connection is decided: the network ext_authz
  filter's check has no HTTP request, so no header, only the peers.
Every answer carries `x-ext-authz-check-result: allowed|denied` and `x-ext-authz-check-received`:
what the check said, as compact JSON (method, path, host, headers; gRPC also source/destination
principals and body), so tests see what the proxy sent. `x-ext-authz-delay: S` answers S s late.

`python -m ambitctl.lab.apps.ext_authz --http-port 8000 --grpc-port 9000` serves both.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

os.environ.setdefault("GRPC_DNS_RESOLVER", "native")     # as grpc_echo: the lab's per-netns /etc/hosts

import grpc  # noqa: E402

from ambit.api import ext_authz_pb2 as pb  # noqa: E402
from ambit.api import ext_authz_pb2_grpc as pb_grpc  # noqa: E402

HEADER = "x-ext-authz"
RESULT = "x-ext-authz-check-result"
RECEIVED = "x-ext-authz-check-received"
DELAY = "x-ext-authz-delay"
DENIED_BODY = "denied by ext_authz"


def _received(d: dict[str, Any]) -> str:
    return json.dumps(d, separators=(",", ":"), sort_keys=True)     # ASCII: a valid header value


def _delay(value: str | None) -> None:
    try:
        s = float(value or 0)
    except ValueError:
        s = 0.0
    if s > 0:
        time.sleep(min(s, 30.0))


class _Http(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ambit-ext-authz/1"

    def _check(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers: dict[str, str] = {}
        for k, v in self.headers.items():
            headers[k.lower()] = f"{headers[k.lower()]},{v}" if k.lower() in headers else v
        seen = {"method": self.command, "path": self.path, "host": headers.get("host", ""), "headers": headers,
                "body": body.decode("utf-8", "replace")}
        srv: HttpAuthorizer = self.server  # type: ignore[assignment]
        srv.record(seen)
        _delay(headers.get(DELAY))
        verdict = headers.get(HEADER, "")
        status, result, out = (200, "allowed", b"") if verdict == "allow" else \
            (500, "error", b"authorizer error") if verdict == "error" else (403, "denied", DENIED_BODY.encode())
        self.send_response(status)
        self.send_header(RESULT, result)
        self.send_header(RECEIVED, _received(seen))
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(out)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = _check

    def log_message(self, fmt: str, *args: object) -> None:
        if os.environ.get("EXT_AUTHZ_ACCESS_LOG"):
            super().log_message(fmt, *args)


class HttpAuthorizer(ThreadingHTTPServer):
    """The HTTP service; `checks`: what each check said (for in-process tests)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, host: str, port: int) -> None:
        super().__init__((host, port), _Http)
        self.checks: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def record(self, seen: dict[str, Any]) -> None:
        with self._lock:
            self.checks.append(seen)


def _option(key: str, value: str, append: bool | None = None) -> pb.HeaderValueOption:
    o = pb.HeaderValueOption(header=pb.HeaderValue(key=key, value=value))
    if append is not None:
        o.append.value = append
    return o


class GrpcAuthorizer(pb_grpc.AuthorizationServicer):
    """The gRPC service; `checks`: what each CheckRequest said, and `delay`: seconds every answer
    waits (a TCP check carries no x-ext-authz-delay header), for in-process tests."""

    def __init__(self, allow_principal_suffix: str = "") -> None:
        self.checks: list[dict[str, Any]] = []
        self.allow_principal_suffix = allow_principal_suffix
        self.delay = 0.0
        self._lock = threading.Lock()

    def Check(self, request: pb.CheckRequest, context: grpc.ServicerContext) -> pb.CheckResponse:  # noqa: N802
        a = request.attributes
        h = a.request.http
        seen = {"tcp": not a.HasField("request"), "method": h.method, "path": h.path, "host": h.host, "headers": dict(h.headers), "id": h.id,
                "protocol": h.protocol, "scheme": h.scheme, "body": h.body, "raw_body": h.raw_body.hex(),
                "source": {"principal": a.source.principal, "address": a.source.address.socket_address.address},
                "destination": {"principal": a.destination.principal,
                                "address": a.destination.address.socket_address.address,
                                "port": a.destination.address.socket_address.port_value}}
        with self._lock:
            self.checks.append(seen)
        _delay(h.headers.get(DELAY) or str(self.delay))
        verdict = h.headers.get(HEADER)
        if verdict is None:     # no header (a TCP check has no request at all): by the source principal
            sfx = self.allow_principal_suffix
            verdict = "allow" if sfx and a.source.principal.endswith(sfx) else ""
        if verdict == "error":
            context.abort(grpc.StatusCode.UNAVAILABLE, "authorizer error")
        received = _received({k: seen[k] for k in ("method", "path", "host", "headers", "source", "destination")})
        if verdict == "allow":
            return pb.CheckResponse(status=pb.RpcStatus(code=0), ok_response=pb.OkHttpResponse(
                headers=[_option(RESULT, "allowed"), _option(RECEIVED, received)],
                response_headers_to_add=[_option(RESULT, "allowed")]))
        return pb.CheckResponse(status=pb.RpcStatus(code=7, message=DENIED_BODY), denied_response=pb.DeniedHttpResponse(
            status=pb.HttpStatus(code=403), body=DENIED_BODY,
            headers=[_option(RESULT, "denied"), _option(RECEIVED, received)]))


def serve_http(port: int = 0, host: str = "0.0.0.0") -> HttpAuthorizer:
    """The HTTP service, started on a thread (port 0 picks one: `server_address[1]`)."""
    srv = HttpAuthorizer(host, port)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def serve_grpc(port: int = 0, host: str = "0.0.0.0",
               allow_principal_suffix: str = "") -> tuple[grpc.Server, int, GrpcAuthorizer]:
    """The gRPC service, started; (server, bound port, servicer)."""
    servicer = GrpcAuthorizer(allow_principal_suffix)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    pb_grpc.add_AuthorizationServicer_to_server(servicer, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    server.start()
    return server, bound, servicer


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--http-port", type=int, default=8000)
    ap.add_argument("--grpc-port", type=int, default=9000)
    ap.add_argument("--allow-principal-suffix", default=os.environ.get("EXT_AUTHZ_ALLOW_PRINCIPAL_SUFFIX", ""),
                    help="a gRPC check without the x-ext-authz header (a TCP connection's) is allowed when the "
                         "source principal ends with this (e.g. /sa/frontend); denied when unset")
    a = ap.parse_args(argv)
    http = serve_http(a.http_port)
    server, _, _ = serve_grpc(a.grpc_port, allow_principal_suffix=a.allow_principal_suffix)
    try:
        server.wait_for_termination()
    finally:
        http.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
