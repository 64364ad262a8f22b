"""HTTP/2 (h2c, prior knowledge) on both legs, with libnghttp2 (ambit/dataplane/nghttp2) or the `h2`
library (`HttpSettings.h2_codec`; both have h2's `H2Connection` interface, see `new_codec`).

`H2Server` is one downstream connection (each stream an `Exchange`); `H2Client` one upstream
connection that multiplexes the exchanges the pool gives it.

Flow control is where an HTTP/2 proxy goes wrong, so, on both sides:
- received DATA is acknowledged (WINDOW_UPDATE) only once the other leg took it; while the other
  leg is full (`pause_*`), acknowledgements are held back, so the peer stops after one window;
  when the stream ends or is reset, what it held is acknowledged (`H2Base.settle`): the held
  DATA took the connection's window too, and a pooled connection must not lose it;
- DATA to send waits in a per-stream queue for the peer's window; above `buffer_bytes` queued the
  exchange pauses the sending side's source.
So memory per stream is bounded by one window plus `buffer_bytes`, whatever the peers do.

Trailers (gRPC's `grpc-status`) pass both ways; a client's RST_STREAM passes upstream with its error
code, an upstream's reset of a response that began resets the client's stream INTERNAL_ERROR (as
Envoy: the legs' codes are different transports', `DownStream.send_reset`);
`shutdown()` sends GOAWAY naming the last stream served, refuses newer streams (REFUSED_STREAM, which
clients retry elsewhere) and lets the open ones finish.
"""

from waypoint.http.http2.client import H2Client
from waypoint.http.http2.server import H2Server

__all__ = ["H2Client", "H2Server"]
