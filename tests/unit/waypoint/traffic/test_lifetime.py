"""The connection-lifetime rules of a DestinationRule's connectionPool (waypoint/traffic/lifetime.py),
on a fake clock: maxConnectionDuration (when a connection is drained) and http2KeepAlive (when a
PING is due, when an unanswered one ends the connection), with Envoy's semantics."""

from __future__ import annotations

from ambit.model import TrafficPolicy
from controller.translate.routes import flatten_policy
from waypoint.traffic.breaker import Breaker, Limits
from waypoint.traffic.lifetime import DEFAULT_TIMEOUT, PING, TIMEOUT, Keepalive, drain_at, expired


def test_a_connection_is_drained_once_it_is_max_connection_duration_old() -> None:
    assert drain_at(100.0, 30.0) == 130.0
    assert not expired(100.0, 129.9, 30.0)
    assert expired(100.0, 130.0, 30.0)
    # unset: never, however old
    assert drain_at(100.0, 0.0) == 0.0 and not expired(0.0, 1e9, 0.0)


def test_pings_go_out_every_interval_and_the_next_is_scheduled_by_the_ack() -> None:
    ka = Keepalive(10.0, 2.0, now=0.0, rand=lambda: 0.0)
    assert ka.poll(5.0, last_rx=0.0) == ("", 10.0)            # not due yet: ask again at 10
    assert ka.poll(10.0, last_rx=0.0) == (PING, 12.0)         # due: sent; the answer is due by 12
    assert ka.poll(11.0, last_rx=0.0) == ("", 12.0)           # one PING at a time
    assert ka.acked(11.5) == 21.5                             # the ACK: the next one an interval later
    assert ka.poll(15.0, last_rx=11.5) == ("", 21.5)
    assert ka.poll(21.5, last_rx=11.5) == (PING, 23.5)


def test_an_unanswered_ping_ends_the_connection_after_the_timeout() -> None:
    ka = Keepalive(10.0, 2.0, now=0.0, rand=lambda: 0.0)
    assert ka.poll(10.0, last_rx=9.0)[0] == PING
    assert ka.poll(11.9, last_rx=9.0) == ("", 12.0)
    assert ka.poll(12.0, last_rx=9.0) == (TIMEOUT, 12.0)


def test_any_frame_received_while_waiting_extends_the_wait() -> None:
    """Envoy: the timeout is extended when any frame arrives, so a PING ACK queued behind a large
    response does not end a connection that is answering."""
    ka = Keepalive(10.0, 2.0, now=0.0, rand=lambda: 0.0)
    assert ka.poll(10.0, last_rx=0.0)[0] == PING
    assert ka.poll(12.0, last_rx=11.5) == ("", 13.5)
    assert ka.poll(13.5, last_rx=11.5) == (TIMEOUT, 13.5)


def test_the_interval_has_envoys_default_jitter_of_up_to_15_percent() -> None:
    assert Keepalive(10.0, 1.0, now=0.0, rand=lambda: 1.0).next_at == 11.5
    assert Keepalive(10.0, 1.0, now=0.0, rand=lambda: 0.5).acked(20.0) == 30.75


def test_without_interval_no_ping_is_sent_and_without_timeout_the_default_applies() -> None:
    assert Keepalive.of(0.0, 5.0, now=0.0) is None
    ka = Keepalive.of(10.0, 0.0, now=0.0, rand=lambda: 0.0)
    assert ka is not None and ka.timeout == DEFAULT_TIMEOUT


def test_the_destination_rule_fields_reach_the_clusters_limits() -> None:
    t = flatten_policy({"connectionPool": {"tcp": {"maxConnectionDuration": "90s"},
                                           "http": {"maxConcurrentStreams": 7, "useClientProtocol": True,
                                                    "http2KeepAlive": {"interval": "30s", "timeout": "5s"}}}})
    assert (t.max_connection_duration, t.max_concurrent_streams, t.h2_keepalive_interval,
            t.h2_keepalive_timeout, t.use_client_protocol) == (90.0, 7, 30.0, 5.0, True)
    lim = Breaker(t).configure(Limits())
    assert (lim.max_connection_duration, lim.max_concurrent_streams, lim.h2_keepalive_interval,
            lim.h2_keepalive_timeout, lim.use_client_protocol) == (90.0, 7, 30.0, 5.0, True)
    # unset: off, as before (no node-wide default)
    lim = Breaker(TrafficPolicy()).configure(Limits())
    assert (lim.max_connection_duration, lim.max_concurrent_streams, lim.h2_keepalive_interval,
            lim.use_client_protocol) == (0.0, 0, 0.0, False)
