"""An inbound handshake that arrives before its server certificate waits for it (bounded) instead of
being refused (ambit/dataplane/identity/wait.py): the wait's bound (pure), the identity manager
cutting a backoff short for a waiter (fake clock, fake fetcher), and a real HBONEServer on loopback
with real TLS clients: the waiting tunnel succeeds once the CA answers, a wait past its bound is
refused as before, and waiters count toward the pending-handshake bound."""

from __future__ import annotations

import asyncio
import logging
import ssl

import pytest

from ambit.backoff import Backoff
from ambit.dataplane import tls
from ambit.dataplane.acceptloop import wait_bound
from ambit.dataplane.hbone import HBONEClientPool, HBONEServer
from ambit.dataplane.hbone.limits import CERTIFICATE_WAITS, PendingHandshakes
from ambit.dataplane.identity import CertificateUnavailable, FetchResult, IdentityManager
from ambit.dataplane.identity.wait import IdentityGate
from tests.unit.conftest import LocalCAFetcher, issue
from tests.unit.dataplane.test_hbone import CLIENT, LOOPS, SERVER, echo, listener, run
from tests.unit.dataplane.test_hbone_pending import wait_for
from tests.unit.dataplane.test_identity_manager import FakeClock, settle


class HeldCA(LocalCAFetcher):
    """A CA that does not answer until `answer` is set (a stopped or slow controller)."""

    def __init__(self, ca) -> None:
        super().__init__(ca)
        self.answer = asyncio.Event()

    async def fetch(self, identity: str, csr_pem: bytes, ttl_seconds: int) -> FetchResult:
        await self.answer.wait()
        return await super().fetch(identity, csr_pem, ttl_seconds)


# --- the bound (pure) ------------------------------------------------------------------------------

def test_a_wait_leaves_the_handshake_a_reserve_of_its_deadline() -> None:
    assert wait_bound(10.0) == 9.0          # ztunnel's default deadline: 9 s of waiting, 1 s to handshake
    assert wait_bound(1.0) == 0.5           # a short deadline (a silent connection's grace) keeps half
    assert wait_bound(0.0) == 0.0


# --- the manager: a waiter cuts a backoff short, not more than once per DEMAND_RETRY ----------------

def test_a_waiting_connection_retries_a_backing_off_fetch_now_but_not_in_a_loop(ca) -> None:
    async def main() -> None:
        clock = FakeClock()
        fetcher = LocalCAFetcher(ca)
        fetcher.fail_next = 3
        m = IdentityManager(fetcher, clock=clock, backoff=Backoff(initial=60, maximum=120, jitter=0))
        m.prefetch([SERVER])
        await settle()
        assert fetcher.calls == 1                   # failed: the next attempt is 60 s away
        # A waiter within DEMAND_RETRY of that attempt does not start another.
        with pytest.raises(CertificateUnavailable):
            await m.get(SERVER, 0.05)
        assert fetcher.calls == 1
        await clock.advance_to(clock.t + 1.0)
        with pytest.raises(CertificateUnavailable):
            await m.get(SERVER, 0.05)               # one retry now (it fails too)...
        assert fetcher.calls == 2
        with pytest.raises(CertificateUnavailable):
            await m.get(SERVER, 0.05)               # ...and not another for the next waiter at once
        assert fetcher.calls == 2
        await clock.advance_to(clock.t + 1.0)
        with pytest.raises(CertificateUnavailable):
            await m.get(SERVER, 0.05)
        await clock.advance_to(clock.t + 1.0)
        cert = await m.get(SERVER, 5)               # the CA answers: no 60+ s backoff in between
        assert cert.identity == SERVER and fetcher.calls == 4
        await m.close()

    asyncio.run(main())


# --- a real HBONE listener ---------------------------------------------------------------------------

class Server:
    """An HBONEServer whose certificate comes from an identity manager and a CA that is held."""

    def __init__(self, ca, handshake_timeout: float = 10.0, pending: PendingHandshakes | None = None) -> None:
        self.fetcher = HeldCA(ca)
        self.identities = IdentityManager(self.fetcher, backoff=Backoff(initial=0.25, maximum=1))
        self.cache = tls.ContextCache()
        self.client_cert = issue(ca, CLIENT)
        self.sock = listener()
        self.port = self.sock.getsockname()[1]

        def server_ctx() -> ssl.SSLContext:
            cert = self.identities.current(SERVER)
            if cert is None:
                raise CertificateUnavailable(SERVER, "no server certificate yet")
            return self.cache.server(cert)

        self.server = HBONEServer(self.sock, server_ctx, echo, handshake_timeout=handshake_timeout,
                                  pending=pending, certificate_gate=IdentityGate(self.identities, lambda: SERVER))

    async def __aenter__(self) -> Server:
        self.identities.prefetch([SERVER])
        await self.server.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.server.close(grace=1)
        await self.identities.close()
        self.sock.close()

    def pool(self) -> HBONEClientPool:
        async def client_ctx(_identity: str) -> ssl.SSLContext:
            return self.cache.client(self.client_cert)
        return HBONEClientPool(client_ctx, port=self.port)

    async def tls_client(self) -> None:
        """One mTLS handshake to the listener, then close."""
        ctx = self.cache.client(self.client_cert)
        _r, w = await asyncio.open_connection("127.0.0.1", self.port, ssl=ctx, server_hostname="server",
                                              ssl_handshake_timeout=20)
        w.transport.abort()


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_a_tunnel_to_a_listener_without_its_certificate_yet_succeeds_once_the_ca_answers(ca, loop_kind) -> None:
    came = CERTIFICATE_WAITS["came"]

    async def main() -> None:
        async with Server(ca) as s:
            pool = s.pool()
            try:
                opening = asyncio.ensure_future(pool.connect(CLIENT, SERVER, "127.0.0.1", "10.0.0.2:8080",
                                                             timeout=20))
                await wait_for(lambda: len(s.server.pending) == 1, "the handshake waiting for the certificate")
                assert not opening.done()           # not refused: waiting
                s.fetcher.answer.set()              # the CA answers
                st = await opening
                st.write(b"ping")
                assert await st.readexactly(4) == b"ping"
                st.write_eof()
                await st.wait_closed()
            finally:
                await pool.close()

    run(loop_kind, main)
    assert CERTIFICATE_WAITS["came"] == came + 1     # ambit_handshake_certificate_waits_total{outcome="came"}


def test_a_certificate_that_does_not_come_within_the_bound_refuses_the_handshake_as_before(ca, caplog) -> None:
    none = CERTIFICATE_WAITS["none"]

    async def main() -> None:
        async with Server(ca, handshake_timeout=1.0) as s:
            with pytest.raises((ssl.SSLError, ConnectionError)):
                await s.tls_client()
            assert len(s.server.pending) == 0

    with caplog.at_level(logging.DEBUG, logger="ambit.dataplane"):
        asyncio.run(main())
    assert "for the server certificate: still none" in caplog.text      # it waited first...
    assert "refusing a TLS handshake: no server certificate" in caplog.text     # ...then as before
    assert CERTIFICATE_WAITS["none"] == none + 1     # ambit_handshake_certificate_waits_total{outcome="none"}


def test_handshakes_waiting_for_a_certificate_count_toward_the_pending_bound(ca) -> None:
    async def main() -> None:
        pending = PendingHandshakes(limit=2)
        async with Server(ca, pending=pending) as s:
            first = asyncio.ensure_future(s.tls_client())
            await wait_for(lambda: len(pending) == 1, "the first handshake waiting")
            second = asyncio.ensure_future(s.tls_client())
            await wait_for(lambda: len(pending) == 2, "the second handshake waiting")
            third = asyncio.ensure_future(s.tls_client())
            await wait_for(lambda: pending.dropped == 1, "the oldest waiter aborted for the third")
            with pytest.raises((ssl.SSLError, ConnectionError)):
                await first
            assert len(pending) == 2
            s.fetcher.answer.set()
            await asyncio.gather(second, third)     # both waited and then completed

    asyncio.run(main())
