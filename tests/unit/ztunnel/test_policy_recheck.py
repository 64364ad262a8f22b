"""A policy change applies to connections already open, as Istio's ztunnel does (its PolicyWatcher
re-asserts authorization on every tracked inbound connection when policies change and closes those
no longer allowed): a DENY or STRICT applied while a connection is open closes it; a change that
still allows it leaves it alone. Without this, a long-lived connection (a waypoint's pooled
upstream above all) kept carrying requests the new policy denies.

Driven in process as tests/unit/ztunnel/test_proxy_inprocess.py (real TLS, real sockets).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from ambit.configclient import ConfigUpdate
from ambit.dataplane.settings import TunnelSettings
from ambit.model import Authorization, Match, PeerAuthn, Rule
from tests.unit.ztunnel.test_proxy_inprocess import (
    APP_PORT,
    SERVER_IP,
    echo_until_eof,
    hbone_listener,
    mesh,
    pod,
    serve,
)
from ztunnel.proxy import Proxy


def deny_from(principal: str, name: str = "deny-client") -> Authorization:
    return Authorization(name=name, namespace="demo", action="DENY", scope="namespace",
                         rules=[Rule(clauses=[[Match(principals=[principal])]])])


def set_policies(cfg, type_url: str, items: list, version: str) -> None:
    state = {r.resource_name: r for r in items}
    cfg.apply(ConfigUpdate(type_url, version, state, frozenset(), state))


async def echo_once(r: asyncio.StreamReader, w: asyncio.StreamWriter, msg: bytes) -> bytes:
    w.write(msg)
    await w.drain()
    return await asyncio.wait_for(r.readexactly(len(msg)), 5)


async def closed(r: asyncio.StreamReader) -> bool:
    """The connection ended (EOF or reset) within 2 s."""
    try:
        return await asyncio.wait_for(r.read(), 2) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


@contextlib.asynccontextmanager
async def open_connection(ca, hbone: bool) -> AsyncIterator[tuple]:
    """One connection from the client pod to the echo app, open and echoing: over HBONE (the
    client's outbound listener, its ztunnel, the server pod's :15008) or plaintext to the server
    pod's inbound listener. Yields (client workload, config, access-log sink, server pod, reader,
    writer); closes everything after."""
    client, server, cfg, identities, sink, metrics = mesh(ca)
    proxy = Proxy(cfg, identities=identities, metrics=metrics, access_log=sink,
                  original_dst=lambda s: (SERVER_IP, APP_PORT), tunnel=TunnelSettings(connect_timeout=5, cert_wait=5))
    cpod, spod = pod(client), pod(server)
    app = await asyncio.start_server(echo_until_eof, SERVER_IP, APP_PORT, reuse_address=True)
    closers = [app]
    if hbone:
        proxy.registry.by_ip[cpod.pod.ip] = cpod
        identities.prefetch([client.identity, server.identity])
        await identities.get(server.identity, 5)
        closers.append(await proxy._serve_hbone(spod, hbone_listener()))
        listener, port = await serve(proxy.outbound, cpod, "127.0.0.1")
        host = "127.0.0.1"
    else:
        listener, port = await serve(proxy.inbound_plaintext, spod, SERVER_IP)
        host = SERVER_IP
    closers.append(listener)
    r, w = await asyncio.open_connection(host, port)
    try:
        assert await echo_once(r, w, b"before") == b"before"
        yield client, cfg, sink, spod, r, w
    finally:
        w.close()
        for c in closers:
            c.close()
        await proxy.close()
        await identities.close()


async def inbound_record(sink):
    for _ in range(100):
        found = [x for x in sink.records if x.direction == "inbound"]
        if found:
            return found[0]
        await asyncio.sleep(0.02)
    raise AssertionError("no inbound access record")


def test_a_deny_applied_later_closes_an_open_hbone_connection_and_an_allowed_one_stays(ca):
    async def go() -> None:
        async with open_connection(ca, hbone=True) as (client, cfg, sink, spod, r, w):
            # a policy that still allows the connection leaves it open
            set_policies(cfg, Authorization.TYPE, [deny_from("cluster.local/ns/demo/sa/other", "deny-other")], "v2")
            await asyncio.sleep(0.1)
            assert await echo_once(r, w, b"still") == b"still"
            # a DENY of its source closes it, as a new connection would be refused
            set_policies(cfg, Authorization.TYPE, [deny_from(client.identity.removeprefix("spiffe://"))], "v3")
            assert await closed(r), "the open connection outlived the DENY of its source"
            inbound = await inbound_record(sink)
            assert inbound.error.startswith("403 no longer allowed after a policy update: denied by demo/deny-client")
            assert inbound.policy == "demo/deny-client"
            assert not spod.conns
    asyncio.run(go())


def test_strict_applied_later_closes_an_open_plaintext_connection(ca):
    async def go() -> None:
        async with open_connection(ca, hbone=False) as (_, cfg, sink, spod, r, w):   # PERMISSIVE by default
            set_policies(cfg, PeerAuthn.TYPE, [PeerAuthn(name="default", namespace="demo", mode="STRICT")], "v2")
            assert await closed(r), "the plaintext connection outlived STRICT"
            inbound = await inbound_record(sink)
            assert inbound.error.startswith("401 no longer allowed after a policy update: plaintext refused")
            assert "STRICT" in inbound.error and not spod.conns
    asyncio.run(go())


def test_a_deny_applied_while_the_app_connection_is_made_refuses_the_tunnel(ca):
    """The window between admission and relaying (the app connection being made) is covered too:
    a DENY that lands then refuses the tunnel before a byte reaches the app."""
    async def go() -> None:
        client, server, cfg, identities, sink, metrics = mesh(ca)
        proxy = Proxy(cfg, identities=identities, metrics=metrics, access_log=sink,
                      original_dst=lambda s: (SERVER_IP, APP_PORT), tunnel=TunnelSettings(connect_timeout=5, cert_wait=5))
        deliver = proxy._deliver

        async def deny_meanwhile(*args, **kw):
            set_policies(cfg, Authorization.TYPE, [deny_from(client.identity.removeprefix("spiffe://"))], "v2")
            return await deliver(*args, **kw)
        proxy._deliver = deny_meanwhile  # type: ignore[method-assign]
        cpod, spod = pod(client), pod(server)
        proxy.registry.by_ip[cpod.pod.ip] = cpod
        identities.prefetch([client.identity, server.identity])
        await identities.get(server.identity, 5)
        seen: list[bytes] = []

        async def record(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            seen.append(await r.read())
            w.close()
        app = await asyncio.start_server(record, SERVER_IP, APP_PORT, reuse_address=True)
        hbone = await proxy._serve_hbone(spod, hbone_listener())
        out, out_port = await serve(proxy.outbound, cpod, "127.0.0.1")
        r, w = await asyncio.open_connection("127.0.0.1", out_port)
        try:
            w.write(b"hello")
            await w.drain()
            assert await closed(r), "the tunnel was relayed although a DENY landed before it was"
            inbound = await inbound_record(sink)
            assert inbound.error.startswith("403 no longer allowed after a policy update: denied by demo/deny-client")
            await asyncio.sleep(0.1)
            assert seen in ([], [b""]), "not a byte reaches the app"
            assert not proxy.admitted and not spod.conns
        finally:
            w.close()
            for c in (out, hbone, app):
                c.close()
            await proxy.close()
            await identities.close()
    asyncio.run(go())


class _Book:
    """What a re-check pass reads of an admitted connection (ztunnel.connbook.ConnBook)."""

    def __init__(self, key: tuple, calls: list, allowed: bool) -> None:
        self.recheck_key, self.revoked, self._calls, self._allowed = key, None, calls, allowed
        self.rec = type("Rec", (), {"src_addr": "10.0.0.1:1", "dst_addr": "10.0.0.2:80"})()

    def recheck(self):
        from ztunnel.admission import Admission
        self._calls.append(self.recheck_key)
        return Admission(self._allowed, 200 if self._allowed else 403, "denied by demo/deny", "demo/deny")

    def revoke(self, adm) -> None:
        self.revoked = adm


def test_a_recheck_pass_decides_each_distinct_admission_once_and_goes_on_in_slices(ca, monkeypatch):
    """10,000 connections under 50 policies took 1.5 s of the event loop when each was decided
    anew: connections sharing what their admission reads share one verdict, and a long pass goes
    on between other work (every connection is still cut), restarted by a newer update."""
    import ztunnel.proxy as proxy_mod

    async def go() -> None:
        _, _, cfg, identities, sink, metrics = mesh(ca)
        proxy = Proxy(cfg, identities=identities, metrics=metrics, access_log=sink)
        try:
            calls: list = []
            books = [_Book(("k", i % 50), calls, allowed=False) for i in range(2000)]
            proxy.admitted.update((id(b), b) for b in books)
            monkeypatch.setattr(proxy_mod, "RECHECK_SLICE", 0.0)
            proxy._recheck_admitted()
            cut_in_the_apply = sum(b.revoked is not None for b in books)
            assert cut_in_the_apply < len(books) and proxy._recheck_rest is not None    # the rest goes on later
            other_work_ran = asyncio.Event()
            asyncio.get_running_loop().call_soon(other_work_ran.set)
            for _ in range(1000):
                if proxy._recheck_rest is None:
                    break
                await asyncio.sleep(0)
            assert other_work_ran.is_set() and proxy._recheck_rest is None
            assert all(b.revoked is not None for b in books)
            assert len(calls) == len(set(calls)) == 50      # one decision per distinct key
            # a newer update starts over: the pass it replaces is cancelled, its own covers everyone
            fresh = [_Book(("f", i), calls, allowed=False) for i in range(500)]
            proxy.admitted.clear()
            proxy.admitted.update((id(b), b) for b in fresh)
            proxy._recheck_admitted()
            first = proxy._recheck_rest
            proxy._recheck_admitted()
            assert first is not None and first is not proxy._recheck_rest and first.cancelling()
            while proxy._recheck_rest is not None:
                await asyncio.sleep(0)
            assert all(b.revoked is not None for b in fresh)
        finally:
            await proxy.close()
            await identities.close()
    asyncio.run(go())
