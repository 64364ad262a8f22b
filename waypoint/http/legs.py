"""What an `Exchange` needs from each side of the proxy, as two small interfaces.

The downstream leg is an HTTP/1.1 server connection (one request at a time) or one HTTP/2 stream;
the upstream leg is a pooled HTTP/1.1 client connection or one stream of an h2c client connection.
Keeping the exchange ignorant of which is which is what makes 1.1<->h2 translation free: the legs
frame bytes, the exchange moves heads, body chunks, trailers, resets and backpressure.
"""

from __future__ import annotations

from typing import Protocol

Headers = list[tuple[str, str]]


class DownLeg(Protocol):
    """Where the response goes (and where the request body comes from)."""

    def send_head(self, status: int, headers: Headers, end: bool) -> None: ...
    def send_data(self, data: bytes) -> None: ...
    def send_end(self, trailers: Headers | None) -> None: ...
    def send_reset(self) -> None: ...          # abort a response already started
    def retract_head(self) -> bool: ...        # take back a head none of which went out (error path)
    def send_continue(self) -> None: ...       # 100 Continue (HTTP/1.1 `Expect`), no-op on h2
    def pause_request(self) -> None: ...       # stop taking request body (backpressure)
    def resume_request(self) -> None: ...
    def exchange_done(self, ex: object) -> None: ...


class UpLeg(Protocol):
    """Where the request goes (and where the response comes from)."""

    def send_data(self, data: bytes) -> None: ...
    def send_end(self, trailers: Headers | None) -> None: ...
    def abort(self) -> None: ...
    def pause_response(self) -> None: ...
    def resume_response(self) -> None: ...
