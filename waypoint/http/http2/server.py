"""The downstream HTTP/2 connection: each stream an `Exchange`; GOAWAY on shutdown."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import h2.events
import h2.exceptions
from h2.errors import ErrorCodes
from hyperframe.frame import GoAwayFrame

from ambit.dataplane.hbone.limits import DEFENSES, ResetBudget
from waypoint.http.exchange import BODY_LENGTH, BODY_NONE, BODY_STREAM, Exchange
from waypoint.http.headers import header_name, is_grpc, known_authorities, valid_authority
from waypoint.http.http2.connection import H2Base, Stream, decode_headers, encode_headers, unlink
from waypoint.http.legs import Headers
from waypoint.normalize import FragmentInPath, plain_target, request_path
from waypoint.request import Downstream, LocalReply, RequestHead

if TYPE_CHECKING:
    from waypoint.http.engine import Engine

log = logging.getLogger("waypoint.http")

MAX_STREAM_ID = 2**31 - 1   # a GOAWAY naming it refuses no stream: the drain's notice (H2Server.shutdown)
GOAWAY_NOTICE = 1.0         # seconds from that notice to the final GOAWAY (at most half the drain)


class DownStream(Stream):
    """A downstream stream: the exchange's DownLeg."""

    __slots__ = ()

    def send_head(self, status: int, headers: Headers, end: bool) -> None:
        if self.ended:
            return
        c = self.conn
        try:
            c.h2.send_headers(self.sid, encode_headers([(":status", str(status))], headers), end_stream=end)
        except h2.exceptions.H2Error as e:
            log.info("cannot send response head on stream %d: %s", self.sid, e)
            self.ended = True
            c.drop(self)
            return
        if end:
            self.ended = True
            c.drop(self)
        c.schedule_flush()

    def send_continue(self) -> None:
        pass

    def send_reset(self) -> None:
        """A response that began cannot be finished (the upstream reset or closed, a timeout):
        INTERNAL_ERROR, as Envoy resets the downstream stream (a local reset, which its HTTP/2
        codec sends as INTERNAL_ERROR since envoyproxy/envoy#42269). Never the upstream's own
        RST_STREAM code: the legs are different transports (Envoy stopped passing it on in #42750),
        and a gRPC client reads CANCEL as CANCELLED, REFUSED_STREAM as "not processed, send it
        again", ENHANCE_YOUR_CALM as "you sent too much", none of which it did."""
        self.reset(ErrorCodes.INTERNAL_ERROR)

    def retract_head(self) -> bool:
        """An HTTP/2 head cannot be taken back once submitted (the codec has HPACK-encoded it, or
        nghttp2 holds it): the stream is reset instead (nghttp2 drops its queued HEADERS then)."""
        return False

    def pause_request(self) -> None:
        self.hold()

    def resume_request(self) -> None:
        self.release()

    def exchange_done(self, ex: object) -> None:
        if self.ended and self.sid in self.conn.streams:
            self.conn.drop(self)
        else:
            unlink(self)

    def on_blocked(self) -> None:
        self.ex.response_pause()

    def on_unblocked(self) -> None:
        self.ex.response_resume()


class H2Server(H2Base):
    """One downstream HTTP/2 connection (see the module docstring)."""

    def __init__(self, engine: Engine, downstream: Downstream) -> None:
        super().__init__(engine.settings, client_side=False)
        self.budget = engine.settings.h2_connection_buffer_bytes    # (an upstream connection has none)
        self.engine = engine
        self.downstream = downstream
        self.goaway_sid: int | None = None
        self.highest = 0
        self._notice: asyncio.TimerHandle | None = None     # the drain's first GOAWAY is out (shutdown)
        # Streams the client resets before their response starts (rapid reset, CVE-2023-44487) or
        # makes us reset for its protocol error (a body longer than its content-length, a
        # malformed head: MadeYouReset, CVE-2025-8671) cost a stream setup, often an upstream
        # connection, each. Past this budget: GOAWAY(ENHANCE_YOUR_CALM). nghttp2 1.52 counts
        # only the former (1,000, then 33/s) and the `h2` codec neither.
        self.resets = ResetBudget()
        self.idle_since: float | None = None     # no stream open since (checked by the tick)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.engine.track(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.engine.conns.discard(self)
        if self._notice is not None:
            self._notice.cancel()
        self._abort_all("connection lost")

    def _abort_all(self, why: str) -> None:
        for st in list(self.streams.values()):
            st.ended = True
            st.ex.request_abort("DC")
        self.streams.clear()

    def _reset_caused(self, n: int = 1) -> None:
        """The client reset `n` unanswered streams, or made us reset them: spend its budget."""
        if self.resets.spend(n) or self.goaway_sid == -1 or self.lost:
            return
        DEFENSES["reset_budget"] += 1
        log.warning("HTTP/2 client %s reset (or made us reset) too many streams: GOAWAY(ENHANCE_YOUR_CALM)",
                    self.peer())
        self.goaway_sid = -1        # no later stream of this connection is served
        try:
            self.h2.close_connection(ErrorCodes.ENHANCE_YOUR_CALM)
        except h2.exceptions.H2Error:
            pass
        self.flush()
        self._abort_all("too many resets")
        if self.transport is not None:
            self.transport.close()

    def event(self, ev: h2.events.Event) -> None:
        if isinstance(ev, h2.events.DataReceived):
            st = self.streams.get(ev.stream_id)
            if st is not None and not st.ex.done:
                st.ex.request_data(ev.data)
            self.received(st, ev)
        elif isinstance(ev, h2.events.RequestReceived):
            self._request(ev)
        elif isinstance(ev, h2.events.StreamEnded):
            st = self.streams.get(ev.stream_id)
            if st is not None:
                st.remote_ended = True
                st.ex.request_end(None)
        elif isinstance(ev, h2.events.TrailersReceived):
            st = self.streams.get(ev.stream_id)
            if st is not None:
                st.remote_ended = True
                st.ex.request_end(decode_headers(ev.headers)[1])
        elif isinstance(ev, h2.events.StreamReset):
            st = self.streams.pop(ev.stream_id, None)
            if st is not None:
                st.ended = True
                self.discard(st)
                self.settle(st)
                ex = st.ex
                ex.reset_code = ev.error_code
                ex.request_abort("DR")
                # a request cancelled before its answer began, or one we reset for the client's error
                if not ev.remote_reset or not ex.resp_started:
                    self._reset_caused()
            self.maybe_done()
        elif isinstance(ev, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
            self.pump_all()
        elif isinstance(ev, h2.events.ConnectionTerminated):
            self.closing = True
            self.maybe_done()

    def _request(self, ev: h2.events.RequestReceived) -> None:
        sid = ev.stream_id
        self.idle_since = None
        if sid > self.highest:      # (a compare, not a call of max())
            self.highest = sid
        if self.goaway_sid is not None and sid > self.goaway_sid:
            try:
                self.h2.reset_stream(sid, ErrorCodes.REFUSED_STREAM)
            except h2.exceptions.H2Error:
                pass
            return
        if len(ev.headers) > self.settings.max_headers:
            # nghttp2's header callback resets such a stream before it is whole (ambit/dataplane/
            # nghttp2); the `h2` codec collects it: refused here, as Envoy (http2.too_many_headers)
            self._malformed(sid, f"more than {self.settings.max_headers} header fields", ErrorCodes.INTERNAL_ERROR)
            return
        pseudo, headers = decode_headers(ev.headers)
        path = pseudo.get(":path", "/")
        authority = pseudo.get(":authority") or next((v for k, v in headers if k == "host"), "")
        bad = None
        if authority not in known_authorities and not valid_authority(authority):
            self._malformed(sid, f"malformed :authority {authority[:100]!r}")
            return
        if plain_target(path) is None:     # (a plain target is a valid :path, already normalized)
            if not _valid_path(path, pseudo.get(":method")):
                # RFC 9113 §8.1.1: malformed, a stream error. nghttp2 finds most of it itself; the
                # `h2` codec does not, and the path would end up in the upstream's HTTP/1.1 request
                # line as is. An authority with userinfo (§8.3.1) gets here with either codec.
                self._malformed(sid, f"malformed :path {path[:100]!r}")
                return
            try:
                path = request_path(path)   # normalized once, for routing, authorization and upstream
            except FragmentInPath as e:     # Envoy's default: 400 (waypoint/normalize.py)
                bad = LocalReply(400, str(e).encode(), flags="DPE", reason=str(e))
        if "host" in map(header_name, headers):       # rare in HTTP/2: test the names in C before copying
            headers = [(k, v) for k, v in headers if k != "host"]
        method = pseudo.get(":method", "GET")
        head = RequestHead(method, path, authority, pseudo.get(":scheme", "http"),
                           headers, "2", is_grpc(headers))
        if ev.stream_ended is not None:
            body = BODY_NONE
        elif any(k == "content-length" for k, _ in headers):
            body = BODY_LENGTH
        else:
            body = BODY_STREAM
        st = DownStream(self, sid, None)  # type: ignore[arg-type]
        st.remote_ended = body == BODY_NONE
        ex = Exchange(self.engine, st, head, self.downstream, body=body)
        st.ex = ex
        self.streams[sid] = st
        self.engine.exchanges.add(ex)
        if method == "CONNECT":
            ex.reply(LocalReply(405, b"CONNECT is not supported", reason="CONNECT"))
            return
        if bad is not None:
            ex.reply(bad)
            return
        try:
            ex.start()
        except Exception:   # a bug: end the stream now, not at the stream idle timeout
            log.exception("HTTP/2 stream %d: starting the request failed", sid)
            if ex.resp_started:
                st.send_reset()
                ex.finish()
            else:
                ex.reply(LocalReply(500, b"internal error", reason="internal error"))

    def _malformed(self, sid: int, why: str, code: int = ErrorCodes.PROTOCOL_ERROR) -> None:
        log.info("HTTP/2 stream %d: %s, reset", sid, why)
        try:
            self.h2.reset_stream(sid, code)
        except h2.exceptions.H2Error:
            pass
        self._reset_caused()

    def sent_end(self, st: Stream) -> None:
        if st.ex.done:
            self.drop(st)

    def drop(self, st: Stream) -> None:
        if not st.remote_ended and st.sid in self.streams:
            # The response is complete but the request is not: ask the client to stop sending
            # (RFC 9113 §8.1: RST_STREAM NO_ERROR), or it would stall on a window nobody reopens.
            try:
                self.h2.reset_stream(st.sid, ErrorCodes.NO_ERROR)
            except h2.exceptions.H2Error:
                pass
            st.remote_ended = True
        super().drop(st)

    def check(self, now: float) -> None:
        for st in list(self.streams.values()):
            if not st.ex.done:
                st.ex.check(now)
        # Idle is time without a stream, not without bytes (Envoy's idle_timeout): a client that
        # sends a PING, or one byte of a header block, now and then holds no connection forever.
        if self.streams:
            self.idle_since = None
        elif self.idle_since is None:
            self.idle_since = now
        elif now - self.idle_since > self.settings.idle_timeout:
            self.shutdown()

    def shutdown(self) -> None:
        """GOAWAY (NO_ERROR) naming the last stream we will serve; close once those are done.

        In the engine's drain, first a GOAWAY that refuses nothing (last stream 2^31-1, RFC 9113
        §6.8, as Envoy's drain): a stream the client opens while the GOAWAY is on its way is
        served, where a GOAWAY naming the highest stream so far would refuse it and fail that
        request. The final GOAWAY follows `GOAWAY_NOTICE` seconds later (a round trip, with room)."""
        if self.lost or self.goaway_sid is not None:
            return
        if self.engine.draining and self._notice is None:
            self.flush()
            self._goaway(MAX_STREAM_ID)
            self._notice = self.engine.loop.call_later(min(GOAWAY_NOTICE, self.settings.drain_timeout / 2),
                                                       self.shutdown)
            return
        self.flush()        # frames h2 already produced go first
        self.goaway_sid = self.highest
        self._goaway(self.highest)
        self.closing = True
        self.maybe_done()

    def _goaway(self, last_stream_id: int) -> None:
        f = GoAwayFrame(0)
        f.last_stream_id = last_stream_id
        f.error_code = 0
        if self.transport is not None:
            self.transport.write(f.serialize())


def _valid_path(path: str, method: str | None) -> bool:
    """RFC 9113 §8.3.1: `:path` is an origin-form target (starts with "/"), or "*" for OPTIONS; no
    space or control character (they would split or end an HTTP/1.1 request line). Two C calls."""
    if path[:1] != "/" and not (path == "*" and method == "OPTIONS"):
        return False
    return path.isprintable() and " " not in path
