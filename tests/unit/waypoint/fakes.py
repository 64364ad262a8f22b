"""A fake asyncio transport for driving the waypoint's HTTP legs without sockets."""

from __future__ import annotations

import asyncio
from typing import Any


class FakeTransport(asyncio.Transport):
    """Records what is written; `close` tells the protocol it is lost on the next loop turn, as a
    real transport does; `answer` feeds the protocol bytes as if the peer sent them."""

    def __init__(self, proto: asyncio.BaseProtocol) -> None:
        super().__init__()
        self.proto = proto
        self.written = bytearray()
        self.closed = False
        self.paused = False

    def write(self, data: Any) -> None:
        self.written += bytes(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            asyncio.get_running_loop().call_soon(self.proto.connection_lost, None)  # type: ignore[attr-defined]

    abort = close

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.proto = protocol

    def can_write_eof(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def answer(self, raw: bytes) -> None:
        self.proto.data_received(raw)  # type: ignore[attr-defined]
