"""Ambit's gRPC client side: grpclib channels to the controller, and what their failures mean.

Every gRPC client in Ambit (the config stream, the CA client, the status reporter and the tap feed
of the agent, ztunnel and the waypoint; the CLI's debug calls) talks to the controller, whose
server is grpcio. The clients use grpclib (gRPC on asyncio and the `h2` library the data plane
already loads) rather than grpcio's client: in a proxy grpcio's C core costs about 19 MB of RSS
(its 14.8 MB `cygrpc` text, libstdc++, its heap and 6 threads) for one long-lived stream and a
unary call every few minutes, which is a third of an idle ztunnel (docs/performance.md, round 9).

A channel here is one HTTP/2 connection, made on the first call; it does not reconnect by itself
(the callers own their backoff, as they did with grpcio's per-attempt channels). Keepalive finds a
controller that vanished without closing TCP (node lost, partition): a ping every
`KEEPALIVE_TIME` seconds, even between calls, and the connection is closed if it is not answered
within `KEEPALIVE_TIMEOUT`; the controller allows that rate (controller/configserver/server.py).
grpclib sets no limit on a received message's size (grpcio's was 64 MiB here); the peer is the
controller, authenticated against the pinned root before anything is read from it.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from grpclib.client import Channel

KEEPALIVE_TIME = 20.0
KEEPALIVE_TIMEOUT = 10.0
# Closed streams an HTTP/2 connection to the controller remembers (h2 keeps 65,536: see
# `_bounded_closed_streams`).
MAX_CLOSED_STREAMS = 256


def parse_target(target: str) -> tuple[str | None, int | None, str | None]:
    """`host:port`, `[v6]:port` or `unix:PATH` (also `unix://PATH`) as (host, port, path)."""
    if target.startswith("unix:"):
        path = target[len("unix:"):]
        path = path[2:] if path.startswith("//") else path
        if not path:
            raise ValueError(f"gRPC target {target!r}: no socket path after unix:")
        return None, None, path
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"gRPC target {target!r}: expected host:port or unix:PATH")
    return host.strip("[]"), int(port), None


def channel(target: str, ssl_context: ssl.SSLContext | None = None, server_hostname: str | None = None) -> Channel:
    """A grpclib channel to `target`: TLS with `ssl_context` (ALPN h2 is added, as gRPC servers
    require it) checked against `server_hostname`, or plaintext. Must be called in a running loop."""
    from grpclib.config import Configuration
    host, port, path = parse_target(target)
    if ssl_context is not None:
        ssl_context.set_alpn_protocols(["h2"])
    config = Configuration(
        _keepalive_time=KEEPALIVE_TIME, _keepalive_timeout=KEEPALIVE_TIMEOUT,
        _keepalive_permit_without_calls=True,
        # grpclib's defaults stop pinging after two unanswered-by-data pings and space them 5 min
        # apart: an idle config stream must keep being checked.
        _http2_max_pings_without_data=0, _http2_min_sent_ping_interval_without_data=KEEPALIVE_TIME,
        ssl_target_name_override=server_hostname if ssl_context is not None else None,
    )
    cls = _bounded_channel_class()
    if path is not None:
        return cls(path=path, ssl=ssl_context, config=config)
    return cls(host, port, ssl=ssl_context, config=config)


_BOUNDED: Any = None


def _bounded_channel_class() -> Any:
    """grpclib's Channel whose HTTP/2 connection remembers at most `MAX_CLOSED_STREAMS` closed
    streams (made once, on first use, so that importing this module does not load grpclib).

    Why: `h2` remembers every closed stream's id (up to 65,536 per connection) to tell a frame for a
    stream it reset from one for a stream it never saw. A channel here lives as long as its
    process and every unary call is a stream: the status report every `--report-interval`, a
    certificate for each identity a new pod brings. So a ztunnel's and an agent's memory rose
    with calls, by about 115 bytes each, up to 7.5 MB per channel (measured: about 3 calls per
    churned pod on the lab, a week of reports every 10 s to reach the cap). A frame for a stream
    forgotten this way is still refused, as h2 refuses any frame for a closed stream; only
    whether it was reset by us is no longer told apart, and the controller sends none."""
    global _BOUNDED
    if _BOUNDED is None:
        from grpclib.client import Channel, Handler
        from grpclib.protocol import H2Protocol

        class BoundedH2Protocol(H2Protocol):
            def connection_made(self, transport: Any) -> None:
                super().connection_made(transport)
                _bounded_closed_streams(self.connection._connection)

        class BoundedChannel(Channel):
            def _protocol_factory(self) -> H2Protocol:
                return BoundedH2Protocol(Handler(), self._config, self._h2_config)

        _BOUNDED = BoundedChannel
    return _BOUNDED


def _bounded_closed_streams(h2_connection: Any) -> None:
    """Cap `h2_connection`'s memory of closed streams at `MAX_CLOSED_STREAMS` (h2.utilities.SizeLimitDict)."""
    h2_connection._closed_streams._size_limit = MAX_CLOSED_STREAMS


def failure(e: BaseException) -> tuple[str, str] | None:
    """(gRPC status name, detail) for a failed call, or None if `e` is not a call's failure.

    grpclib raises the server's status as `GRPCError`; a connection that could not be made or was
    lost surfaces as OSError, an SSL error or grpclib's StreamTerminatedError, which grpcio called
    UNAVAILABLE; a deadline as TimeoutError, which grpcio called DEADLINE_EXCEEDED."""
    from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError
    if isinstance(e, GRPCError):
        return e.status.name, e.message or ""
    if isinstance(e, TimeoutError):
        return "DEADLINE_EXCEEDED", "no answer before the deadline"
    if isinstance(e, ssl.SSLError):
        return "UNAVAILABLE", f"TLS: {e.reason or e}"
    if isinstance(e, OSError):
        return "UNAVAILABLE", f"{e.strerror or e}"
    if isinstance(e, StreamTerminatedError | ProtocolError):
        return "UNAVAILABLE", f"{e}"
    return None


def describe(e: BaseException) -> str:
    """One line for a log or an error: `STATUS: detail` for a call's failure, else the exception."""
    f = failure(e)
    return f"{f[0]}: {f[1]}" if f is not None else f"{type(e).__name__}: {e}"


async def end_status(stream: Any) -> None:
    """After the server ended a client-streaming call (recv_message gave None): end our side and
    read the trailers, which raises the server's status as GRPCError unless it is OK."""
    from grpclib.exceptions import ProtocolError, StreamTerminatedError
    try:
        await stream.end()
    except (ProtocolError, StreamTerminatedError):
        pass                # already ended, or reset by the server: its trailers still say why
    await stream.recv_trailing_metadata()
