"""Every bound and timeout of the HTTP engine, as one frozen settings group (ambit/settings.py).

The waypoint binary nests `HttpSettings` as a field named `http`, so the flags read
`--http-max-header-bytes`, `--http-stream-idle-timeout`, ... Defaults follow Envoy's where Envoy
has one (header size 60 KiB and 100 headers: `max_request_headers_kb`, `max_headers_count`;
stream idle timeout 5 minutes; connection idle timeout 1 hour), because Istio users tune against
those numbers.

The pool settings are node-wide *defaults* per cluster: a DestinationRule's `connectionPool` field
replaces the matching one for its cluster (waypoint/traffic/breaker.py). Istio leaves unset
thresholds at 2^32-1; Ambit keeps these bounds instead, so an unconfigured cluster cannot queue
without limit.
"""

from __future__ import annotations

from dataclasses import dataclass

from ambit.dataplane.nghttp2 import available as nghttp2_available
from ambit.settings import non_negative, one_of, option, positive


def _codec(v: str) -> str | None:
    """A known codec, and for nghttp2 a library that loads (else the reason, at start-up)."""
    return one_of("nghttp2", "h2")(v) or (nghttp2_available() if v == "nghttp2" else None)


@dataclass(frozen=True)
class HttpSettings:
    detect_timeout: float = option(
        1.0, "seconds to wait for a tunnel's first bytes before relaying it as opaque TCP "
        "(server-first protocols send nothing)", check=positive)
    max_header_bytes: int = option(60 * 1024, "request line plus headers above this get 431 (Envoy: 60 KiB)",
                                   check=positive)
    max_headers: int = option(100, "more request headers than this get 431 (Envoy: 100)", check=positive)
    header_timeout: float = option(10.0, "seconds a client gets to send a complete request head (slowloris "
                                   "bound); 408 after", check=positive)
    idle_timeout: float = option(3600.0, "seconds an idle downstream keep-alive connection is kept (Envoy: 1 h)",
                                 check=positive)
    stream_idle_timeout: float = option(300.0, "seconds a request may make no progress in either direction "
                                        "(Envoy's stream_idle_timeout: 5 min)", check=positive)
    connect_timeout: float = option(10.0, "seconds to open an upstream connection (503 UF after); a cluster's "
                                    "tcp.connectTimeout replaces it (Istio's default: 10 s)", check=positive)
    upstream_idle_timeout: float = option(60.0, "seconds an upstream connection may carry no request before it is "
                                          "closed; a cluster's http.idleTimeout replaces it", check=positive)
    pool_max_idle: int = option(64, "idle upstream HTTP/1.1 connections kept per upstream", check=non_negative)
    pool_max_connections: int = option(1024, "upstream connections per cluster, open or opening (Envoy's default "
                                       "max_connections); a cluster's tcp.maxConnections replaces it", check=positive)
    pool_max_pending: int = option(1024, "requests per cluster waiting for an upstream connection; beyond: 503 UO "
                                   "(Envoy's default max_pending_requests); a cluster's "
                                   "http.http1MaxPendingRequests replaces it", check=non_negative)
    pool_max_requests: int = option(1024, "requests per cluster bound to upstream connections; beyond: 503 UO "
                                    "(Envoy's default max_requests); a cluster's http.http2MaxRequests replaces it",
                                    check=positive)
    tcp_idle_timeout: float = option(3600.0, "seconds an opaque (non-HTTP) tunnel may carry no bytes either way "
                                     "before both sides are closed (Envoy's tcp_proxy default: 1 h); a cluster's "
                                     "tcp.idleTimeout replaces it", check=positive)
    buffer_bytes: int = option(256 * 1024, "bytes buffered per direction before the sender is paused",
                               check=positive)
    retry_buffer_bytes: int = option(1024 * 1024, "request body bytes kept for a possible retry; a longer body is "
                                     "not retried (Envoy: the 1 MiB per_connection_buffer_limit_bytes)",
                                     check=non_negative)
    h2_max_concurrent_streams: int = option(1024, "HTTP/2 streams a downstream client may open at once",
                                            check=positive)
    h2_connection_buffer_bytes: int = option(
        1024 * 1024, "response bytes queued on one downstream HTTP/2 connection, all streams together, past "
        "which a stream that cannot send (its window is closed) pauses its upstream; bounds what a client that "
        "opens many streams and reads none holds (Envoy: per_connection_buffer_limit_bytes, 1 MiB)",
        check=positive)
    h2_window: int = option(1024 * 1024, "HTTP/2 receive window per stream and per connection (bytes)",
                            check=positive)
    h2_codec: str = option("nghttp2", "HTTP/2 codec of both legs: nghttp2 (libnghttp2 through cffi, C) or h2 (the "
                           "pure-Python h2 library: about 4x the codec CPU, 1.7x the hop's)", check=_codec)
    drain_timeout: float = option(5.0, "seconds open requests get to finish at shutdown (after GOAWAY)",
                                  check=non_negative)
    drain_accept: float = option(2.0, "seconds the waypoint keeps accepting tunnels after SIGTERM (within --http-"
                                 "drain-timeout): its peers learn the pod is going about a second later, and "
                                 "meanwhile still send it new tunnels, which are served and told to go",
                                 check=non_negative)
    mirror_max_active: int = option(256, "mirrored (shadow) requests in flight at once; beyond, a shadow is dropped "
                                    "and counted, never queued (Envoy has no such bound)", check=non_negative)
    mirror_buffer_bytes: int = option(1024 * 1024, "request body bytes a shadow may hold while its upstream is not "
                                      "ready or is slow; beyond, the shadow is cut, never the primary slowed",
                                      check=positive)
    mirror_timeout: float = option(30.0, "seconds a shadow request may take when its route sets no timeout "
                                   "(Envoy: the route timeout, none by Istio's default)", check=positive)

    def check(self) -> str | None:
        """Also for the default codec: the waypoint must not start without the library it would
        need on its first HTTP/2 connection."""
        reason = _codec(self.h2_codec)
        return f"--http-h2-codec {self.h2_codec}: {reason}" if reason else None
