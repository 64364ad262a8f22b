"""The ingress gateway's data plane: which listener a TLS client's SNI selects and which virtual host
a Host selects (waypoint/ingress.py, pure), and the listeners themselves over loopback with real TLS
clients (waypoint/ingress_listen.py): each hostname gets its own certificate, a name no listener
serves is refused, a listener's minimum TLS version holds, and a config update swaps certificates
and closes ports no longer configured."""

from __future__ import annotations

import asyncio
import datetime
import socket
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ambit import model
from ambit.dataplane.hbone.limits import REFUSED, PendingHandshakes
from ambit.model import HttpRoute, IngressGateway, IngressListener, TlsCertificate, WaypointRoutes
from tests.unit.dataplane.test_hbone_pending import closed_by_server, flood, wait_for
from tests.unit.scrape import exposition, sample
from tests.unit.waypoint.test_clienthello import client_hello
from waypoint import ingress_listen
from waypoint.ingress import build, choose_backend, host_match
from waypoint.ingress_listen import IngressListeners
from waypoint.serve import health_collector


@pytest.mark.parametrize(("name", "want"), [
    ("a.example.com", "a.example.com"),
    ("A.Example.com.", "a.example.com"),
    ("x.a.example.com", "*.a.example.com"),      # the longest wildcard wins
    ("x.example.com", "*.example.com"),
    ("example.com", "*"),                          # a wildcard needs one more label
    ("other.org", "*"),
])
def test_host_match(name: str, want: str) -> None:
    assert host_match(["*", "*.example.com", "a.example.com", "*.a.example.com"], name) == want
    assert host_match(["a.example.com"], "b.example.com") is None


def _listener(name: str, hostname: str, port: int = 443, protocol: str = "HTTPS", certs=(), minimum: str = "",
              hosts=("*",)) -> IngressListener:
    return IngressListener(name, port, protocol, hostname, minimum, list(certs),
                           [WaypointRoutes(h, http=[HttpRoute(source=f"HTTPRoute/ns/{name}")]) for h in hosts])


def test_ports_sni_and_virtual_hosts() -> None:
    gw = IngressGateway("gw", "ns", listeners=[
        _listener("a", "a.example.com", hosts=["a.example.com"]),
        _listener("wild", "*.example.com", hosts=["*.example.com"]),
        _listener("http", "", port=80, protocol="HTTP", hosts=["a.example.com", "*"]),
        _listener("clash", "", port=80, protocol="HTTPS")])
    view = build(gw)
    tls, plain = view.ports[443], view.ports[80]
    assert tls.listener_for_sni("a.example.com").name == "a"
    assert tls.listener_for_sni("b.example.com").name == "wild"
    assert tls.listener_for_sni("example.org") is None and tls.listener_for_sni(None) is None
    assert tls.virtual_host("b.example.com:443") is None or tls.virtual_host("b.example.com") == "*.example.com"
    assert plain.virtual_host("a.example.com") == "a.example.com" and plain.virtual_host("x.org") == "*"
    assert plain.conflicts == ("clash",) and plain.protocol == "HTTP"
    assert build(None).ports == {}


def test_a_minimum_tls_version_this_version_does_not_serve_is_refused_not_lowered() -> None:
    """A newer controller's minimum (say TLS 1.4) was served as TLS 1.2, weaker than asked for.
    The update is refused instead (the config client NACKs it and keeps the last good listeners)."""
    assert build(IngressGateway("gw", "ns", listeners=[_listener("a", "a.example.com", minimum="1.3")])).ports
    with pytest.raises(ValueError, match=r"ingress listener a \(port 443\): tls_min_version '1.4'"):
        build(IngressGateway("gw", "ns", listeners=[_listener("a", "a.example.com", minimum="1.4")]))


def test_a_client_certificate_mode_this_version_does_not_know_is_refused_not_dropped() -> None:
    """Serving a listener without the client certificate check it asks for would let anyone in:
    an unknown mode, or a mode without its CA, refuses the update (the last good listeners stay)."""
    import dataclasses
    ok = dataclasses.replace(_listener("a", "a.example.com"), client_auth="required", client_ca_pem="-----BEGIN")
    assert build(IngressGateway("gw", "ns", listeners=[ok])).ports
    for bad in (dataclasses.replace(ok, client_auth="pinned"), dataclasses.replace(ok, client_ca_pem="")):
        with pytest.raises(ValueError, match=r"ingress listener a \(port 443\): client_auth"):
            build(IngressGateway("gw", "ns", listeners=[bad]))


def _l4(name: str, port: int, protocol: str, routes: dict[str, list[str]], hostname: str = "") -> IngressListener:
    return IngressListener(name, port, protocol, hostname, hosts=[
        WaypointRoutes(h, tcp=[model.TcpRoute(destinations=[model.RouteDestination(b, service=b) for b in backends])])
        for h, backends in routes.items()])


def test_passthrough_and_tcp_ports_route_connections_by_sni() -> None:
    gw = IngressGateway("gw", "ns", listeners=[
        _l4("pass", 8443, "TLS", {"a.example.com": ["a"], "*.example.com": ["wild"]}),
        _l4("pass-any", 8443, "TLS", {"*": ["any"], "a.example.com": ["shadowed"]}),
        _l4("tcp", 9000, "TCP", {"*": ["db"]}),
        _l4("clash", 9000, "TLS", {"*": ["x"]})])
    view = build(gw)
    tls, tcp = view.ports[8443], view.ports[9000]
    assert tls.l4_host("a.example.com") == "a.example.com" and tls.l4["a.example.com"].destinations[0].host == "a"
    assert tls.l4_host("b.example.com") == "*.example.com"
    assert tls.l4_host("other.org") == "*" and tls.l4_host(None) == "*"
    assert tcp.l4_host("anything") == "*" and tcp.conflicts == ("clash",)
    assert build(IngressGateway("gw", "ns", listeners=[_l4("p", 1, "TLS", {"a.example.com": ["a"]})])
                 ).ports[1].l4_host("b.example.com") is None


class _Draws:
    def __init__(self, *draws: int) -> None:
        self.draws = list(draws)

    def randrange(self, stop: int) -> int:
        return self.draws.pop(0) % stop


def test_backends_are_chosen_by_weight_and_weight_zero_gets_nothing() -> None:
    r = model.TcpRoute(destinations=[model.RouteDestination(h, weight=w) for h, w in (("a", 1), ("b", 3), ("c", 0))])
    assert [choose_backend(r, _Draws(d)).host for d in (0, 1, 3)] == ["a", "b", "b"]
    assert choose_backend(model.TcpRoute(destinations=[model.RouteDestination("a", weight=0)]), _Draws(0)) is None
    assert choose_backend(model.TcpRoute(), _Draws(0)) is None


def _no_relay(transport, down, early) -> None:
    raise AssertionError("an HTTP/HTTPS port relays nothing")


def test_l4_listeners_hand_over_what_they_route_and_close_the_rest(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ingress_listen, "HELLO_TIMEOUT", 0.3)
    tls_port, tcp_port = _free_port(), _free_port()
    handed: list[tuple[str, int, bytes]] = []
    local: list[str] = []

    def relay(transport, down, early) -> None:     # the engine's opaque relay: say what it was given
        handed.append((down.hostname, down.destination_port, early))
        local.append(down.destination_ip)
        transport.write(f"to {down.hostname}".encode())
        transport.close()

    async def exchange(port: int, data: bytes) -> bytes:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        try:
            w.write(data)
            return await asyncio.wait_for(r.read(100), 5)
        except ConnectionError:
            return b""
        finally:
            w.close()

    async def run() -> None:
        lst = IngressListeners("127.0.0.1", lambda plug, down: None, relay)
        gw = IngressGateway("gw", "ns", listeners=[_l4("pass", tls_port, "TLS", {"a.example.com": ["a"]}),
                                                   _l4("tcp", tcp_port, "TCP", {"*": ["db"]})])
        await lst.update(build(gw))
        try:
            hello = client_hello("a.example.com")
            # the hello, split across writes, is read whole and handed over untouched
            r, w = await asyncio.open_connection("127.0.0.1", tls_port)
            w.write(hello[:20])
            await w.drain()
            await asyncio.sleep(0.05)
            w.write(hello[20:])
            assert await asyncio.wait_for(r.read(100), 5) == b"to a.example.com"
            w.close()
            assert handed[-1] == ("a.example.com", tls_port, hello)
            # a name no TLSRoute serves, no SNI, no TLS at all: closed, nothing handed over
            for data in (client_hello("b.example.com"), client_hello(None), b"GET / HTTP/1.1\r\n\r\n"):
                assert await exchange(tls_port, data) == b""
            # half a hello, then silence: closed once the hello's time is up, never held open
            assert await exchange(tls_port, client_hello("a.example.com")[:40]) == b""
            assert len(handed) == 1
            # TCP: every connection, at once, before the client says anything
            r, w = await asyncio.open_connection("127.0.0.1", tcp_port)
            assert await asyncio.wait_for(r.read(100), 5) == b"to *"
            w.close()
            assert handed[-1] == ("*", tcp_port, b"")
            # each connection's destination is the address the client connected to (what a TCP
            # ext_authz check and the access log's downstream_local_address name), TLS and TCP
            assert local == ["127.0.0.1", "127.0.0.1"]
        finally:
            await lst.close()

    asyncio.run(run())


# -- real listeners ---------------------------------------------------------------------------------

def _issue(tmp: Path, hosts: tuple[str, ...]) -> tuple[Path, dict[str, TlsCertificate]]:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)

    def cert(cn: str, key, signer, ca: bool) -> x509.Certificate:
        b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
             .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ca")])).public_key(key.public_key())
             .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
             .not_valid_after(now + datetime.timedelta(hours=1))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if not ca:
            b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(cn)]), critical=False)
        return b.sign(signer, hashes.SHA256())
    ca = cert("ca", ca_key, ca_key, True)
    (tmp / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    out = {}
    for h in hosts:
        k = ec.generate_private_key(ec.SECP256R1())
        out[h] = TlsCertificate(h, cert(h, k, ca_key, False).public_bytes(serialization.Encoding.PEM).decode(),
                                k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                serialization.NoEncryption()).decode())
    return tmp / "ca.pem", out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _handshake(port: int, ca: Path, sni: str, maximum: ssl.TLSVersion | None = None) -> tuple[str, bytes]:
    """(the server certificate's CN, what the server sent) or raises."""
    ctx = ssl.create_default_context(cafile=str(ca))
    if maximum is not None:
        ctx.maximum_version = maximum
    r, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=sni)
    try:
        cn = dict(x[0] for x in w.get_extra_info("peercert")["subject"])["commonName"]
        data = await asyncio.wait_for(r.read(100), 5)
        return cn, data
    finally:
        w.close()


async def _refused(handshake) -> bool:
    """Closed before a byte was served: during the handshake (as the client sees it) or right after."""
    try:
        return (await handshake)[1] == b""
    except (ConnectionError, ssl.SSLError):
        return True


def test_listeners_serve_each_hostname_its_certificate(tmp_path: Path) -> None:
    ca, certs = _issue(tmp_path, ("a.example.com", "b.example.com", "c.example.com"))
    port = _free_port()

    seen: list[str] = []

    def serve(plug, down) -> None:      # the engine's place: answer who we are
        seen.append(down.listener)
        plug.transport.write(f"port {down.destination_port} from {down.source_ip}".encode())
        plug.transport.close()

    async def run() -> None:
        lst = IngressListeners("127.0.0.1", serve, _no_relay)
        gw = IngressGateway("gw", "ns", listeners=[
            _listener("a", "a.example.com", port, certs=[certs["a.example.com"]]),
            _listener("b", "b.example.com", port, certs=[certs["b.example.com"]], minimum="1.3")])
        await lst.update(build(gw))
        try:
            assert await _handshake(port, ca, "a.example.com") == ("a.example.com", f"port {port} from 127.0.0.1".encode())
            assert (await _handshake(port, ca, "b.example.com"))[0] == "b.example.com"
            assert seen[-1] == "b", "the engine learns which listener the SNI chose (its Host must agree)"
            assert await _refused(_handshake(port, ca, "c.example.com"))    # no listener: the handshake fails
            # TLS 1.2 is fine for a, below b's minimum: the connection is closed unanswered
            assert (await _handshake(port, ca, "a.example.com", ssl.TLSVersion.TLSv1_2))[1].startswith(b"port")
            assert await _refused(_handshake(port, ca, "b.example.com", ssl.TLSVersion.TLSv1_2))
            # a config update: b's certificate becomes c's name; listener a goes
            gw.listeners = [_listener("b", "c.example.com", port, certs=[certs["c.example.com"]])]
            await lst.update(build(gw))
            assert (await _handshake(port, ca, "c.example.com"))[0] == "c.example.com"
            assert await _refused(_handshake(port, ca, "a.example.com"))
            await lst.update(build(None))
            with pytest.raises(OSError):
                await asyncio.open_connection("127.0.0.1", port)
        finally:
            await lst.close()

    asyncio.run(run())


def test_worker_listeners_share_their_ports_and_a_single_process_keeps_its_own() -> None:
    """An ingress gateway's workers (waypoint/workers.py) each open the Gateway's ports with
    SO_REUSEPORT, so both bind and the kernel spreads clients over them; a single process does not
    let another socket share its port."""
    tcp_port = _free_port()

    def relay(transport, down, early) -> None:
        transport.close()

    async def run() -> None:
        gw = IngressGateway("gw", "ns", listeners=[_l4("tcp", tcp_port, "TCP", {"*": ["db"]})])
        a = IngressListeners("127.0.0.1", lambda plug, down: None, relay, reuse_port=True)
        b = IngressListeners("127.0.0.1", lambda plug, down: None, relay, reuse_port=True)
        single = IngressListeners("127.0.0.1", lambda plug, down: None, relay)
        try:
            await a.update(build(gw))
            await b.update(build(gw))
            assert tcp_port in a.ports and tcp_port in b.ports
            await single.update(build(gw))              # refused: logged, the port left out
            assert tcp_port not in single.ports
        finally:
            for lst in (a, b, single):
                await lst.close()

    asyncio.run(run())


# -- SNI / Host agreement (domain fronting) ---------------------------------------------------------

def _fronting_gateway() -> IngressGateway:
    """a.example.com (TLS 1.3 only), b.example.com, *.example.com on 443; an Istio server for two hosts."""
    istio = [IngressListener(f"ns/igw/https-cd/{h}", 443, "HTTPS", h, "", [],
                             [WaypointRoutes(h, http=[HttpRoute(source="VirtualService/ns/cd")])], server="ns/igw/https-cd")
             for h in ("c.example.org", "d.example.org")]
    return IngressGateway("gw", "ns", listeners=[
        _listener("a", "a.example.com", minimum="1.3", hosts=["a.example.com"]),
        _listener("b", "b.example.com", hosts=["b.example.com"]),
        _listener("wild", "*.example.com", hosts=["*.example.com"]), *istio])


def test_a_host_of_another_listener_than_the_sni_chose_is_misdirected() -> None:
    """Gateway API `Listener.hostname`: the Host must select the listener the SNI chose; another
    listener's Host is 421, a Host no listener serves 404 (Istio: one server's routes per TLS
    connection, and the hosts of one server share them)."""
    port = build(_fronting_gateway()).ports[443]
    assert port.misdirected("a", "a.example.com") == 0
    assert port.misdirected("b", "a.example.com") == 421        # SNI b (TLS 1.2 allowed), Host a
    assert port.misdirected("wild", "a.example.com") == 421     # a more specific listener serves it
    assert port.misdirected("wild", "x.example.com") == 0       # one wildcard listener, two names
    assert port.misdirected("a", "nope.example.net") == 404
    assert port.misdirected("ns/igw/https-cd", "d.example.org") == 0
    assert port.misdirected("ns/igw/https-cd", "b.example.com") == 421


def test_the_gateway_answers_a_fronted_request_421_and_routes_an_agreeing_one() -> None:
    from ambit.configclient import ConfigUpdate
    from waypoint.app import WaypointProxy
    from waypoint.authz import Waypoint
    from waypoint.config import WaypointConfig
    from waypoint.request import Downstream, LocalReply, RequestHead
    from waypoint.settings import load

    cfg = WaypointConfig(Waypoint("ns", "gw"), "cluster.local")
    gw = _fronting_gateway()
    cfg.apply(ConfigUpdate(IngressGateway.TYPE, "1", {}, frozenset(), {gw.resource_name: gw}))
    p = WaypointProxy(load(["--waypoint", "ns/gw", "--pod-name", "gw-0", "--node", "node1",
                            "--gateway-class", "ambit"]), cfg, None)
    p.ingress = IngressListeners("127.0.0.1", lambda plug, down: None, _no_relay)    # an ingress gateway, unopened
    sni_b = Downstream(source_ip="198.51.100.1", destination_port=443, listener="b")
    d = p.decide(RequestHead("GET", "/", "a.example.com"), sni_b)
    assert isinstance(d, LocalReply) and d.status == 421, d
    d = p.decide(RequestHead("GET", "/", "b.example.com:443"), sni_b)
    assert not isinstance(d, LocalReply) or d.status not in (404, 421), d
    d = p.decide(RequestHead("GET", "/", "nope.example.net"), sni_b)
    assert isinstance(d, LocalReply) and d.status == 404


def test_the_ingress_serves_at_most_max_connections_over_all_its_ports() -> None:
    """A flood of connections from the internet: past `max_connections` (HTTP and TCP ports
    together) a new one is aborted unserved and counted, and a slot a client frees is taken again.
    Before, every connection was served until the pod ran out of memory or descriptors."""
    http_port, tcp_port = _free_port(), _free_port()
    served: list[object] = []

    def serve(plug, down) -> None:          # the engine's place: hold the connection, say nothing
        served.append(plug)

    def relay(transport, down, early) -> None:
        served.append(transport)

    async def closed_unserved(port: int) -> bool:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        try:
            return await asyncio.wait_for(r.read(), 5) == b""
        except ConnectionError:
            return True
        finally:
            w.close()

    async def settle(cond) -> None:
        for _ in range(500):
            if cond():
                return
            await asyncio.sleep(0.01)
        raise AssertionError("condition not reached")

    def refused() -> float | None:     # what the waypoint's metrics endpoint says
        return sample(exposition(health_collector()), "ambit_connections_refused_total", limit="max_connections")

    before = refused() or 0.0

    async def run() -> None:
        lst = IngressListeners("127.0.0.1", serve, relay, max_connections=2)
        gw = IngressGateway("gw", "ns", listeners=[_listener("web", "", http_port, "HTTP"),
                                                   _l4("tcp", tcp_port, "TCP", {"*": ["db"]})])
        await lst.update(build(gw))
        try:
            _r1, w1 = await asyncio.open_connection("127.0.0.1", http_port)
            _r2, w2 = await asyncio.open_connection("127.0.0.1", tcp_port)
            await settle(lambda: len(served) == 2)
            assert await closed_unserved(http_port) and await closed_unserved(tcp_port)
            assert lst.overloaded == 2 and len(served) == 2
            assert refused() == before + 2
            served[0].transport.close()                 # the engine is done with one: its slot is free again
            w1.close()
            _r3, w3 = await asyncio.open_connection("127.0.0.1", http_port)
            await settle(lambda: len(served) == 3)
            assert lst.overloaded == 2
            w2.close()
            w3.close()
        finally:
            await lst.close()

    asyncio.run(run())


def test_one_client_source_cannot_take_every_connection_slot() -> None:
    """Many idle connections from one address: past `max_per_source` a new one from that source is
    aborted unserved and counted, while another client is still served. Before, one client could
    hold all `max_connections` slots (an idle keep-alive connection lives an hour) and every
    other client was refused."""
    port = _free_port()
    served: list[object] = []

    def serve(plug, down) -> None:
        served.append(plug)

    def refused() -> float:
        return sample(exposition(health_collector()), "ambit_connections_refused_total", limit="per_source") or 0.0

    before = refused()

    async def connect(source: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))

    async def run() -> None:
        lst = IngressListeners("127.0.0.1", serve, _no_relay, max_connections=4, max_per_source=2)
        await lst.update(build(IngressGateway("gw", "ns", listeners=[_listener("web", "", port, "HTTP")])))
        try:
            held = [await connect("127.0.0.1") for _ in range(2)]
            await wait_for(lambda: len(served) == 2, "two served")
            r, w = await connect("127.0.0.1")
            assert await asyncio.wait_for(r.read(), 5) == b""       # the third from that source: closed
            w.close()
            assert refused() == before + 1 and len(served) == 2
            other = await connect("127.0.0.2")                       # another client still gets in
            await wait_for(lambda: len(served) == 3, "the other client served")
            served[0].transport.close()                              # a slot of the first source frees
            held[0][1].close()
            again = await connect("127.0.0.1")
            await wait_for(lambda: len(served) == 4, "a freed slot taken")
            for _, w in [*held, other, again]:
                w.close()
        finally:
            await lst.close()

    asyncio.run(run())


def test_https_handshakes_under_way_are_bounded_and_a_client_is_still_served(tmp_path: Path) -> None:
    """Clients that stop inside their ClientHello on an HTTPS port need no certificate; they were
    held for asyncio's 60 s handshake timeout, uncounted. Now at most `pending.limit` are under way
    over all ports (the oldest aborted), `per_source` from one IP (the next one reset), and a real
    client still gets its answer."""
    ca, certs = _issue(tmp_path, ("a.example.com",))
    port = _free_port()

    def serve(plug, down) -> None:
        plug.transport.write(b"served")
        plug.transport.close()

    async def run() -> None:
        lst = IngressListeners("127.0.0.1", serve, _no_relay, pending=PendingHandshakes(limit=8, per_source=4))
        await lst.update(build(IngressGateway("gw", "ns", listeners=[
            _listener("a", "a.example.com", port, certs=[certs["a.example.com"]])])))
        before = dict(REFUSED)
        try:
            socks = flood(port, "127.0.0.2", 6)                 # 2 over its source's cap
            for i in range(3, 6):
                socks += flood(port, f"127.0.0.{i}", 4)         # 18 in all, 8 may stay
            assert await _handshake(port, ca, "a.example.com") == ("a.example.com", b"served")
            await wait_for(lambda: sum(map(closed_by_server, socks)) >= len(socks) - 8,
                           "the ingress still holds more than 8 handshakes under way")
            assert REFUSED["pending_handshakes_per_source"] - before["pending_handshakes_per_source"] == 2
            assert len(lst.pending) <= 8
            for s in socks:
                s.close()
        finally:
            await lst.close()

    asyncio.run(run())


def test_a_port_that_cannot_be_bound_is_recorded_retried_and_forgotten_when_dropped() -> None:
    """A held port: the listener's failure is recorded (reported to the controller) and retried
    with backoff, binds once freed; a port the Gateway drops stops being retried."""
    async def main() -> None:
        held = socket.socket()
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        held.bind(("127.0.0.1", 0))
        held.listen(1)
        busy = held.getsockname()[1]
        lst = IngressListeners("127.0.0.1", lambda plug, down: None, _no_relay)
        lst.retry = ingress_listen.Backoff(initial=0.05, maximum=0.1)
        changes: list[int] = []
        lst.on_change = lambda: changes.append(1)
        view = build(IngressGateway("gw", "ns", listeners=[_listener("web", "", port=busy, protocol="HTTP")]))
        try:
            await lst.update(view)
            [failed] = [f for f in lst.binds.report() if not f["bound"]]
            assert failed["listeners"] == ["web"] and "EADDRINUSE" in failed["error"] and changes
            await wait_for(lambda: lst.binds.failures_total[busy] >= 3, "retries")    # retried on its own
            assert busy not in lst.ports
            held.close()
            await wait_for(lambda: busy in lst.ports, "the bind")                # freed: bound, no config change
            assert lst.binds.unbound() == 0 and lst.binds.report()[0]["bound"] is True
            with socket.create_connection(("127.0.0.1", busy), timeout=2):
                pass
            # a port the Gateway no longer has: no failure kept, no retry left running
            again = socket.socket()
            again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            await lst.update(build(IngressGateway("gw", "ns", listeners=[])))
            again.bind(("127.0.0.1", busy))
            again.listen(1)
            await lst.update(view)
            assert lst.binds.unbound() == 1
            await lst.update(build(IngressGateway("gw", "ns", listeners=[])))
            assert lst.binds.report() == [] and all(t.done() for t in lst._retries.values())
            again.close()
        finally:
            held.close()
            await lst.close()
    asyncio.run(main())
