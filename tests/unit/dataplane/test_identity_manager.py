"""Identity manager: schedule (fake clock), failure handling, and rotation against the real gRPC CA."""

from __future__ import annotations

import asyncio
import json
import random
import time

import grpc
import pytest

from ambit.backoff import Backoff
from ambit.configclient import tls
from ambit.dataplane.identity import (
    CertificateUnavailable,
    CertStore,
    GrpcCertificateFetcher,
    IdentityManager,
    State,
    WorkloadCertificate,
    next_delay,
)
from controller.ca import BootstrapTokens, CertificateServicer, add_to_server
from tests.unit.conftest import LocalCAFetcher, issue, sid

ID = sid("demo", "client")


class FakeClock:
    """Wall time that only moves when the test says so; sleepers wake when their time comes."""

    def __init__(self) -> None:
        self.t = time.time()
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        fut = asyncio.get_running_loop().create_future()
        self._sleepers.append((self.t + seconds, fut))
        await fut

    @property
    def next_wake(self) -> float:
        return min(w for w, f in self._sleepers if not f.done())

    async def advance_to(self, t: float) -> None:
        self.t = t
        for wake, fut in self._sleepers:
            if wake <= t and not fut.done():
                fut.set_result(None)
        self._sleepers = [(w, f) for w, f in self._sleepers if not f.done()]
        await settle()


async def settle() -> None:
    for _ in range(50):
        await asyncio.sleep(0)


# --- pure schedule --------------------------------------------------------------------------------

def test_refresh_at_half_of_the_actual_validity(ca) -> None:
    cert = issue(ca, ID, ttl=3600)
    assert cert.refresh_at == pytest.approx(cert.not_before + (cert.not_after - cert.not_before) / 2)
    now = time.time()
    assert next_delay(cert, 0, now, Backoff(), 0.0) == pytest.approx(cert.refresh_at - now)
    # Past half-life (e.g. after a suspend): refresh right away, not in a negative time.
    assert next_delay(cert, 0, cert.refresh_at + 10, Backoff(), 0.0) == pytest.approx(0.1)


def test_backoff_grows_is_capped_and_jittered() -> None:
    b = Backoff(initial=1, maximum=60, multiplier=2, jitter=0.5)
    assert [b.delay(n, 0.0) for n in (1, 2, 3, 4)] == [1, 2, 4, 8]
    assert b.delay(20, 0.0) == 60
    rng = random.Random(7)
    samples = [b.delay(3, rng.random()) for _ in range(200)]
    assert min(samples) >= 2 and max(samples) <= 4 and len(set(samples)) > 100


def test_retry_never_scheduled_after_the_current_cert_expires(ca) -> None:
    cert = issue(ca, ID, ttl=60)
    now = time.time()
    d = next_delay(cert, 9, now, Backoff(initial=30, maximum=600), 0.0)
    assert now + d < cert.not_after


# --- manager with a fake clock -----------------------------------------------------------------------

def test_prefetch_then_rotation_at_half_life(ca) -> None:
    async def run() -> None:
        clock = FakeClock()
        fetcher = LocalCAFetcher(ca)
        updates: list[WorkloadCertificate] = []
        mgr = IdentityManager(fetcher, ttl=3600, clock=clock, on_update=updates.append)
        mgr.prefetch([ID])
        first = await mgr.get(ID, timeout=5)
        assert first.identity == ID and fetcher.calls == 1
        assert clock.next_wake == pytest.approx(first.refresh_at, abs=1)
        await clock.advance_to(first.refresh_at - 5)
        assert fetcher.calls == 1                        # not before half-life
        await clock.advance_to(first.refresh_at + 0.01)
        second = await mgr.get(ID, timeout=5)
        assert fetcher.calls == 2 and second.serial != first.serial
        assert [u.serial for u in updates] == [first.serial, second.serial]
        [row] = mgr.dump()
        assert row["state"] == State.VALID and row["serial"] == f"{second.serial:x}"
        await mgr.close()

    asyncio.run(run())


def test_outage_keeps_old_cert_backs_off_then_recovers(ca) -> None:
    async def run() -> None:
        clock = FakeClock()
        fetcher = LocalCAFetcher(ca)
        mgr = IdentityManager(fetcher, ttl=3600, clock=clock, rng=random.Random(1),
                              backoff=Backoff(initial=10, maximum=100, jitter=0.0))
        first = await mgr.get(ID, timeout=5)
        fetcher.fail_next = 3
        await clock.advance_to(first.refresh_at + 0.01)  # rotation attempt 1 fails
        assert fetcher.calls == 2
        row = mgr.dump()[0]
        assert row["state"] == State.ROTATION_FAILING and "simulated outage" in row["last_error"]
        assert (await mgr.get(ID, timeout=1)).serial == first.serial   # still served meanwhile
        waits = []
        for _ in range(3):                               # attempts 2, 3 fail, 4 succeeds
            waits.append(clock.next_wake - clock.now())
            await clock.advance_to(clock.next_wake)
        assert waits == pytest.approx([10, 20, 40])
        assert fetcher.calls == 5
        assert mgr.dump()[0]["state"] == State.VALID
        assert (await mgr.get(ID, timeout=1)).serial != first.serial
        await mgr.close()

    asyncio.run(run())


def test_expired_certificate_is_not_handed_out(ca) -> None:
    async def run() -> None:
        clock = FakeClock()
        fetcher = LocalCAFetcher(ca)
        mgr = IdentityManager(fetcher, ttl=3600, clock=clock, backoff=Backoff(initial=10_000, maximum=10_000))
        first = await mgr.get(ID, timeout=5)
        fetcher.fail_next = 10**6
        await clock.advance_to(first.not_after + 1)     # jump past expiry: refresh attempts all fail
        assert mgr.dump()[0]["state"] == State.EXPIRED
        with pytest.raises(CertificateUnavailable) as ei:
            await mgr.get(ID, timeout=0.05)
        assert "EXPIRED" in ei.value.reason and "simulated outage" in ei.value.reason
        await mgr.close()

    asyncio.run(run())


def test_get_waits_with_a_bound_and_says_why(ca) -> None:
    async def run() -> None:
        fetcher = LocalCAFetcher(ca)
        fetcher.fail_next = 10**6
        mgr = IdentityManager(fetcher, clock=FakeClock())
        with pytest.raises(CertificateUnavailable) as ei:
            await mgr.get(ID, timeout=0.1)
        assert ei.value.identity == ID
        assert "UNAVAILABLE" in ei.value.reason and "CA unreachable" in ei.value.reason
        with pytest.raises(ValueError, match="invalid SPIFFE id"):
            await mgr.get("spiffe://cluster.local/oops", timeout=0.1)
        await mgr.close()

    asyncio.run(run())


def test_waiter_gets_the_first_certificate_when_it_arrives(ca) -> None:
    async def run() -> None:
        clock = FakeClock()
        fetcher = LocalCAFetcher(ca)
        fetcher.fail_next = 1
        mgr = IdentityManager(fetcher, clock=clock, backoff=Backoff(initial=5, jitter=0))
        waiter = asyncio.ensure_future(mgr.get(ID, timeout=10))
        await settle()
        assert not waiter.done() and mgr.dump()[0]["state"] == State.UNAVAILABLE
        await clock.advance_to(clock.next_wake)          # retry succeeds
        cert = await asyncio.wait_for(waiter, 5)
        assert cert.identity == ID
        await mgr.close()

    asyncio.run(run())


# --- against the real gRPC CA ---------------------------------------------------------------------------

def test_rotation_with_short_ttl_against_the_grpc_ca(ca) -> None:
    """Real time, real gRPC: a 2 s certificate is replaced before it expires, twice."""

    async def run() -> None:
        tokens = BootstrapTokens()
        token = tokens.issue("node-1")
        server = grpc.aio.server()
        add_to_server(server, CertificateServicer(ca, tokens, lambda n: [("demo", "client")] if n == "node-1" else []))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        channel = tls.channel(f"127.0.0.1:{port}", None)      # the data plane's own gRPC client
        try:
            fetcher = GrpcCertificateFetcher(channel, "node-1", lambda: token)
            mgr = IdentityManager(fetcher, ttl=2)
            serials = [(await mgr.get(ID, timeout=5)).serial]
            deadline = time.monotonic() + 15
            while len(serials) < 3 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
                cur = mgr.current(ID)
                assert cur is not None, "a valid certificate must exist at all times during rotation"
                if cur.serial != serials[-1]:
                    serials.append(cur.serial)
            assert len(set(serials)) == 3
            # An identity of no pod on this node is refused by node authorization, with the reason.
            with pytest.raises(CertificateUnavailable) as ei:
                await mgr.get(sid("prod", "db"), timeout=1)
            assert "PERMISSION_DENIED" in ei.value.reason and "prod/db" in ei.value.reason
            await mgr.close()
        finally:
            channel.close()
            await server.stop(None)

    asyncio.run(run())


# --- the on-disk store and retries ------------------------------------------------------------------

def test_a_stored_certificate_serves_at_once_after_a_restart_and_renews_at_half_life(ca, tmp_path) -> None:
    async def run() -> None:
        clock = FakeClock()
        fetcher = LocalCAFetcher(ca)
        mgr = IdentityManager(fetcher, ttl=3600, clock=clock, store=CertStore(tmp_path / "certs"))
        first = await mgr.get(ID, timeout=5)
        await mgr.close()
        [f] = list((tmp_path / "certs").iterdir())
        assert f.stat().st_mode & 0o777 == 0o600 and (tmp_path / "certs").stat().st_mode & 0o777 == 0o700

        fetcher.fail_next = 100                           # the CA is down while we restart
        mgr2 = IdentityManager(fetcher, ttl=3600, clock=clock, store=CertStore(tmp_path / "certs"))
        again = await mgr2.get(ID, timeout=0.1)
        assert again.serial == first.serial and fetcher.calls == 1, "served from the store, no CA call"
        await settle()
        assert fetcher.calls == 1
        assert clock.next_wake == pytest.approx(first.refresh_at, abs=1)
        fetcher.fail_next = 0
        await clock.advance_to(first.refresh_at + 0.01)
        assert (await mgr2.get(ID, timeout=5)).serial != first.serial
        mgr2.forget(ID)
        assert list((tmp_path / "certs").iterdir()) == [], "a forgotten identity's key leaves the disk"
        await mgr2.close()

    asyncio.run(run())


def test_a_tampered_or_expired_stored_certificate_is_ignored(ca, other_ca, tmp_path) -> None:
    store = CertStore(tmp_path)
    good = issue(ca, ID, ttl=3600)
    store.save(good)
    assert store.load(ID, time.time()).serial == good.serial
    assert store.load(ID, good.not_after + 1) is None
    foreign = issue(other_ca, ID)
    store.save(foreign)
    path = next(tmp_path.iterdir())
    doc = json.loads(path.read_text())
    doc["chain_pem"] = list(good.chain_pem)          # a valid chain, but not for the stored key
    path.write_text(json.dumps(doc))
    assert store.load(ID, time.time()) is None
    path.write_text("{not json")
    assert store.load(ID, time.time()) is None


@pytest.mark.parametrize("damage", [
    {"key_pem": None}, {"key_pem": 7}, {"chain_pem": "one pem"}, {"chain_pem": [None]}, {"bundle_pems": {}},
    {"bundle_pems": [1]},
])
def test_a_stored_certificate_of_another_shape_is_ignored_not_raised(ca, tmp_path, damage) -> None:
    """Another version's file, or a damaged one: `"key_pem": null` raised AttributeError out of
    the store, and so out of `prefetch` at the waypoint's start, on every restart (the emptyDir
    keeps the file). Now it is ignored as any unusable file is, and the CA is asked."""
    store = CertStore(tmp_path / "certs")
    store.save(issue(ca, ID, ttl=3600))
    path = next((tmp_path / "certs").iterdir())
    path.write_text(json.dumps({**json.loads(path.read_text()), **damage}))
    assert store.load(ID, time.time()) is None

    async def run() -> None:
        fetcher = LocalCAFetcher(ca)
        mgr = IdentityManager(fetcher, ttl=3600, store=store)
        mgr.prefetch([ID])
        assert (await mgr.get(ID, timeout=5)).identity == ID and fetcher.calls == 1
        await mgr.close()
    asyncio.run(run())


def test_retry_failed_skips_the_backoff_of_identities_without_a_certificate(ca) -> None:
    async def run() -> None:
        clock = FakeClock()
        fetcher = LocalCAFetcher(ca)
        fetcher.fail_next = 1
        mgr = IdentityManager(fetcher, clock=clock, backoff=Backoff(initial=3600, maximum=3600, jitter=0))
        mgr.prefetch([ID])
        await settle()
        assert fetcher.calls == 1 and mgr.current(ID) is None
        assert mgr.retry_failed() == [ID]
        assert (await mgr.get(ID, timeout=5)).identity == ID and fetcher.calls == 2
        assert mgr.retry_failed() == [], "an identity with a certificate follows its schedule"
        await mgr.close()

    asyncio.run(run())


def test_a_new_identitys_first_failed_fetch_is_not_yet_a_warning(ca, caplog) -> None:
    """A new pod's first request often reaches the CA before the controller has seen the pod and is
    refused; the retry succeeds. That logged a WARNING on every pod start (the chaos soak's logs).
    The first failure of an identity without a certificate is INFO; the next in a row is a WARNING."""
    import logging

    async def run() -> None:
        clock = FakeClock()
        fetcher = LocalCAFetcher(ca)
        fetcher.fail_next = 2
        mgr = IdentityManager(fetcher, clock=clock, backoff=Backoff(initial=1, maximum=1, jitter=0))
        with caplog.at_level(logging.INFO, logger="ambit.dataplane.identity"):
            mgr.prefetch([ID])
            await settle()
            await clock.advance_to(clock.next_wake)
            assert fetcher.calls == 2
        levels = [r.levelname for r in caplog.records if "certificate fetch for" in r.getMessage()]
        assert levels == ["INFO", "WARNING"], levels
        await mgr.close()

    asyncio.run(run())



def test_a_restarted_ztunnel_removes_the_stored_keys_that_can_no_longer_serve(ca, tmp_path) -> None:
    """A file goes when its identity is forgotten (its last pod left). Pods that left while no
    ztunnel ran (an upgrade, a crash) are never forgotten: their keys stayed on the node's disk for
    good, one file per identity churned across restarts. Expired, unreadable and half-written
    files go; a still-valid one stays (it may serve a pod the agent hands over next)."""
    import os

    from ztunnel import identity_setup
    certs = tmp_path / "certs"
    store = CertStore(certs)
    gone, kept = issue(ca, sid("demo", "gone"), ttl=60), issue(ca, ID, ttl=3600)
    store.save(gone)
    store.save(kept)
    long_ago = time.time() - 3600
    (certs / "0123.json").write_text("{not json")
    (certs / ".half.json.123.tmp").write_text("{")          # a write cut short by a crash
    os.utime(certs / ".half.json.123.tmp", (long_ago, long_ago))
    (certs / ".fresh.json.456.tmp").write_text("{")         # another worker writing now
    assert store.prune(gone.not_after + 1) == 3
    assert sorted(p.name for p in certs.iterdir()) == sorted([store._path(ID).name, ".fresh.json.456.tmp"])
    # ztunnel's start prunes its cache
    (certs / "0123.json").write_text("{not json")
    identity_setup.build("unix:/nonexistent", "node-1", tmp_path / "token", cache_dir=certs)
    assert not (certs / "0123.json").exists() and store.load(ID, time.time()) is not None
