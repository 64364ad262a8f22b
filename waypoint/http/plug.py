"""The byte streams the engine speaks over, behind one shape: something you `attach` an
`asyncio.Protocol` to, which then sees an `asyncio.Transport`.

- `Plug`: a connected asyncio socket whose protocol is chosen later. It buffers what arrives before
  `attach` (bounded: reading pauses), then hands the transport to the protocol (`set_protocol`),
  so no forwarding layer stays on the hot path. `connect_tcp` opens one.
- `HBONETransport`: an `HBONEStream` (ambit/dataplane/hbone/stream.py) in push mode, dressed as an
  asyncio transport: `write` queues on the tunnel, `pause_reading` holds back the tunnel's
  flow-control window, the tunnel's backpressure becomes `pause_writing`/`resume_writing`, and
  RST_STREAM becomes `connection_lost(exc)`. The waypoint terminates HBONE downstream and opens
  HBONE upstream, so both legs are these.

Why one shape: the HTTP protocols are plain `asyncio.Protocol`s, tested over loopback sockets and
run over tunnels without a second implementation.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any, Protocol

from ambit.dataplane.keepalive import apply as apply_keepalive

if TYPE_CHECKING:
    from ambit.dataplane.hbone.stream import HBONEStream
    from ambit.model import TcpKeepalive

EARLY_LIMIT = 256 * 1024


class Attachable(Protocol):
    """A connected byte stream waiting for its protocol."""

    def attach(self, protocol: asyncio.Protocol) -> None: ...


class Plug(asyncio.Protocol):
    """An asyncio connection whose protocol is attached later (`attach`)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._early: list[bytes] = []
        self._early_size = 0
        self._eof = False
        self._lost = False
        self._lost_exc: Exception | None = None
        self._target: asyncio.Protocol | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._early.append(data)
        self._early_size += len(data)
        if self._early_size >= EARLY_LIMIT and self.transport is not None:
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        self._eof = True
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost, self._lost_exc = True, exc
        if self._target is not None:     # lost while the target was being attached
            self._target.connection_lost(exc)

    def attach(self, protocol: asyncio.Protocol) -> None:
        t = self.transport
        assert t is not None, "attach before connection_made"
        self._target = protocol
        if not self._lost:
            t.set_protocol(protocol)
        protocol.connection_made(t)
        early, self._early = self._early, []
        if self._early_size >= EARLY_LIMIT and not self._lost:
            with contextlib.suppress(RuntimeError):
                t.resume_reading()
        self._early_size = 0
        for data in early:
            protocol.data_received(data)
        if self._eof:
            keep = protocol.eof_received()
            if not keep:
                t.close()
        if self._lost:
            protocol.connection_lost(self._lost_exc)


async def connect_tcp(host: str, port: int, timeout: float, ssl: Any = None, server_hostname: str = "",
                      keepalive: TcpKeepalive | None = None) -> Plug:
    """A TCP connection (TCP_NODELAY, as asyncio sets by default) ready for `attach`; TLS over it
    when `ssl` (an SSLContext) is given, with `server_hostname` as the SNI; its socket with the
    cluster's TCP `keepalive` (ambit/dataplane/keepalive.py), set once connected (`host` may be a
    DNS name, which the loop resolves; keepalive only acts on an established connection anyway)."""
    loop = asyncio.get_running_loop()
    transport, plug = await asyncio.wait_for(
        loop.create_connection(Plug, host, port, ssl=ssl, server_hostname=server_hostname or None if ssl else None),
        timeout)
    if keepalive is not None:
        try:
            apply_keepalive(transport.get_extra_info("socket"), keepalive)
        except OSError:
            transport.abort()
            raise
    return plug


class HBONETransport(asyncio.Transport):
    """An HBONE tunnel as an asyncio transport (see the module docstring)."""

    def __init__(self, stream: HBONEStream, linger: float = 5.0) -> None:
        super().__init__()
        self.stream = stream
        self.linger = linger            # after close(): how long the peer gets to end its side
        self._protocol: asyncio.Protocol | None = None
        self._closing = False
        self._write_paused = False
        self._read_paused = False
        self._peer_eof = False
        self._lost = False
        self._linger: asyncio.TimerHandle | None = None

    # Attachable
    def attach(self, protocol: asyncio.Protocol) -> None:
        self._protocol = protocol
        protocol.connection_made(self)
        self.stream.attach(self)

    # StreamSink (called by the tunnel)
    def tunnel_data(self, data: memoryview) -> None:
        if self._protocol is not None and not self._lost:
            self._protocol.data_received(bytes(data))

    def tunnel_eof(self) -> None:
        self._peer_eof = True
        if self._protocol is None or self._lost:
            return
        keep = self._protocol.eof_received()
        if self._closing or not keep:
            self._finish(None)

    def tunnel_error(self, exc: Exception) -> None:
        self._finish(exc)

    def tunnel_writable(self) -> None:
        if self._write_paused and self.stream.writable() and self._protocol is not None:
            self._write_paused = False
            self._protocol.resume_writing()

    def _finish(self, exc: Exception | None) -> None:
        if self._lost:
            return
        self._lost = True
        if exc is None:
            self.stream.close()
        # The stream and this transport refer to each other, and so do this transport and its
        # protocol: unlinked, a finished tunnel is freed by reference counting (no cycle for the
        # collector; docs/performance.md, round 6).
        self.stream.detach()
        if self._linger is not None:    # the timer would hold this transport for `linger` seconds
            self._linger.cancel()
            self._linger = None
        protocol, self._protocol = self._protocol, None
        if protocol is not None:
            protocol.connection_lost(exc)

    # asyncio.Transport
    def write(self, data: Any) -> None:
        if self._closing or self._lost:
            return
        try:
            writable = self.stream.write(data)
        except (ConnectionError, RuntimeError) as e:
            self._finish(e if isinstance(e, ConnectionError) else ConnectionResetError(str(e)))
            return
        if not writable and not self._write_paused and self._protocol is not None:
            self._write_paused = True
            self._protocol.pause_writing()

    def writelines(self, list_of_data: Any) -> None:
        for d in list_of_data:
            self.write(d)

    def write_eof(self) -> None:
        self.stream.write_eof()

    def can_write_eof(self) -> bool:
        return True

    def close(self) -> None:
        """Graceful: END_STREAM after what was written; done when the peer ends its side too."""
        if self._closing or self._lost:
            return
        self._closing = True
        self.stream.write_eof()
        if self.stream.is_closed or self._peer_eof:
            self._finish(None)
        else:       # a peer that never ends its side would pin the tunnel: reset it after `linger`
            self._linger = asyncio.get_running_loop().call_later(self.linger, self._linger_expired)

    def _linger_expired(self) -> None:
        self._linger = None
        if not self._lost:
            self.stream.reset()
            self._finish(None)

    def abort(self) -> None:
        self._closing = True
        if not self._lost:
            self.stream.reset()
            self._finish(None)

    def is_closing(self) -> bool:
        return self._closing or self._lost

    def pause_reading(self) -> None:
        self._read_paused = True
        self.stream.pause_reading()

    def resume_reading(self) -> None:
        self._read_paused = False
        self.stream.resume_reading()

    def is_reading(self) -> bool:
        return not self._read_paused

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol  # type: ignore[assignment]

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol  # type: ignore[return-value]

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peer_identity":
            return self.stream.peer_identity
        return self.stream.get_extra_info(name, default)

    def get_write_buffer_size(self) -> int:
        """Approximate: the tunnel tells only whether it is above its high-water mark."""
        return 0 if self.stream.writable() else self.stream.high_water + 1

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if high is not None:
            self.stream.high_water = high
