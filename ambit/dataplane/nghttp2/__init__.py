"""HTTP/2 framing, HPACK and flow control in C: libnghttp2 through cffi (ABI mode).

`NgHttp2Connection` is a sans-IO connection with the `h2` library's `H2Connection` surface (the
part the waypoint uses), so callers switch codecs without changing their event handling.
"""

from ambit.dataplane.nghttp2.connection import NgHttp2Connection
from ambit.dataplane.nghttp2.ffi import available

__all__ = ["NgHttp2Connection", "available"]
