"""The lab's gRPC echo service: says which pod and version answered, over unary and server-streaming
calls, so gRPC routing, load balancing and L7 policy are visible through the mesh.

Service `ambit.lab.Echo` (h2c, gRPC's prior-knowledge HTTP/2), messages are protobuf's well-known
`google.protobuf.Struct`, so any gRPC client can call it without generated code:
- `/ambit.lab.Echo/Echo` (unary): replies {pod, namespace, version, peer, method, message, metadata}.
- `/ambit.lab.Echo/Stream` (server streaming): `count` replies (default 3), each with its `seq`.
A request field `status` (a gRPC code name, e.g. "UNAVAILABLE") makes the call fail with it.
`--fail-every N` makes every Nth call the server gets fail on its own with `--fail-code` (default
UNAVAILABLE), so gRPC retries and outlier detection are shown without request tricks.

`python -m ambitctl.lab.apps.grpc_echo --port 9090 [--fail-every N] [--fail-code CODE]` serves;
`... call HOST:PORT [--stream N] [--message M] [--header k=v] [--repeat N [--tally]]` calls it and
prints one JSON line per reply (`--tally`: one line counting the calls per status code) (tests and the demo run
it inside a pod, where the mesh captures it).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import threading
from collections.abc import Iterator
from concurrent import futures
from typing import Any

# gRPC's default resolver (c-ares) reads neither the lab's per-netns /etc/hosts nor nsswitch, so
# service names would not resolve inside a pod; the native resolver (getaddrinfo) does. Set before
# gRPC's core reads it.
os.environ.setdefault("GRPC_DNS_RESOLVER", "native")

import grpc  # noqa: E402
from google.protobuf import json_format  # noqa: E402
from google.protobuf.struct_pb2 import Struct  # noqa: E402

SERVICE = "ambit.lab.Echo"
UNARY = f"/{SERVICE}/Echo"
STREAM = f"/{SERVICE}/Stream"
MAX_STREAM = 1000


def _struct(d: dict[str, Any]) -> Struct:
    s = Struct()
    s.update(d)
    return s


def _dict(s: Struct) -> dict[str, Any]:
    return json_format.MessageToDict(s)


def _metadata(items: Any) -> dict[str, str]:
    """Text metadata; a key sent more than once is joined with "," as HTTP/2 headers are, so a
    test sees both the client's value and one a proxy appended."""
    out: dict[str, str] = {}
    for k, v in items:
        if isinstance(v, str):
            out[k] = f"{out[k]},{v}" if k in out else v
    return out


class Echo:
    """The service's behaviour, independent of the server (tests call it with a fake context too)."""

    def __init__(self, pod: str = "", namespace: str = "", version: str = "", fail_every: int = 0,
                 fail_code: str = "UNAVAILABLE") -> None:
        labels = json.loads(os.environ.get("POD_LABELS", "{}"))
        self.fail_every = fail_every
        self.fail_code = getattr(grpc.StatusCode, fail_code.upper())
        self.calls = 0
        self._lock = threading.Lock()
        self.pod = pod or os.environ.get("POD_NAME", socket.gethostname())
        self.namespace = namespace or os.environ.get("POD_NAMESPACE", "")
        self.version = version or labels.get("version", "")

    def _reply(self, req: dict[str, Any], context: grpc.ServicerContext, method: str) -> dict[str, Any]:
        with self._lock:
            self.calls += 1
            n = self.calls
        if self.fail_every and n % self.fail_every == 0:
            context.abort(self.fail_code, f"call {n}: failing every {self.fail_every}")
        status = req.get("status")
        if status:
            code = getattr(grpc.StatusCode, str(status).upper(), None)
            if code is None or code is grpc.StatusCode.OK:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unknown status {status!r}")
            context.abort(code, f"asked to fail with {status}")
        return {"pod": self.pod, "namespace": self.namespace, "version": self.version,
                "peer": context.peer(), "method": method, "message": req.get("message", ""),
                "metadata": _metadata(context.invocation_metadata())}

    def echo(self, request: Struct, context: grpc.ServicerContext) -> Struct:
        return _struct(self._reply(_dict(request), context, UNARY))

    def stream(self, request: Struct, context: grpc.ServicerContext) -> Iterator[Struct]:
        req = _dict(request)
        count = int(req.get("count", 3))
        if not 0 <= count <= MAX_STREAM:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"count must be 0..{MAX_STREAM}, got {count}")
        base = self._reply(req, context, STREAM)
        for i in range(count):
            yield _struct({**base, "seq": i})


def handler(echo: Echo) -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(SERVICE, {
        "Echo": grpc.unary_unary_rpc_method_handler(echo.echo, request_deserializer=Struct.FromString,
                                                    response_serializer=Struct.SerializeToString),
        "Stream": grpc.unary_stream_rpc_method_handler(echo.stream, request_deserializer=Struct.FromString,
                                                       response_serializer=Struct.SerializeToString),
    })


def serve(port: int, echo: Echo | None = None, host: str = "0.0.0.0", workers: int = 8) -> tuple[grpc.Server, int]:
    """A started server; returns it and the bound port (port 0 picks one)."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers))
    server.add_generic_rpc_handlers((handler(echo or Echo()),))
    bound = server.add_insecure_port(f"{host}:{port}")
    if not bound:
        raise OSError(f"grpc-echo: cannot listen on {host}:{port}")
    server.start()
    return server, bound


def tally(target: str, repeat: int, timeout: float = 5.0, metadata: tuple[tuple[str, str], ...] = ()) -> dict[str, int]:
    """`repeat` unary calls on one channel, counted by status code name (failures do not stop it)."""
    out: dict[str, int] = {}
    with grpc.insecure_channel(target) as ch:
        fn = ch.unary_unary(UNARY, request_serializer=Struct.SerializeToString, response_deserializer=Struct.FromString)
        for i in range(repeat):
            try:
                fn(_struct({"message": str(i)}), timeout=timeout, metadata=metadata)
                code = "OK"
            except grpc.RpcError as e:
                code = e.code().name
            out[code] = out.get(code, 0) + 1
    return out


def call(target: str, message: str = "", stream: int = 0, metadata: tuple[tuple[str, str], ...] = (),
         status: str = "", timeout: float = 5.0, repeat: int = 1) -> list[dict[str, Any]]:
    """One call (unary, or server streaming with `stream` replies); the replies as dicts. Raises
    grpc.RpcError with the server's (or the mesh's) status on failure. `repeat` makes that many
    unary calls on one channel (a weighted split is measured over many calls)."""
    req: dict[str, Any] = {"message": message}
    if status:
        req["status"] = status
    with grpc.insecure_channel(target) as ch:
        if stream:
            req["count"] = stream
            fn = ch.unary_stream(STREAM, request_serializer=Struct.SerializeToString,
                                 response_deserializer=Struct.FromString)
            return [_dict(r) for r in fn(_struct(req), timeout=timeout, metadata=metadata)]
        fn1 = ch.unary_unary(UNARY, request_serializer=Struct.SerializeToString,
                             response_deserializer=Struct.FromString)
        return [_dict(fn1(_struct(req), timeout=timeout, metadata=metadata)) for _ in range(max(1, repeat))]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "call":
        ap = argparse.ArgumentParser(prog="grpc_echo call")
        ap.add_argument("target", help="host:port")
        ap.add_argument("--message", default="")
        ap.add_argument("--stream", type=int, default=0, help="server streaming: this many replies")
        ap.add_argument("--status", default="", help="ask the server to fail with this gRPC code")
        ap.add_argument("--header", action="append", default=[], help="metadata k=v (repeatable)")
        ap.add_argument("--timeout", type=float, default=5.0)
        ap.add_argument("--repeat", type=int, default=1, help="unary: this many calls on one channel")
        ap.add_argument("--tally", action="store_true", help="with --repeat: print the count per status code")
        a = ap.parse_args(argv[1:])
        md = tuple(tuple(h.split("=", 1)) for h in a.header)
        if a.tally:
            print(json.dumps(tally(a.target, a.repeat, a.timeout, md)), flush=True)  # type: ignore[arg-type]
            return 0
        try:
            for r in call(a.target, a.message, a.stream, md, a.status, a.timeout, a.repeat):  # type: ignore[arg-type]
                print(json.dumps(r), flush=True)
        except grpc.RpcError as e:
            print(json.dumps({"code": e.code().name, "details": e.details()}), flush=True)
            return 1
        return 0
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, default=9090)
    ap.add_argument("--fail-every", type=int, default=0, help="every Nth call fails with --fail-code")
    ap.add_argument("--fail-code", default="UNAVAILABLE", help="gRPC status code name for --fail-every")
    a = ap.parse_args(argv)
    if not hasattr(grpc.StatusCode, a.fail_code.upper()):
        ap.error(f"unknown gRPC code {a.fail_code!r}")
    server, _ = serve(a.port, Echo(fail_every=a.fail_every, fail_code=a.fail_code))
    server.wait_for_termination()
    return 0


if __name__ == "__main__":
    sys.exit(main())
