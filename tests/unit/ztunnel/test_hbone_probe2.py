"""Hostile HBONE peers the first probe missed, sans-IO (the lab counterpart is
tests/lab/test_ztunnel_probe2.py): a peer that makes *us* reset its streams ("MadeYouReset",
CVE-2025-8671) instead of resetting them itself, and a peer that floods frames needing an answer
while it never reads them (CVE-2019-9512/9515)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from ambit.dataplane.hbone import frames as f
from ambit.dataplane.hbone import limits
from ambit.dataplane.hbone.connection import ConnectRequest, StreamReset
from ambit.dataplane.hbone.limits import ResetBudget
from tests.unit.ztunnel.test_hbone_hostile import Attacker, Clock


def _window_update(sid: int, inc: int) -> bytes:
    return f.pack_header(4, f.WINDOW_UPDATE, 0, sid) + inc.to_bytes(4, "big")


def _zero_window_update(a: Attacker, sid: int) -> bytes:
    return _window_update(sid, 0)


def _window_overflow(a: Attacker, sid: int) -> bytes:
    return _window_update(sid, 0x7FFFFFFF)


def _data_after_end_stream(a: Attacker, sid: int) -> bytes:
    a.h2.end_stream(sid)
    return a.h2.data_to_send() + f.pack_header(1, f.DATA, 0, sid) + b"x"


def _data_over_the_window(a: Attacker, sid: int) -> bytes:
    return f.pack_header(70_000, f.DATA, 0, sid) + bytes(70_000)      # the stream window is 65535


# Each makes the server reset a stream it has just announced (its tunnel being set up).
PEER_ERRORS: dict[str, Callable[[Attacker, int], bytes]] = {
    "WINDOW_UPDATE of 0": _zero_window_update,
    "WINDOW_UPDATE overflowing the window": _window_overflow,
    "DATA after END_STREAM": _data_after_end_stream,
    "DATA over the stream window": _data_over_the_window,
}


@pytest.mark.parametrize("make_error", PEER_ERRORS.values(), ids=PEER_ERRORS.keys())
def test_streams_the_peer_makes_us_reset_spend_its_reset_budget(make_error) -> None:
    clock = Clock()
    kw = {"stream_window": 65535} if make_error is _data_over_the_window else {}
    a = Attacker(reset_budget=ResetBudget(rate=100, burst=400, clock=clock), **kw)
    rounds = 0
    while not a.s.dead and rounds < 3000:
        sid = a.connect()
        a.pump()
        a.raw(make_error(a, sid))
        a.pump()
        rounds += 1
    # Every stream was announced (an edge started a tunnel for it) and then reset by us ...
    ours = {e.stream_id for e in a.of(StreamReset) if not e.remote}
    assert len(a.of(ConnectRequest)) >= 400 and {e.stream_id for e in a.of(ConnectRequest)} <= ours
    # ... so, like rapid reset, it ends at the budget with ENHANCE_YOUR_CALM.
    assert a.s.dead and 390 <= rounds <= 410
    assert a.goaway() is not None and a.goaway().error_code == f.ENHANCE_YOUR_CALM


def test_peer_errors_at_a_sane_rate_never_hit_the_budget() -> None:
    clock = Clock()
    a = Attacker(reset_budget=ResetBudget(rate=100, burst=400, clock=clock))
    for _ in range(2000):       # 50/s for 40 s
        sid = a.connect()
        a.pump()
        a.raw(_zero_window_update(a, sid))
        a.pump()
        clock.t += 0.02
    resets = a.of(StreamReset)
    assert not a.s.dead and len(resets) == 2000 and {e.error_code for e in resets} == {f.PROTOCOL_ERROR}


PING = f.pack_header(8, f.PING, 0, 0) + b"12345678"
SETTINGS = f.pack_header(6, f.SETTINGS, 0, 0) + (4).to_bytes(2, "big") + (65535).to_bytes(4, "big")


@pytest.mark.parametrize("frame", [PING, SETTINGS], ids=["PING", "SETTINGS"])
def test_a_peer_that_never_reads_its_answers_is_cut_off(frame: bytes) -> None:
    a = Attacker()
    a.s.data_to_send()
    # The edge takes nothing while its transport is full: the answers stay queued, and are bounded.
    a.s.output_paused = True
    limit = limits.MAX_UNSENT_ANSWERS
    sent = 0
    while not a.s.dead and sent < 5 * limit:
        a.raw(frame * 100)
        sent += 100
    assert a.s.dead and sent <= limit + 100
    assert a.s.closed is not None and a.s.closed.error_code == f.ENHANCE_YOUR_CALM
    assert len(a.s.bytes_to_send()) < (limit + 100) * len(frame) + 1024


@pytest.mark.parametrize("frame", [PING, SETTINGS], ids=["PING", "SETTINGS"])
def test_a_peer_whose_answers_are_taken_may_send_them_forever(frame: bytes) -> None:
    a = Attacker()
    for _ in range(3 * limits.MAX_UNSENT_ANSWERS // 100):
        a.raw(frame * 100)
        assert a.s.bytes_to_send()        # the edge writes them out
    assert not a.s.dead


def test_malformed_requests_the_codec_resets_spend_the_reset_budget() -> None:
    clock = Clock()
    a = Attacker(reset_budget=ResetBudget(rate=100, burst=400, clock=clock))
    a.h2.config.validate_outbound_headers = a.h2.config.normalize_outbound_headers = False
    rounds = 0
    while not a.s.dead and rounds < 3000:
        # A connection-specific header: a malformed request (RFC 9113 §8.2.2), reset by the codec.
        a.h2.send_headers(a.h2.get_next_available_stream_id(),
                          [(":method", "CONNECT"), (":authority", "10.0.0.2:8080"), ("connection", "close")])
        a.pump()
        rounds += 1
    assert not a.of(ConnectRequest)      # none of them was a tunnel ...
    assert a.s.dead and 390 <= rounds <= 410     # ... and each cost the budget a refused stream does
    assert a.goaway() is not None and a.goaway().error_code == f.ENHANCE_YOUR_CALM


@pytest.mark.parametrize("frame", [PING, SETTINGS], ids=["PING", "SETTINGS"])
def test_one_read_of_more_answers_than_the_limit_is_answered_while_the_edge_writes(frame: bytes) -> None:
    a = Attacker()
    a.raw(frame * (3 * limits.MAX_UNSENT_ANSWERS))      # the edge is not paused: it writes them all
    assert not a.s.dead and len(a.s.bytes_to_send()) >= 3 * limits.MAX_UNSENT_ANSWERS * 9


@pytest.mark.parametrize("make_error", PEER_ERRORS.values(), ids=PEER_ERRORS.keys())
def test_a_stream_reset_for_the_peers_error_says_we_reset_it_and_why(make_error) -> None:
    """What the tunnel handler (and so the access log) is told: reset by us, for the peer's
    protocol error, named; not "reset by the peer"."""
    import h2.config
    import h2.connection

    from tests.unit.dataplane.test_hbone_unread import served
    proto, _t = served(**({"stream_window": 65535} if make_error is _data_over_the_window else {}))
    tunnels: list = []
    proto.on_request = lambda st, headers: tunnels.append(st)
    a = Attacker()
    a.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    a.h2.initiate_connection()
    a.h2.data_to_send()
    sid = a.connect()
    proto.data_received(a.h2.data_to_send() + make_error(a, sid))
    [st] = tunnels
    why = str(st.error)
    assert st.is_closed and "reset by us" in why and "for the peer's protocol error: " in why, why
    assert "by the peer" not in why
    proto.loop.close()
