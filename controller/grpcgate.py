"""Check a call's credential before gRPC reads its request (a grpc.aio server interceptor).

grpc.aio reads a unary request whole (up to `grpc.max_receive_message_length`, 4 MiB) before the
handler runs, so a credential checked in the handler is checked too late: 200 concurrent 4 MiB
requests without a credential took the controller from 110 MB to about 900 MB. An interceptor runs
when the call's headers have arrived and before any message is read, and the metadata is all a
credential check needs. So each service registers, per method, the same check its handler makes
(`CallGate.guard`); a caller that fails it is refused from here, by a handler that never reads the
request, and a caller that passes goes on to the real handler, which checks again (a confirmed
token is cached, controller/ca/credentials.py) and then authorizes what the request asks for.

What anonymous callers can make the controller hold stays small whatever their number:
- a call whose check is pending holds its headers and at most one HTTP/2 stream window of its
  request (64 KiB: SERVER_OPTIONS turns off BDP probing, which grew the window to megabytes), and
  the checks that can wait are bounded where they wait: at most 64 TokenReviews in flight per
  verifier, a refusal at once (UNAVAILABLE) past that (controller/ca/credentials.py,
  controller/debug/readers.py). Calls that passed (every node's long-lived config streams and
  feeds) are not counted: grpc's `maximum_concurrent_rpcs` would count them too, and a bound low
  enough to matter would lock the nodes of a large mesh out;
- a refusal that reads the first request before it answers (`drain`, the config stream's: its
  client only learns the reason once its first write is through) does so for at most
  `max_draining` calls at once, each for at most `drain_timeout`; the others are refused without
  reading, and their clients may see a transport error instead of the reason.

A call whose credential verified also marks its connection authenticated in the accept gate
(controller/acceptgate.py `authenticated`): at the port's connection bounds, connections that never
authenticate give way to new ones, and authenticated ones never do.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc

from controller.acceptgate import authenticated, peer_of
from controller.msgsize import limited
from controller.validation import printable

log = logging.getLogger("ambit.controller.grpcgate")

MAX_DRAINING = 1
DRAIN_TIMEOUT = 1.0


class CallRefused(Exception):
    """Refuse the call with `code`; the message says why (it goes to the client)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


# The metadata (lower-cased keys, text values) -> who the credential authenticated on success, or
# CallRefused. A falsy result (a check with nothing to verify: --insecure-config-stream) passes the
# call without counting its connection as authenticated.
Check = Callable[[Mapping[str, str]], Awaitable[Any]]


@dataclass(frozen=True)
class Guard:
    check: Check
    drain: bool = False         # read (and drop) the first request before refusing
    max_message: int = 0        # bytes one request message of a caller that passed may hold
                                # (controller/msgsize.py); 0: the server's own bound


def metadata_dict(pairs: Any) -> dict[str, str]:
    """gRPC metadata pairs as a dict with lower-cased keys; binary values are left out."""
    return {k.lower(): v for k, v in (pairs or ()) if isinstance(v, str)}


class CallGate(grpc.aio.ServerInterceptor):
    """Refuse calls whose credential fails before their request is read (see the module doc)."""

    def __init__(self, *, max_draining: int = MAX_DRAINING, drain_timeout: float = DRAIN_TIMEOUT) -> None:
        self.guards: dict[str, Guard] = {}
        self.max_draining, self.drain_timeout = max_draining, drain_timeout
        self.draining = 0
        self.refused = 0
        self.exhausted = 0      # of which RESOURCE_EXHAUSTED: a client over its rate (controller/fairness.py)

    def guard(self, guards: Mapping[str, Guard]) -> None:
        """Register the checks of some methods ("/package.Service/Method" -> Guard)."""
        self.guards.update(guards)

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        guard = self.guards.get(details.method)
        if guard is None:
            return await continuation(details)
        try:
            caller = await guard.check(metadata_dict(details.invocation_metadata))
        except CallRefused as e:
            return self._refusal(details.method, e, guard.drain)
        handler = await continuation(details)
        if handler is not None and caller:
            # a credential verified (a check with nothing to verify, e.g. --insecure-config-stream,
            # returns nothing): the call's connection is never evicted (controller/acceptgate.py)
            handler = marking(handler)
        if guard.max_message and handler is not None:
            return limited(handler, details.method, guard.max_message)
        return handler

    def _refusal(self, method: str, refused: CallRefused, drain: bool) -> grpc.RpcMethodHandler:
        """A handler that refuses without reading the request (a request-streaming handler reads
        only what it asks for), or after reading its first message within the drain bounds."""
        self.refused += 1
        code, message = refused.code, printable(str(refused), 2048)
        # A client over its rate is logged the first time and every 1,000th after: its loop of
        # requests must not become a loop of log lines (the metric counts each).
        quiet = False
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            self.exhausted += 1
            quiet = self.exhausted % 1000 != 1

        async def refuse(requests: Any, context: grpc.aio.ServicerContext) -> None:
            if not quiet:
                log.warning("refused a call to %s from %s before reading it: %s: %s", method, peer_of(context),
                            code.name, message)
            if drain and self.draining < self.max_draining:
                self.draining += 1
                try:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(requests.__anext__(), self.drain_timeout)
                finally:
                    self.draining -= 1
            await context.abort(code, message)

        return grpc.stream_stream_rpc_method_handler(refuse)


def marking(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """`handler`, telling the accept gate that its call's connection authenticated before it runs
    (the interceptor sees the call's metadata, not its connection: only the handler's context
    names the connection)."""
    kind = next(k for k in ("unary_unary", "unary_stream", "stream_unary", "stream_stream") if getattr(handler, k))
    inner = getattr(handler, kind)
    if inspect.isasyncgenfunction(inner):
        async def stream(request: Any, context: Any) -> Any:
            authenticated(context)
            async for r in inner(request, context):
                yield r
        return handler._replace(**{kind: stream})

    async def call(request: Any, context: Any) -> Any:
        authenticated(context)
        result = inner(request, context)
        return await result if inspect.isawaitable(result) else result
    return handler._replace(**{kind: call})


def method_path(file_descriptor: Any, service: str, method: str) -> str:
    """The gRPC path of `service.method` in a generated `*_pb2` module's DESCRIPTOR."""
    svc = file_descriptor.services_by_name[service]
    if method not in svc.methods_by_name:
        raise KeyError(f"{svc.full_name} has no method {method}")
    return f"/{svc.full_name}/{method}"
