"""The upstream h2c connection: exchanges from the pool multiplexed as streams."""

from __future__ import annotations

import asyncio
import logging
import os
from collections import deque
from typing import TYPE_CHECKING

import h2.events
import h2.exceptions
from h2.errors import ErrorCodes

from waypoint.http.exchange import BODY_NONE, BODY_STREAM, Exchange
from waypoint.http.headers import MAX_INFORMATIONAL
from waypoint.http.http2.connection import H2Base, Stream, decode_headers, encode_headers, unlink
from waypoint.http.legs import Headers
from waypoint.traffic.lifetime import PING, TIMEOUT, Keepalive

if TYPE_CHECKING:
    from waypoint.http.pool import Pools
    from waypoint.http.settings import HttpSettings

log = logging.getLogger("waypoint.http")

REFUSED = "remote refused stream reset"     # Envoy's reason for RST_STREAM REFUSED_STREAM (flag UR)
# Streams opened on a new connection before the server's SETTINGS say how many it takes. RFC 9113
# §5.1.2 leaves the limit unbounded until then, but a server that sets a low limit may refuse the
# surplus it did not expect (grpc-core resets it ENHANCE_YOUR_CALM, which no retry policy retries):
# a burst of 12 calls to a gRPC server with max_concurrent_streams 2 failed 8 with UNAVAILABLE. So
# a new connection carries one stream until the SETTINGS arrive (about one round trip, as gRPC's own
# clients wait for them before the first call), the rest queue on it (`waiting`).
STREAMS_BEFORE_SETTINGS = 1


class UpStream(Stream):
    """An upstream stream: the exchange's UpLeg."""

    __slots__ = ("n1xx",)       # informational heads received; unset (0) until the first one

    def abort(self) -> None:
        code = getattr(self.ex, "reset_code", None) or ErrorCodes.CANCEL
        if self.ended and not self.remote_ended and self.sid in self.conn.streams:
            # the request went whole but the response is still coming (a timeout, a retry): stop it
            # too, or the stream holds a slot of the connection until the upstream answers
            self.conn.reset(self, code)
            return
        self.reset(code)

    def pause_response(self) -> None:
        self.hold()

    def resume_response(self) -> None:
        self.release()

    def on_blocked(self) -> None:
        self.ex.request_pause()

    def on_unblocked(self) -> None:
        self.ex.request_resume()


class H2Client(H2Base):
    """One upstream h2c connection; the pool opens streams on it (`open_stream`)."""

    def __init__(self, pools: Pools, key: str, settings: HttpSettings) -> None:
        super().__init__(settings, client_side=True)
        self.pools = pools
        self.key = key
        self.waiting: deque[Exchange] = deque()
        self.spoke_h2 = False           # the server sent its SETTINGS: it does speak h2
        # the cluster's maxConcurrentStreams: streams at once, under the server's own limit
        self.stream_cap = 1 << 31
        self.keepalive: Keepalive | None = None     # the cluster's http2KeepAlive (`start_keepalive`)
        self._ka_timer: asyncio.TimerHandle | None = None

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self._ka_timer is not None:
            self._ka_timer.cancel()
            self._ka_timer = None
        self.pools.forget(self)
        self._abort_all("connection termination")

    def _abort_all(self, why: str) -> None:
        # An endpoint the pool upgraded to h2c (h2UpgradePolicy) that never spoke h2 processed
        # none of the streams: each may go again, over HTTP/1.1 (pool.py `h2_refused`).
        again = self.pools.h2_refused(self)
        # A protocol error (a frame the codec refuses) is the upstream's fault, as Envoy's UPE
        # says; the connection, about to close, takes no stream meanwhile.
        flags, reason = "UC", "connection termination"
        if why == "protocol error":
            if not again:
                flags, reason = "UPE", why
            self.closing = True
            self.pools.forget(self)
        streams, self.streams = list(self.streams.values()), {}
        for st in streams:
            st.ended = True
            st.ex.upstream_reset(flags, reason, retryable=again)
        self._elsewhere()

    def has_capacity(self) -> bool:
        """May the pool give this connection another request? Before the server's SETTINGS, while
        the streams and the requests queued for them (`can_open`) are within the codec's assumed
        limit (nghttp2's 100): a larger burst still spreads over more connections."""
        if self.lost or self.closing:
            return False
        n = len(self.streams) if self.spoke_h2 else len(self.streams) + len(self.waiting)
        return n < self.h2.remote_settings.max_concurrent_streams and n < self.stream_cap

    def can_open(self) -> bool:
        """May a stream be opened now: within the server's limit, and, until its SETTINGS came,
        within `STREAMS_BEFORE_SETTINGS`."""
        return self.has_capacity() and (self.spoke_h2 or len(self.streams) < STREAMS_BEFORE_SETTINGS)

    def open_stream(self, ex: Exchange) -> None:
        if ex.done:
            return
        if not self.can_open():
            if self.lost or self.closing:
                ex.upstream_reset("UC", "connection termination", retryable=True)
            else:
                self.waiting.append(ex)
            return
        head = ex.up_head
        assert head is not None
        sid = self.h2.get_next_available_stream_id()
        pseudo = [(":method", head.method), (":scheme", head.scheme), (":authority", head.authority),
                  (":path", head.path)]
        headers = head.headers
        if ex.body == BODY_STREAM:      # from HTTP/1.1 chunked: HTTP/2 frames the body itself
            headers = [(k, v) for k, v in headers if k != "content-length"]
        end = ex.body == BODY_NONE
        st = UpStream(self, sid, ex)
        try:
            self.h2.send_headers(sid, encode_headers(pseudo, headers), end_stream=end)
        except h2.exceptions.H2Error as e:
            log.info("cannot open a stream to %s: %s", self.key, e)
            ex.upstream_reset("UPE", "protocol error")
            return
        if end:
            st.ended = True
            st.end_pending = True
        self.streams[sid] = st
        self.schedule_flush()
        ex.bind(st)

    def event(self, ev: h2.events.Event) -> None:
        if isinstance(ev, h2.events.DataReceived):
            st = self.streams.get(ev.stream_id)
            if st is not None:
                st.ex.response_data(ev.data)
            self.received(st, ev)
        elif isinstance(ev, h2.events.ResponseReceived):
            st = self.streams.get(ev.stream_id)
            if st is not None:
                pseudo, headers = decode_headers(ev.headers)
                status = pseudo.get(":status", "")
                if len(ev.headers) > self.settings.max_headers or not _valid_status(status):
                    # the `h2` codec lets both through (nghttp2 refuses them itself: StreamReset)
                    self._refuse(st, f"{len(ev.headers)} header fields, :status {status[:8]!r}")
                    return
                end = ev.stream_ended is not None
                if end:
                    st.remote_ended = True
                    if not st.ended:
                        st.reset(ErrorCodes.CANCEL)
                    self.streams.pop(st.sid, None)
                st.ex.response_head(int(status), headers, end)
                if end:
                    self._next()
                    self.maybe_done()
        elif isinstance(ev, h2.events.TrailersReceived):
            st = self.streams.get(ev.stream_id)
            if st is not None:
                st.remote_ended = True
                self._finish(st, decode_headers(ev.headers)[1])
        elif isinstance(ev, h2.events.StreamEnded):
            st = self.streams.get(ev.stream_id)
            if st is not None and not st.remote_ended:
                st.remote_ended = True
                self._finish(st, None)
        elif isinstance(ev, h2.events.StreamReset):
            st = self.streams.pop(ev.stream_id, None)
            if st is not None:
                st.ended = True
                self.settle(st)
                st.ex.reset_code = ev.error_code
                refused = ev.error_code == ErrorCodes.REFUSED_STREAM
                if ev.remote_reset:     # Envoy's reset reasons: RemoteRefusedStreamReset or RemoteReset, both UR
                    st.ex.upstream_reset("UR", REFUSED if refused else "remote reset",
                                         retryable=refused and not st.ex.resp_started)
                else:   # nghttp2 reset it: the upstream broke the protocol (or our header limits)
                    st.ex.upstream_reset("UPE", "protocol error")
            self._next()
        elif isinstance(ev, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
            first = not self.spoke_h2 and isinstance(ev, h2.events.RemoteSettingsChanged)
            self.spoke_h2 = self.spoke_h2 or first
            self.pump_all()
            self._next()
            if first and self.waiting:
                self._rehome()
        elif isinstance(ev, h2.events.ConnectionTerminated):
            self.closing = True
            self.pools.forget(self)
            last = ev.last_stream_id if ev.last_stream_id is not None else 0
            for sid, st in list(self.streams.items()):
                if sid > last:          # never processed: safe to send elsewhere
                    del self.streams[sid]
                    st.ended = True
                    # as REFUSED_STREAM (nghttp2 closes them so, and Envoy retries them under
                    # `refused-stream`): a request with a body, which the pool's own retry leaves
                    # out, then goes to the route's retry policy as a refused stream, not a reset.
                    # Envoy's flag is UR ("remote refused stream reset"), not UC: the connection
                    # was not terminated under it (streams at or below the last id, lost when the
                    # connection then closes, are UC "connection termination", `_abort_all`).
                    st.ex.reset_code = ErrorCodes.REFUSED_STREAM
                    st.ex.upstream_reset("UR", REFUSED, retryable=True)
            self._elsewhere()
            self.maybe_done()
        elif isinstance(ev, h2.events.PingAckReceived):
            if self.keepalive is not None:
                self._ka_arm(self.keepalive.acked(self.loop.time()))
        elif isinstance(ev, h2.events.InformationalResponseReceived):     # (rare: last in the chain)
            st = self.streams.get(ev.stream_id)
            if st is not None:
                n = st.n1xx = getattr(st, "n1xx", 0) + 1  # type: ignore[attr-defined]
                if n > MAX_INFORMATIONAL:       # dropped as they come, as HTTP/1.1's: bounded the same
                    self._refuse(st, f"more than {MAX_INFORMATIONAL} informational (1xx) responses")

    def _refuse(self, st: Stream, why: str) -> None:
        """A response head the engine will not relay: reset the stream, 502 UPE for its request."""
        log.info("upstream %s sent a malformed response on stream %d: %s", self.key, st.sid, why)
        ex = st.ex
        self.reset(st, ErrorCodes.PROTOCOL_ERROR)
        st.ended = True
        ex.upstream_reset("UPE", "protocol error")
        self._next()

    def _finish(self, st: Stream, trailers: Headers | None) -> None:
        if not st.ended:                # the server answered before the request ended: stop it
            st.reset(ErrorCodes.CANCEL)
        self.streams.pop(st.sid, None)
        self.settle(st)
        st.ex.response_end(trailers)
        unlink(st)
        self._next()
        self.maybe_done()

    def sent_end(self, st: Stream) -> None:
        if st.remote_ended:
            self.streams.pop(st.sid, None)
            unlink(st)
            self._next()

    def _next(self) -> None:
        while self.waiting and self.can_open():
            ex = self.waiting.popleft()
            if self.pools.holds(ex):        # not an abandoned try (or a finished exchange)
                self.open_stream(ex)
        if self.waiting and (self.closing or self.lost):
            self._elsewhere()

    def _rehome(self) -> None:
        """The server's first SETTINGS allowed fewer streams than were queued for them: the
        surplus goes back to the pool, which spreads it over other connections as it would have
        had it known the limit (or queues it here again at the cluster's connection limit)."""
        waiting, self.waiting = list(self.waiting), deque()
        self.pools.requeue(self, waiting, fresh=False)

    def _elsewhere(self) -> None:
        """The requests queued on this connection, which never went out, to another one: this one
        takes no more streams (spent, drained, told GOAWAY, lost), as Envoy's pool keeps such
        requests pending. Failed instead (503 UC), a request queued for the server's SETTINGS on a
        connection that `maxRequestsPerConnection` had spent failed when the connection closed."""
        waiting, self.waiting = list(self.waiting), deque()
        self.pools.requeue(self, waiting, fresh=True)

    # --- keepalive (http2KeepAlive; the schedule is waypoint/traffic/lifetime.py) ----------------

    def start_keepalive(self, ka: Keepalive) -> None:
        """PING the server on `ka`'s schedule; a PING left unanswered closes the connection."""
        self.keepalive = ka
        self._ka_arm(ka.next_at)

    def _ka_arm(self, when: float) -> None:
        if self._ka_timer is not None:
            self._ka_timer.cancel()
        self._ka_timer = None if self.lost else self.loop.call_at(when, self._ka_tick)

    def _ka_tick(self) -> None:
        self._ka_timer = None
        ka = self.keepalive
        if ka is None or self.lost or self.transport is None:
            return
        what, when = ka.poll(self.loop.time(), self.last)
        if what == PING:
            try:
                self.h2.ping(os.urandom(8))
            except h2.exceptions.H2Error:
                return          # the codec is closing: nothing more to keep alive
            self.flush()
        elif what == TIMEOUT:
            log.info("upstream %s: no answer to an HTTP/2 keepalive PING within %gs, connection closed",
                     self.key, ka.timeout)
            self.pools.keepalive_timeout(self)
            self.transport.abort()      # (its streams end "connection termination": connection_lost)
            return
        self._ka_arm(when)

    def check(self, now: float) -> None:
        if not self.streams and not self.waiting and now - self.last > self.settings.upstream_idle_timeout:
            self.shutdown()

    def shutdown(self) -> None:
        self.closing = True
        self.pools.forget(self)
        if not self.streams and self.transport is not None and not self.lost:
            self._elsewhere()
            try:
                self.h2.close_connection()
            except h2.exceptions.H2Error:
                pass
            self.flush()
            self.transport.close()


def _valid_status(status: str) -> bool:
    """Three ASCII digits (RFC 9113 §8.3.2, RFC 9110 §15); int() alone would take "+20" or " 200"."""
    return len(status) == 3 and status.isascii() and status.isdigit()
