"""Counting gRPC messages in a body stream, for Istio's `istio_request_messages_total` and
`istio_response_messages_total` (Envoy's grpc_stats filter counts the same way).

A gRPC body is a sequence of length-prefixed messages: 1 byte compressed flag, 4 bytes big-endian
length, then that many bytes (gRPC over HTTP/2, "Length-Prefixed-Message"). HTTP/2 DATA frames (or
HTTP/1.1 chunks) cut it anywhere: a prefix can straddle two chunks, a chunk can hold many messages.
`MessageCounter` is a sans-IO state machine: `feed(chunk)` with each chunk as it passes, in order;
`count` is the number of messages whose last byte has been seen. It keeps only the bytes of an
incomplete prefix (at most 4), never the payload.
"""

from __future__ import annotations

PREFIX = 5      # compressed flag (1) + length (4)


class MessageCounter:
    __slots__ = ("count", "_prefix", "_remaining")

    def __init__(self) -> None:
        self.count = 0
        self._prefix = b""          # bytes of a prefix not yet complete
        self._remaining = 0         # payload bytes still to skip in the current message

    def feed(self, chunk: bytes | bytearray | memoryview) -> int:
        """Account for `chunk`; the number of messages it completed."""
        data = memoryview(chunk)
        done = 0
        i, n = 0, len(data)
        while i < n:
            if self._remaining:
                step = min(self._remaining, n - i)
                self._remaining -= step
                i += step
                if not self._remaining:
                    done += 1
                continue
            take = min(PREFIX - len(self._prefix), n - i)
            self._prefix += bytes(data[i:i + take])
            i += take
            if len(self._prefix) == PREFIX:
                self._remaining = int.from_bytes(self._prefix[1:], "big")
                self._prefix = b""
                if not self._remaining:
                    done += 1           # an empty message (e.g. google.protobuf.Empty)
        self.count += done
        return done

    @property
    def partial(self) -> bool:
        """A message was begun and not finished (the stream ended inside one)."""
        return bool(self._prefix) or bool(self._remaining)
