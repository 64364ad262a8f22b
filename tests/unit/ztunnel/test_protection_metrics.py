"""Every HBONE defence ztunnel applies is visible in its own metrics exposition (ztunnel.proxy.Proxy.
health), so a platform team can alert on it: the hostile peers of test_hbone_hostile.py and
test_hbone_unread.py, then a scrape, also through the supervisor's merge of its workers'
expositions (the `worker` label). Before, these were only logged."""

from __future__ import annotations

import asyncio

import pytest

from ambit.dataplane.hbone import frames as f
from ambit.dataplane.hbone import limits
from ambit.dataplane.hbone.limits import ResetBudget
from ambit.dataplane.workers import merge_expositions
from tests.unit.dataplane.test_hbone import Mesh, echo
from tests.unit.dataplane.test_hbone_unread import PING, served
from tests.unit.scrape import exposition, sample
from tests.unit.ztunnel.test_hbone_hostile import Attacker, Clock
from ztunnel.limits import ProxyLimits
from ztunnel.proxy import Proxy

DEFENSES = "ambit_protocol_defenses_total"
REFUSED = "ambit_connections_refused_total"


def scraped(name: str, **labels: str) -> float:
    value = sample(exposition(Proxy().health()), name, **labels)
    assert value is not None, f"{name}{labels} is not in ztunnel's exposition"
    return value


def test_a_rapid_reset_goaway_is_counted_and_survives_the_worker_merge() -> None:
    before = scraped(DEFENSES, defense="reset_budget")
    a = Attacker(reset_budget=ResetBudget(rate=100, burst=400, clock=Clock()))
    for _ in range(5000):
        if a.s.dead:
            break
        sid = a.connect()
        a.h2.reset_stream(sid, f.CANCEL)
        a.pump()
    assert a.goaway() is not None and a.goaway().error_code == f.ENHANCE_YOUR_CALM
    assert scraped(DEFENSES, defense="reset_budget") == before + 1
    merged = merge_expositions({"0": exposition(Proxy().health())})
    assert sample(merged, DEFENSES, defense="reset_budget", worker="0") == before + 1


def test_a_continuation_flood_is_counted() -> None:
    before = scraped(DEFENSES, defense="header_flood")
    a = Attacker()
    a.raw(f.pack_header(0, f.HEADERS, 0, 1))
    for _ in range(100):
        if a.s.dead:
            break
        a.raw(f.pack_header(0, f.CONTINUATION, 0, 1))
    assert scraped(DEFENSES, defense="header_flood") == before + 1


def test_a_peer_that_does_not_read_its_answers_is_counted() -> None:
    before = scraped(DEFENSES, defense="unread_flood")
    proto, t = served()
    proto.pause_writing()
    for _ in range(5 * limits.MAX_UNSENT_ANSWERS // 100):
        if t.aborted:
            break
        proto.data_received(PING * 100)
    proto.loop.close()
    assert scraped(DEFENSES, defense="unread_flood") == before + 1
    assert limits.DEFENSES["unread_flood"] == before + 1


def test_a_peer_that_never_sends_the_preface_is_counted(ca) -> None:
    before = scraped(REFUSED, limit="preface_timeout")

    async def main() -> None:
        async with Mesh(ca, echo) as m:
            m.server.preface_timeout = 0.3
            ctx = m.cache.client(m.client_cert)
            r, w = await asyncio.open_connection("127.0.0.1", m.port, ssl=ctx, server_hostname=None)
            await asyncio.wait_for(r.read(), 10)
            w.close()

    asyncio.run(main())
    assert scraped(REFUSED, limit="preface_timeout") == before + 1


def test_refusals_by_ztunnels_connection_limits_carry_short_limit_names() -> None:
    proxy = Proxy()
    proxy.per_identity.limit = 1
    assert proxy.per_identity.acquire("spiffe://cluster.local/ns/a/sa/b")
    assert not proxy.per_identity.acquire("spiffe://cluster.local/ns/a/sa/b")
    text = exposition(proxy.health())
    assert sample(text, REFUSED, limit="per_identity") == 1
    for lim in ("outbound_per_pod", "inbound_per_pod", "plaintext_per_source_ip", "preface_timeout",
                "pending_handshakes", "pending_handshakes_per_source"):
        assert sample(text, REFUSED, limit=lim) is not None, lim


def test_every_pods_hbone_listener_shares_the_process_pending_handshake_bound() -> None:
    """The bound on TLS handshakes under way is ztunnel's, not each pod's: 100 pods must not mean
    100 times the memory a flood may pin."""
    proxy = Proxy(limits=ProxyLimits(max_pending_handshakes=7, max_pending_handshakes_per_source=3))
    assert (proxy.pending_handshakes.limit, proxy.pending_handshakes.per_source) == (7, 3)
    with pytest.raises(ValueError, match="max_pending_handshakes"):
        ProxyLimits(max_pending_handshakes=-1)


def test_handshakes_that_waited_for_a_certificate_are_in_ztunnels_exposition() -> None:
    """Inbound handshakes that waited for their server certificate (ambit/dataplane/acceptloop.py)
    are counted by outcome; a rising `none` is a CA that does not sign for this node's pods."""
    name = "ambit_handshake_certificate_waits_total"
    before = scraped(name, outcome="none")
    limits.CERTIFICATE_WAITS["none"] += 1
    try:
        assert scraped(name, outcome="none") == before + 1
        assert scraped(name, outcome="came") >= 0
    finally:
        limits.CERTIFICATE_WAITS["none"] -= 1
