"""Every protection the waypoint applies is visible in its own metrics exposition, so a platform team
can alert on it: the hostile clients of test_http2_hostile.py / test_hbone.py, then a scrape of the
collector the waypoint registers (waypoint.serve.health_collector), also through the supervisor's
merge of its workers' expositions (the `worker` label). Before, these were only logged or shown
in admin `/stats`."""

from __future__ import annotations

import asyncio

import pytest

from ambit.dataplane.hbone.limits import ConnLimiter
from ambit.dataplane.workers import merge_expositions
from tests.unit.conftest import issue, sid
from tests.unit.dataplane.test_hbone import Mesh, echo
from tests.unit.scrape import exposition, sample
from tests.unit.waypoint.harness import Origin
from tests.unit.waypoint.test_http2_hostile import (
    ENHANCE_YOUR_CALM,
    _rapid,
    goaway_codes,
    ping_flood,
    reset_attack,
    start,
)
from waypoint.http.http2 import connection as h2conn
from waypoint.serve import health_collector

DEFENSES = "ambit_protocol_defenses_total"
REFUSED = "ambit_connections_refused_total"


def scraped(name: str, **labels: str) -> float:
    value = sample(exposition(health_collector()), name, **labels)
    assert value is not None, f"{name}{labels} is not in the waypoint's exposition"
    return value


@pytest.fixture(scope="module")
def origin() -> Origin:
    o = Origin()
    yield o  # type: ignore[misc]
    o.close()


def test_a_rapid_reset_goaway_is_counted_in_the_exposition_and_survives_the_worker_merge(origin: Origin) -> None:
    before = scraped(DEFENSES, defense="reset_budget")
    p = start(origin, "h2")
    try:
        closed, got = reset_attack(p, _rapid)
        assert closed and ENHANCE_YOUR_CALM in goaway_codes(got)
    finally:
        p.close()
    assert scraped(DEFENSES, defense="reset_budget") == before + 1
    merged = merge_expositions({"0": exposition(health_collector()), "1": exposition(health_collector())})
    assert sample(merged, DEFENSES, defense="reset_budget", worker="1") == before + 1


def test_a_client_that_does_not_read_its_answers_is_counted(origin: Origin, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(h2conn, "MAX_UNREAD_BYTES", 64 * 1024)
    before = scraped(DEFENSES, defense="unread_flood")
    p = start(origin, "h2")
    try:
        assert ping_flood(p)
    finally:
        p.close()
    assert scraped(DEFENSES, defense="unread_flood") >= before + 1


def test_hbone_connections_over_max_connections_and_without_a_preface_are_counted(ca) -> None:
    H2 = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes.fromhex("000000040000000000")
    over, silent = scraped(REFUSED, limit="max_connections"), scraped(REFUSED, limit="preface_timeout")

    async def main() -> None:
        async with Mesh(ca, echo) as m:
            m.server.max_connections, m.server.preface_timeout = 1, 0.3
            ctx = m.cache.client(m.client_cert)
            r1, w1 = await asyncio.open_connection("127.0.0.1", m.port, ssl=ctx, server_hostname=None)
            await asyncio.wait_for(r1.read(), 10)       # no preface: closed at its deadline
            w1.close()
            r2, w2 = await asyncio.open_connection("127.0.0.1", m.port, ssl=ctx, server_hostname=None)
            w2.write(H2)
            assert await asyncio.wait_for(r2.read(9), 10)
            r3, w3 = await asyncio.open_connection("127.0.0.1", m.port, ssl=ctx, server_hostname=None)
            w3.write(H2)
            try:
                assert await asyncio.wait_for(r3.read(), 10) == b""     # reset: over the limit
            except (ConnectionResetError, OSError):
                pass
            w3.close()
            w2.close()

    asyncio.run(main())
    assert scraped(REFUSED, limit="preface_timeout") == silent + 1
    assert scraped(REFUSED, limit="max_connections") == over + 1


def test_one_identity_cannot_take_every_slot_and_its_refusals_are_counted(ca) -> None:
    """`--max-connections-per-identity`: the identity at its bound gets its next connection reset,
    counted as `limit="per_identity"`; another identity is still served, and a slot freed by a
    closed connection can be taken again."""
    H2 = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes.fromhex("000000040000000000")
    before = scraped(REFUSED, limit="per_identity")

    async def served(ctx) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
        r, w = await asyncio.open_connection("127.0.0.1", m.port, ssl=ctx, server_hostname=None)
        w.write(H2)
        try:
            got = await asyncio.wait_for(r.read(9), 10)     # the server's SETTINGS, or b"" when reset
        except (ConnectionResetError, OSError):
            got = b""
        return r, w, got

    async def main() -> None:
        nonlocal m
        async with Mesh(ca, echo) as m:
            m.server.per_identity = ConnLimiter(2, "HBONE connections per identity")
            greedy = m.cache.client(m.client_cert)
            other = m.cache.client(issue(ca, sid("demo", "other")))
            held = [await served(greedy) for _ in range(2)]
            assert all(got for _, _, got in held)
            _, w3, got3 = await served(greedy)
            assert got3 == b""                                  # the third from the same identity: reset
            _, w4, got4 = await served(other)
            assert got4                                         # another identity: served
            held[0][1].close()
            await asyncio.sleep(0.2)
            _, w5, got5 = await served(greedy)
            assert got5                                         # a freed slot is taken again
            for w in (held[1][1], w3, w4, w5):
                w.close()

    m: Mesh
    asyncio.run(main())
    assert scraped(REFUSED, limit="per_identity") == before + 1


def test_the_families_are_exposed_before_anything_fired() -> None:
    """An alert on `increase(...) > 0` needs the series to exist at 0 first."""
    text = exposition(health_collector())
    for d in ("reset_budget", "header_flood", "unread_flood"):
        assert sample(text, DEFENSES, defense=d) is not None
    for lim in ("max_connections", "preface_timeout", "per_identity", "pending_handshakes", "pending_handshakes_per_source",
                "per_source"):
        assert sample(text, REFUSED, limit=lim) is not None, lim
