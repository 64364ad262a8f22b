"""HTTP/1.x on both legs, parsed by httptools (llhttp), driven by protocol callbacks.

`H1Server` is one downstream connection. Requests are served one at a time, in order (RFC 9112
§9.3.2). The parser runs at most `PIPELINE_DEPTH` requests ahead of the one being answered: it
stops on the next one, whose bytes and those after it are held raw (reading pauses past
`HELD_MAX`) and parsed when a response is out; where that request begins is found by llhttp itself
(`boundary.py`), never guessed. Bodies stream both ways; the response is framed by the upstream's
Content-Length or re-chunked (HTTP/1.0 clients: close-delimited). Keep-alive follows the client
(`should_keep_alive`); a request whose body was not read to its end closes the connection after the
response, since its framing is lost; bytes after a request that ends the connection are ignored.

`H1Client` is one upstream connection, pooled by `pool.Pools` between requests; it is reused only
after a clean end of both messages with nothing after the response (bytes after a complete
response, a body where none may be, close it: they never become another request's response).

Bad input never hangs or crashes: an unparsable request gets 400, a head above `max_header_bytes`
or with more than `max_headers` headers 431 (trailers alike), a head not complete within
`header_timeout` of its turn 408, a Transfer-Encoding other than `chunked` 501 (400 when the framing
is broken), more than a few empty lines between requests 400; each with a log line and an
access-log record. The requests before the bad one are answered first, then the error, then the
connection closes. An upstream response with a status outside 100..599, a coding other than
`chunked`, or a 204 with a length is 502 `UPE`, and its connection is closed.

Only WebSocket upgrades are tunnelled; `h2c` is stripped, others get 403 (waypoint/http/headers.py).
`Upgrade` (WebSocket): the request goes upstream with its Upgrade header, and its Content-Length
body, if any, as its body (a chunked one is refused: 501); bytes the client sends after that wait
(reading paused) until the answer. On 101 both connections become a raw relay; on anything else the
response is sent and the connection closes.
"""

from waypoint.http.http1.client import H1Client
from waypoint.http.http1.server import H1Server

__all__ = ["H1Client", "H1Server"]
