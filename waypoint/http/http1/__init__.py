"""HTTP/1.x on both legs, parsed by httptools (llhttp), driven by protocol callbacks.

`H1Server` is one downstream connection. Requests are served one at a time, in order (RFC 9112
§9.3.2): a request pipelined behind an unfinished one is parsed and queued, and reading pauses
until its turn, so pipelining costs at most one read of memory. Bodies stream both ways; the
response is framed by the upstream's Content-Length or re-chunked (HTTP/1.0 clients: close-
delimited). Keep-alive follows the client (`should_keep_alive`); a request whose body was not read
to its end closes the connection after the response, since its framing is lost.

`H1Client` is one upstream connection, pooled by `pool.Pools` between requests; it is reused only
after a clean end of both messages.

Bad input never hangs or crashes: an unparsable request gets 400, a head above `max_header_bytes`
or with more than `max_headers` headers 431, a head not complete within `header_timeout` 408; each
with a log line and an access-log record, then the connection closes.

Only WebSocket upgrades are tunnelled; `h2c` is stripped, others get 403 (waypoint/http/headers.py).
`Upgrade` (WebSocket): the request goes upstream with its Upgrade header; bytes the client sends
after the head wait (reading paused) until the answer. On 101 both connections become a raw relay;
on anything else the response is sent and the connection closes.
"""

from waypoint.http.http1.client import H1Client
from waypoint.http.http1.server import H1Server

__all__ = ["H1Client", "H1Server"]
