"""The lab's gRPC echo: a unary method `/ambit.lab.Echo/Say` that answers the request bytes
prefixed with the pod's name, and a client mode for tests (`--call HOST:PORT`). Raw bytes, no
generated stubs: what is tested is the transport (HTTP/2, trailers, gRPC status), not protobuf.

    python -m ambitctl.lab.apps.grpcecho --port 9000
    python -m ambitctl.lab.apps.grpcecho --call myapp-grpc:9000 --message hi [--metadata k=v]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from concurrent import futures

import grpc

METHOD = "/ambit.lab.Echo/Say"


def serve(port: int) -> None:
    pod = os.environ.get("POD_NAME", socket.gethostname()).encode()

    def say(request: bytes, context: grpc.ServicerContext) -> bytes:
        md = dict(context.invocation_metadata())
        if md.get("x-fail") == "1":
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "asked to fail")
        return pod + b": " + request

    handler = grpc.method_handlers_generic_handler(
        "ambit.lab.Echo", {"Say": grpc.unary_unary_rpc_method_handler(say)})
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"0.0.0.0:{port}")
    server.start()
    server.wait_for_termination()


def call(target: str, message: str, metadata: list[str], timeout: float) -> int:
    with grpc.insecure_channel(target) as ch:
        fn = ch.unary_unary(METHOD)
        md = [tuple(m.split("=", 1)) for m in metadata]
        try:
            reply = fn(message.encode(), metadata=md, timeout=timeout)
            print(json.dumps({"code": "OK", "reply": reply.decode()}))
        except grpc.RpcError as e:
            print(json.dumps({"code": e.code().name, "details": e.details()}))
    return 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, default=9000)
    ap.add_argument("--call")
    ap.add_argument("--message", default="hello")
    ap.add_argument("--metadata", action="append", default=[])
    ap.add_argument("--timeout", type=float, default=5.0)
    a = ap.parse_args()
    if a.call:
        sys.exit(call(a.call, a.message, a.metadata, a.timeout))
    serve(a.port)


if __name__ == "__main__":
    main()
