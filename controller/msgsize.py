"""Per-method bounds on the size of one request message, for callers whose credential passed.

grpc's `grpc.max_receive_message_length` (4 MiB) is one bound for the whole server. Most methods
need far less: a CSR is about 1 KiB, a status report at most MAX_REPORT (256 KiB), a debug
request a name or a filter. With only the server's bound an authenticated node could send 4 MiB
where 1 KiB is the most any real client sends, as many at once as its rate and stream bounds allow,
each parsed into Python objects several times its size.

grpc has no per-method receive limit, so `limited` wraps a method's handler: its request
deserializer measures the raw message before parsing it (the bytes are already read: what is
saved is the parse and everything the handler would build from it, and the handler's time), and
an oversized message is answered RESOURCE_EXHAUSTED with the method, the size and the bound. The
handler never sees it. For methods with a unary request (every one but the config stream and the
feed, which keep grpc's 4 MiB: a subscribe names every resource its client holds, a scrape answer
carries up to 2 MiB of metrics).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

log = logging.getLogger("ambit.controller.msgsize")

KiB = 1024
# The bound of the methods whose requests are small: a CSR (a P-256 CSR in PEM is under 1 KiB, an
# RSA-4096 one under 2 KiB) and its SPIFFE id; the debug API's requests (a proxy name, a tap
# filter); Status. 64 KiB is ample margin and 64 times less than grpc's 4 MiB.
SMALL = 64 * KiB
REFUSED = {"count": 0}      # oversized messages refused, for the log's rate limit


class _Oversized:
    """What the deserializer hands on instead of an oversized message (parsing is skipped)."""

    __slots__ = ("size",)

    def __init__(self, size: int) -> None:
        self.size = size


def _deserializer(inner: Callable[[bytes], Any] | None, limit: int) -> Callable[[bytes], Any]:
    def deserialize(raw: bytes) -> Any:
        if len(raw) > limit:
            return _Oversized(len(raw))
        return inner(raw) if inner is not None else raw
    return deserialize


def _message(method: str, size: int, limit: int) -> str:
    return (f"{method}: a request message of {size} bytes, over this method's bound of {limit} bytes "
            "(controller/msgsize.py; no Ambit client sends one this large)")


async def _refuse(context: Any, method: str, size: int, limit: int) -> None:
    REFUSED["count"] += 1
    if REFUSED["count"] % 1000 == 1:        # a loop of oversized requests is not a loop of log lines
        log.warning("refused an oversized request to %s from %s: %d bytes, bound %d (%d refused so far)",
                    method, context.peer(), size, limit, REFUSED["count"])
    await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, _message(method, size, limit))


def limited(handler: grpc.RpcMethodHandler, method: str, limit: int) -> grpc.RpcMethodHandler:
    """`handler` with its request messages bounded to `limit` bytes (see the module doc)."""
    if handler.request_streaming:
        # a stream's messages are read by the handler (context.read() or its iterator): the
        # streaming methods (the config stream, the feed) keep grpc's bound, and bound what they
        # keep of a message themselves (controller/configserver/subscription.py Claim)
        raise ValueError(f"{method}: a per-method message bound is for unary requests only")
    deserializer = _deserializer(handler.request_deserializer, limit)
    kind = "unary_stream" if handler.response_streaming else "unary_unary"
    inner = getattr(handler, kind)
    if inspect.isasyncgenfunction(inner):
        async def unary_gen(request: Any, context: Any) -> AsyncIterator[Any]:
            if isinstance(request, _Oversized):
                await _refuse(context, method, request.size, limit)
            async for r in inner(request, context):
                yield r
        wrapped: Any = unary_gen
    else:
        async def unary(request: Any, context: Any) -> Any:
            if isinstance(request, _Oversized):
                await _refuse(context, method, request.size, limit)
            return await inner(request, context)
        wrapped = unary
    return handler._replace(request_deserializer=deserializer, **{kind: wrapped})
