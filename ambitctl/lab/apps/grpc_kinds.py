"""A lab gRPC service with all four call kinds, for checking that gRPC works through the mesh as
it does through Envoy: long and large streams, half-close ordering, cancellation reaching the
server, deadlines, trailing metadata (text and binary) and status details.

Service `ambit.lab.Kinds` (h2c), raw bytes messages (no generated code needed):
- `Unary`: the request is a JSON object (`sleep` s, `size` reply bytes, `code`/`message` to fail,
  `trailers` {k: v}, `details` hex of grpc-status-details-bin); replies with `size` bytes (or a JSON
  echo of the invocation metadata when `size` is absent).
- `Download` (server streaming): JSON {count, size, interval}: `count` messages of `size` bytes.
- `Upload` (client streaming): replies JSON {messages, bytes} once the client half-closes (or at
  once on a message `b"enough"`, before the client has finished).
- `Chat` (bidi): echoes every message as it comes; after the client half-closes, one last message
  `b"end"` (so half-close ordering is visible), then OK; a message `b"quit"` ends the call
  at once (`b"bye"`, trailer x-quit) while the client may still be sending.
- `Stats`: JSON {calls: {method: n}, cancelled: [method...], timeouts: [seconds left when the call arrived, for calls with a deadline]}: which calls ended
  without the handler finishing (the client's cancel or deadline reached the server).

Also `grpc.health.v1.Health` (Check, Watch), always SERVING.

`python -m ambitctl.lab.apps.grpc_kinds --port 9000` serves.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

os.environ.setdefault("GRPC_DNS_RESOLVER", "native")     # see grpc_echo

import grpc  # noqa: E402

SERVICE = "ambit.lab.Kinds"
MAX = 64 * 1024 * 1024


class Kinds:
    def __init__(self) -> None:
        self.cancelled: list[str] = []
        self.timeouts: list[str] = []
        self.calls: dict[str, int] = {}
        self._lock = threading.Lock()

    def _watch(self, context: grpc.ServicerContext, method: str) -> dict[str, bool]:
        """Record `method` as cancelled if the RPC ends before its handler said it finished."""
        state = {"done": False}
        with self._lock:
            self.calls[method] = self.calls.get(method, 0) + 1

        def ended() -> None:
            if not state["done"]:
                with self._lock:
                    self.cancelled.append(method)
        context.add_callback(ended)
        left = context.time_remaining()     # grpc-core consumes grpc-timeout into the deadline
        if left is not None and left < 1e6:
            with self._lock:
                self.timeouts.append(f"{left:.3f}")
        return state

    def unary(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        state = self._watch(context, "Unary")
        req = json.loads(request or b"{}")
        end = time.monotonic() + float(req.get("sleep", 0))
        while time.monotonic() < end:
            if not context.is_active():
                return b""
            time.sleep(0.02)
        if req.get("trailers") or req.get("details"):
            md = [(k, bytes.fromhex(v) if k.endswith("-bin") else v) for k, v in (req.get("trailers") or {}).items()]
            if req.get("details"):
                md.append(("grpc-status-details-bin", bytes.fromhex(req["details"])))
            context.set_trailing_metadata(md)
        if req.get("headers"):
            context.send_initial_metadata(list(req["headers"].items()))
        state["done"] = True
        if req.get("code"):
            context.abort(getattr(grpc.StatusCode, req["code"]), req.get("message", ""))
        if "size" in req:
            return b"u" * min(int(req["size"]), MAX)
        return json.dumps({"metadata": [[k, v if isinstance(v, str) else v.hex()]
                                        for k, v in context.invocation_metadata()]}).encode()

    def download(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        state = self._watch(context, "Download")
        req = json.loads(request or b"{}")
        size, interval = min(int(req.get("size", 10)), MAX), float(req.get("interval", 0))
        for i in range(int(req.get("count", 3))):
            if interval:
                time.sleep(interval)
            if not context.is_active():
                return
            yield i.to_bytes(4, "big") + b"d" * max(0, size - 4)
        state["done"] = True
        if req.get("code"):
            context.abort(getattr(grpc.StatusCode, req["code"]), req.get("message", ""))

    def upload(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        state = self._watch(context, "Upload")
        n = total = 0
        for m in requests:
            n += 1
            total += len(m)
            if m == b"enough":          # answer before the client half-closes
                break
        state["done"] = True
        return json.dumps({"messages": n, "bytes": total}).encode()

    def chat(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        state = self._watch(context, "Chat")
        for m in requests:
            if m == b"quit":            # finish while the client still sends
                context.set_trailing_metadata([("x-quit", "yes")])
                state["done"] = True
                yield b"bye"
                return
            yield m
        yield b"end"
        state["done"] = True

    def stats(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        with self._lock:
            return json.dumps({"cancelled": self.cancelled, "timeouts": self.timeouts,
                               "calls": self.calls}).encode()


def _id(b: bytes) -> bytes:
    return b


SERVING = b"\x08\x01"        # grpc.health.v1.HealthCheckResponse{status: SERVING}, protobuf wire form


def _health_check(request: bytes, context: grpc.ServicerContext) -> bytes:
    return SERVING


def _health_watch(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
    yield SERVING
    while context.is_active():      # Watch streams status changes; this server never changes
        time.sleep(0.1)


def health_handler() -> grpc.GenericRpcHandler:
    """grpc.health.v1.Health (Check, Watch) without grpcio-health-checking: always SERVING."""
    return grpc.method_handlers_generic_handler("grpc.health.v1.Health", {
        "Check": grpc.unary_unary_rpc_method_handler(_health_check, _id, _id),
        "Watch": grpc.unary_stream_rpc_method_handler(_health_watch, _id, _id),
    })


def handler(k: Kinds) -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(SERVICE, {
        "Unary": grpc.unary_unary_rpc_method_handler(k.unary, _id, _id),
        "Download": grpc.unary_stream_rpc_method_handler(k.download, _id, _id),
        "Upload": grpc.stream_unary_rpc_method_handler(k.upload, _id, _id),
        "Chat": grpc.stream_stream_rpc_method_handler(k.chat, _id, _id),
        "Stats": grpc.unary_unary_rpc_method_handler(k.stats, _id, _id),
    })


OPTIONS = [("grpc.max_receive_message_length", MAX), ("grpc.max_send_message_length", MAX)]


def serve(port: int, host: str = "0.0.0.0") -> tuple[grpc.Server, int]:
    """A started server and its bound port (port 0 picks one)."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), options=OPTIONS)
    server.add_generic_rpc_handlers((handler(Kinds()), health_handler()))
    bound = server.add_insecure_port(f"{host}:{port}")
    if not bound:
        raise OSError(f"grpc-kinds: cannot listen on {host}:{port}")
    server.start()
    return server, bound


def channel(target: str) -> grpc.Channel:
    return grpc.insecure_channel(target, options=OPTIONS)


def method(ch: grpc.Channel, name: str) -> Any:
    kind = {"Unary": ch.unary_unary, "Stats": ch.unary_unary, "Download": ch.unary_stream,
            "Upload": ch.stream_unary, "Chat": ch.stream_stream}[name]
    return kind(f"/{SERVICE}/{name}", request_serializer=_id, response_deserializer=_id)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, default=9000)
    a = ap.parse_args(sys.argv[1:] if argv is None else argv)
    server, _ = serve(a.port)
    server.wait_for_termination()
    return 0


if __name__ == "__main__":
    sys.exit(main())
