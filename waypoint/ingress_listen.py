"""The ingress gateway's listeners (the IO edge of waypoint/ingress.py): one socket per Gateway port,
plain or terminating TLS, each accepted connection handed to the waypoint's HTTP engine; or, on a
TLS (passthrough) or TCP port, relayed untouched to a TLSRoute's/TCPRoute's backend.

TLS passthrough: the gateway reads the ClientHello (waypoint/clienthello.py, at most
`HELLO_TIMEOUT` seconds and `clienthello.MAX_BUFFER` bytes) without answering it, picks the route by
its SNI (`IngressPort.l4_host`) and hands the connection, hello included, to the engine's opaque
relay; a malformed or late hello, or a name no route serves, closes the connection (Gateway API:
rejected). A TCP port relays every connection at once.

TLS: one server context per port whose servername callback (run for every ClientHello, with or
without SNI) swaps in the context of the listener the SNI selects (`IngressPort.listener_for_sni`),
so each hostname gets its own certificate. A client whose SNI selects no listener fails its
handshake (OpenSSL makes the `unrecognized_name` alert, but the event loop closes the socket
without sending it: the client sees the connection end, docs/ingress.md). OpenSSL copies
protocol versions into a connection before that callback, so the base context allows TLS 1.2 and
1.3 and a listener's `ambit.io/min-tls-version` is checked right after the handshake: a
connection below it is closed before a byte of HTTP is read.

Client certificates (mutual TLS): each listener's context holds its CAs and, with a CRL, the CRL
and the revocation check in its own trust store (`ambit.dataplane.tls.load_crls`: the swapped-in
context's verify flags are ignored, its store's are not), so a revoked certificate fails the
handshake of that listener only; a CRL that does not load leaves the listener unserved. The
subjectAltNames and the certificate pins are checked right after the handshake (`admitted`;
Python's ssl has no verify callback), the connection closed before a byte of HTTP is read.

Connections: at most `max_connections` at once over all ports (`--max-connections`), and at most
`max_per_source` from one client source (`--max-connections-per-source`; a source is
`ambit.accept.peer_key`'s, an IPv4 address or an IPv6 /64), so one client holding idle
connections (each may idle an hour, Envoy's default) cannot take every slot and lock the other
clients out; one more is aborted as soon as it is accepted (after its TLS handshake on HTTPS),
counted (`overloaded`, `ambit_connections_refused_total{limit="max_connections"|"per_source"}`) and
logged once per 1,000. The open transports are kept in sets (all, and per source) pruned of closed
ones every `PRUNE_EVERY` admissions and whenever one is full, so nothing per connection has to be
told when it closes (the engine may own the transport by then). Not a weak set: uvloop's TLS
transports take no weak reference (adding one raised in `connection_made`, and every HTTPS
connection was reset).

TLS handshakes: on HTTPS ports the accept loop is ours (ambit/dataplane/acceptloop.py): silent
peers stay in the kernel (TCP_DEFER_ACCEPT), a handshake must finish within `HANDSHAKE_TIMEOUT`
(asyncio's default was 60 s), and at most `--max-pending-handshakes` are under way over all ports
(the oldest aborted for a new one), `--max-pending-handshakes-per-source` from one IP; those need
no certificate and pin ~50-70 KiB each, and `max_connections` counts a connection only once its
handshake is done.

Listeners follow the config: `update(view)` opens new ports, closes removed ones, reopens a port
whose protocol changed, and swaps certificates in place (new handshakes see them at once).

A port that cannot be bound (in use, privileged without CAP_NET_BIND_SERVICE, an address not on the
host) is not skipped silently: its outcome goes to `binds` (waypoint/ingress_binds.py), which the
status reports carry to the controller (the listener's `Accepted=False PortUnavailable` in the
Gateway's status), `on_change` is called so the report goes at once, and the bind is retried
with backoff (`BIND_RETRY`: 1 s doubling to 30 s, jittered) for as long as the Gateway wants the
port, so freeing the port heals the listener without a restart. Envoy, by contrast, rejects the
listener update and never retries (istio/istio#7765, envoyproxy/envoy#3395).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import socket
import ssl
from collections.abc import Callable
from typing import Any

from ambit.accept import peer_key
from ambit.aiotask import cancel
from ambit.backoff import Backoff
from ambit.dataplane.acceptloop import AcceptLoop, Handshakes
from ambit.dataplane.hbone.limits import HANDSHAKE_TIMEOUT, PendingHandshakes, refused_at_bound
from ambit.dataplane.ports import LISTEN_BACKLOG
from ambit.dataplane.tls import TLSPolicyError, load_chain_from_memory, load_crls
from ambit.model import IngressListener
from waypoint import clienthello
from waypoint.http.edge import client_cert_element
from waypoint.http.plug import Plug
from waypoint.ingress import L4_PROTOCOLS, IngressPort, IngressView, listener_group
from waypoint.ingress_binds import BindState, describe
from waypoint.request import Downstream

log = logging.getLogger("ambit.waypoint.ingress")

VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
ALPN = ["h2", "http/1.1"]

HELLO_TIMEOUT = 10.0    # seconds a passthrough client has to send its ClientHello
PRUNE_EVERY = 64        # admissions between two sweeps of the closed transports out of `open`
BIND_RETRY = Backoff(initial=1.0, maximum=30.0)     # a port that could not be bound is tried again

Serve = Callable[[Plug, Downstream], None]
# relay(transport, downstream, bytes already read): the engine's opaque relay to the route's backend
Relay = Callable[[asyncio.Transport, Downstream, bytes], None]


def listener_context(ln: IngressListener, port_cas: str = "") -> ssl.SSLContext:
    """The certificates of one HTTPS listener (several: OpenSSL picks by key type, e.g. ECDSA and RSA),
    and the CAs a client certificate is verified against: the listener's own with mutual TLS, else
    those of the port's mutual-TLS listeners (`port_cas`).

    Why a listener without mutual TLS may have them: OpenSSL takes the decision to ask for a client
    certificate from the port's base context, before SNI chose the listener (the SNI callback swaps
    the certificates and the CA store, never the verify mode), so on a port where some listener
    wants client certificates every client is asked for one (`_Port.base_context`), and a client of
    another listener that sends one is verified against this store. Whether a certificate is
    required is checked once the handshake is done (`_Port.admitted`)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = VERSIONS[ln.tls_min_version or "1.2"]     # others are refused (ingress.build)
    ctx.set_alpn_protocols(ALPN)
    for c in ln.certificates:
        load_chain_from_memory(ctx, c.key_pem.encode(), [c.cert_pem])
    cas = ln.client_ca_pem if ln.client_auth else port_cas
    if cas:
        ctx.load_verify_locations(cadata=cas)
        ctx.verify_mode = ssl.CERT_OPTIONAL
    if ln.client_auth and ln.client_crl_pem:    # this listener's store only: a revoked client fails its handshake
        load_crls(ctx, ln.client_crl_pem, per_store=True)
    return ctx


def _mutual_port(base: ssl.SSLContext, mutual: bool) -> None:
    """The handshake settings of a port where some listener wants client certificates: ask every
    client for one (see `listener_context`), and resume no session. Sessions (tickets, and the
    session cache) belong to the base context, not the listener's, so a session from one
    listener resumed on another: a client certificate checked against one listener's CA was
    accepted by a listener with another CA, without a look at the certificate (tried, TLS 1.3)."""
    base.verify_mode = ssl.CERT_OPTIONAL if mutual else ssl.CERT_NONE
    base.num_tickets = 0 if mutual else 2       # 2: OpenSSL's default
    if mutual:
        base.options |= ssl.OP_NO_TICKET
    else:
        base.options &= ~ssl.OP_NO_TICKET


def _fingerprint(ln: IngressListener, port_cas: str) -> str:
    """What a listener's context is built from: a change rebuilds it."""
    return hashlib.sha256("\0".join([*(c.cert_pem + c.key_pem for c in ln.certificates), ln.tls_min_version,
                                      ln.client_auth, ln.client_ca_pem, ln.client_crl_pem, port_cas]).encode()).hexdigest()


def san_allowed(cert: dict[str, Any], wanted: tuple[str, ...]) -> bool:
    """Does a verified client certificate (`getpeercert()`) carry one of `wanted` as a subject
    alternative name (Istio's subjectAltNames: exact, DNS, URI, email or IP)? Any, when none is wanted."""
    if not wanted:
        return True
    return any(value in wanted for _kind, value in cert.get("subjectAltName", ()))


def pin_allowed(der: bytes, spki: tuple[str, ...], digests: tuple[str, ...]) -> bool:
    """Does a verified client certificate (DER) match one of the pins (verifyCertificateSpki: the
    SHA-256 of its SubjectPublicKeyInfo; verifyCertificateHash: of the certificate), as lowercase
    hex? Envoy's CertificateValidationContext: with both lists set, a match in either is enough.
    Any, when none is set."""
    if not spki and not digests:
        return True
    if digests and hashlib.sha256(der).hexdigest() in digests:
        return True
    if spki:
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
        key = x509.load_der_x509_certificate(der).public_key()
        return hashlib.sha256(key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)).hexdigest() in spki
    return False


class _Port:
    """One listening port: its socket, server, and (HTTPS) the contexts its SNI chooses from."""

    def __init__(self, port: IngressPort, listeners: IngressListeners) -> None:
        self.port = port
        self.listeners = listeners
        self.contexts: dict[str, ssl.SSLContext] = {}     # listener name -> context
        self.minimum: dict[int, ssl.TLSVersion] = {}      # id(context) -> its listener's minimum
        self.group: dict[int, str] = {}                   # id(context) -> its listener's group
        self.auth: dict[int, tuple[str, tuple[str, ...]]] = {}   # id(context) -> client_auth, client_sans
        self.pins: dict[int, tuple[tuple[str, ...], tuple[str, ...]]] = {}  # id(context) -> SPKI, cert pins
        self.mutual = False                               # some listener wants client certificates
        self.base: ssl.SSLContext | None = None           # HTTPS: the context every handshake starts with
        self._fingerprints: dict[str, str] = {}
        self.server: asyncio.AbstractServer | None = None     # plain ports
        self.accept: AcceptLoop | None = None                 # HTTPS ports: our own accept loop ...
        self.handshakes: Handshakes | None = None             # ... and the handshakes it starts

    def refresh(self, port: IngressPort) -> None:
        self.port = port
        https = port.listeners if port.protocol == "HTTPS" else ()
        port_cas = "".join(ln.client_ca_pem for ln in https if ln.client_auth)
        self.mutual = bool(port_cas)
        if self.base is not None:       # a listener that starts or stops asking, on an open port
            _mutual_port(self.base, self.mutual)
        for ln in https:
            fp = _fingerprint(ln, port_cas)
            if self._fingerprints.get(ln.name) != fp:
                try:
                    ctx = listener_context(ln, port_cas)
                except (ssl.SSLError, OSError, ValueError, TLSPolicyError) as e:
                    log.warning("listener %s: certificates or CRLs do not load: %s", ln.name, e)
                    if ln.client_crl_pem:   # never by its last context, which may not check revocation
                        self._forget(ln.name)
                    continue
                self.contexts[ln.name], self._fingerprints[ln.name] = ctx, fp
                self.minimum[id(ctx)] = ctx.minimum_version
            if ln.name in self.contexts:
                self.group[id(self.contexts[ln.name])] = listener_group(ln)
                self.auth[id(self.contexts[ln.name])] = (ln.client_auth, tuple(ln.client_sans))
                self.pins[id(self.contexts[ln.name])] = (tuple(ln.client_spki_sha256), tuple(ln.client_cert_sha256)) \
                    if ln.client_auth else ((), ())
        names = {ln.name for ln in port.listeners}
        for gone in set(self.contexts) - names:
            self._forget(gone)

    def _forget(self, name: str) -> None:
        """Serve listener `name` no more: a client whose SNI selects it fails its handshake."""
        ctx = self.contexts.pop(name, None)
        if ctx is not None:
            for by_context in (self.minimum, self.group, self.auth, self.pins):
                by_context.pop(id(ctx), None)
        self._fingerprints.pop(name, None)

    def base_context(self) -> ssl.SSLContext:
        base = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        base.minimum_version = ssl.TLSVersion.TLSv1_2
        base.set_alpn_protocols(ALPN)
        _mutual_port(base, self.mutual)

        def pick(sslobj: ssl.SSLObject, server_name: str | None, _ctx: ssl.SSLContext) -> int | None:
            ln = self.port.listener_for_sni(server_name)
            ctx = self.contexts.get(ln.name) if ln is not None else None
            if ctx is None:
                log.info("TLS handshake for %r on port %d refused: no listener serves that name",
                         server_name, self.port.port)
                return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
            sslobj.context = ctx
            return None

        base.sni_callback = pick
        self.base = base
        return base

    def admitted(self, transport: asyncio.BaseTransport) -> bool:
        """After the handshake: is the negotiated version at least the chosen listener's minimum?"""
        obj = transport.get_extra_info("ssl_object")
        if obj is None:
            return True
        want = self.minimum.get(id(obj.context), ssl.TLSVersion.TLSv1_2)
        got = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}.get(obj.version() or "")
        if got is None or got < want:
            log.info("TLS connection on port %d closed: below the listener's minimum TLS version", self.port.port)
            return False
        auth, wanted = self.auth.get(id(obj.context), ("", ()))
        if not auth:
            return True
        if obj.session_reused:      # never issued on this port (`_mutual_port`): its certificate is unchecked here
            log.info("TLS connection on port %d closed: a resumed session on a mutual-TLS listener", self.port.port)
            return False
        cert = obj.getpeercert()        # verified against the listener's CA in the handshake, if sent
        if not cert:
            if auth == "required":
                log.info("TLS connection on port %d closed: no client certificate (mutual TLS)", self.port.port)
                return False
            return True                 # OPTIONAL_MUTUAL: a client without a certificate is served
        if not san_allowed(cert, wanted):
            log.info("TLS connection on port %d closed: the client certificate names none of %s",
                     self.port.port, ", ".join(wanted))
            return False
        spki, digests = self.pins.get(id(obj.context), ((), ()))
        if not pin_allowed(obj.getpeercert(binary_form=True) or b"", spki, digests):
            # Envoy fails the handshake; Python's ssl has no verify callback, so the client sees
            # the connection closed right after it, before a byte of HTTP is read
            log.info("TLS connection on port %d closed: the client certificate matches no "
                     "verifyCertificateSpki/verifyCertificateHash pin", self.port.port)
            return False
        return True


class _Accepted(Plug):
    """An accepted connection: builds its `Downstream` from the socket, then goes to the engine."""

    def __init__(self, port: _Port, serve: Serve) -> None:
        super().__init__()
        self._port, self._serve = port, serve

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if not self._port.listeners.admit(transport):
            transport.abort()
            return
        if not self._port.admitted(transport):
            transport.close()
            return
        peer = transport.get_extra_info("peername") or ("", 0)
        obj = transport.get_extra_info("ssl_object")
        # HTTPS: the listener group whose context the SNI callback swapped in; "" on plain HTTP.
        # An unknown context (no callback ran) gets a group no Host selects: 404/421, not a route.
        group = "" if obj is None else self._port.group.get(id(obj.context), "-")
        # `edge`: a client from outside the mesh, whose headers the engine sanitizes (waypoint/http/edge.py)
        mutual = obj is not None and self._port.auth.get(id(obj.context), ("",))[0]
        der = obj.getpeercert(binary_form=True) if mutual else None
        local = (transport.get_extra_info("sockname") or ("",))[0]
        self._serve(self, Downstream(source_ip=peer[0], destination_port=self._port.port.port, listener=group,
                                     local_ip=local, edge="http" if obj is None else "https",
                                     client_cert=client_cert_element(der) if der else ""))


class _L4Accepted(asyncio.Protocol):
    """A connection on a TLS (passthrough) or TCP port: on TCP relayed at once; on TLS once its
    ClientHello named a host a TLSRoute serves, else closed."""

    def __init__(self, port: _Port, relay: Relay) -> None:
        self._port, self._relay = port, relay
        self._buffer = bytearray()          # everything read, handed over with the connection
        self._hello = clienthello.HelloReader()
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._peer = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._port.listeners.admit(transport):
            transport.abort()
            return
        self._transport = transport  # type: ignore[assignment]
        self._peer = (transport.get_extra_info("peername") or ("", 0))[0]
        if self._port.port.protocol == "TCP":
            self._hand_over(self._port.port.l4_host(None), b"")
            return
        self._timer = asyncio.get_running_loop().call_later(HELLO_TIMEOUT, self._refuse, "no ClientHello in time")

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        v = self._hello.feed(data)
        if isinstance(v, clienthello.Malformed):
            self._refuse(v.reason)
        elif isinstance(v, clienthello.Hello):
            host = self._port.port.l4_host(v.server_name)
            if host is None:
                self._refuse(f"no TLSRoute serves {v.server_name or 'a client without SNI'}")
            else:
                self._hand_over(host, bytes(self._buffer))

    def eof_received(self) -> bool:
        self._refuse("closed before its ClientHello")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _refuse(self, why: str) -> None:
        self._cancel()
        log.info("connection from %s on port %d (%s) closed: %s", self._peer, self._port.port.port,
                 self._port.port.protocol, why)
        if self._transport is not None:
            self._transport.abort()

    def _hand_over(self, host: str | None, early: bytes) -> None:
        self._cancel()
        assert self._transport is not None
        if host is None:
            self._refuse("no TCPRoute attached to the listener")
            return
        # the address the client connected to is the connection's destination, as Envoy's network
        # filters read it (the downstream local address): the access log's downstream_local_address,
        # and the destination a CUSTOM policy's TCP check names (waypoint/authz/extauthz_tcp.py)
        local = (self._transport.get_extra_info("sockname") or ("",))[0]
        self._relay(self._transport, Downstream(source_ip=self._peer, destination_ip=local,
                                                destination_port=self._port.port.port, hostname=host), early)


class IngressListeners:
    def __init__(self, address: str, serve: Serve, relay: Relay, reuse_port: bool = False,
                 max_connections: int | None = None, pending: PendingHandshakes | None = None,
                 max_per_source: int = 0) -> None:
        self.address = address
        self.max_connections = max_connections
        self.max_per_source = max_per_source            # 0: no bound per source
        self.by_source: dict[str, set[asyncio.BaseTransport]] = {}
        self.pending = pending if pending is not None else PendingHandshakes()     # over all HTTPS ports
        self.open: set[asyncio.BaseTransport] = set()
        self._admitted = 0
        self.overloaded = 0             # connections aborted because `max_connections` were open
        self.reuse_port = reuse_port        # a worker: its siblings bind the same ports (waypoint/workers.py)
        self.serve = serve
        self.relay = relay
        self.ports: dict[int, _Port] = {}
        self._lock = asyncio.Lock()
        self.binds = BindState()                        # bound and failing ports, for the status report
        self.on_change: Callable[[], None] = lambda: None   # a port's bind outcome changed
        self.retry = BIND_RETRY
        self._want: dict[int, IngressPort] = {}         # what the config asks for now
        self._retries: dict[int, asyncio.Task[None]] = {}
        self._rng = random.Random()

    def admit(self, transport: asyncio.BaseTransport) -> bool:
        """Count `transport` in, unless `max_connections` are open, or `max_per_source` from its
        source (see the module docstring)."""
        limit, per = self.max_connections, self.max_per_source
        if limit is None and not per:
            return True
        self._admitted += 1
        if self._admitted % PRUNE_EVERY == 0 or limit is not None and len(self.open) >= limit:
            self.open = {t for t in self.open if not t.is_closing()}
            self.by_source = {k: alive for k, v in self.by_source.items()
                              if (alive := {t for t in v if t in self.open})}
            if limit is not None and len(self.open) >= limit:
                self.overloaded += 1
                refused_at_bound(self.overloaded, "ingress", limit, "aborted")
                return False
        if per:
            source = peer_key((transport.get_extra_info("peername") or ("",))[0])
            mine = self.by_source.get(source)
            if mine is not None and len(mine) >= per:
                mine = self.by_source[source] = {t for t in mine if not t.is_closing()}
                if len(mine) >= per:
                    self.overloaded += 1
                    refused_at_bound(self.overloaded, f"ingress source {source}", per, "aborted", "per_source")
                    return False
            self.by_source.setdefault(source, set()).add(transport)
        self.open.add(transport)
        return True

    async def update(self, view: IngressView) -> None:
        async with self._lock:
            self._want = dict(view.ports)
            changed = False
            for number in list(self.ports):
                p = self.ports[number]
                if number not in view.ports or view.ports[number].protocol != p.port.protocol:
                    await self._close(number)
            for number in [n for n in self.binds.failed if n not in view.ports]:
                await cancel(self._retries.pop(number, None))
                changed = self.binds.forget(number) or changed
            for number, ip in sorted(view.ports.items()):
                for name in ip.conflicts:
                    log.warning("listener %s on port %d left out: port %d serves %s", name, number, number, ip.protocol)
                if number in self.ports:
                    self.ports[number].refresh(ip)
                    continue
                changed = await self._bind(ip) or changed
        if changed:
            self.on_change()

    async def _bind(self, ip: IngressPort) -> bool:
        """Open `ip`'s port (under the lock); a failure is recorded and retried. True when the
        bind state changed."""
        p = _Port(ip, self)
        p.refresh(ip)
        names = [ln.name for ln in ip.listeners]
        try:
            await self._open(p)
        except OSError as e:
            why = describe(self.address, ip.port, e)
            changed = self.binds.failed_bind(ip.port, ip.protocol, names, why)
            if changed:         # logged once per failure, not at every retry
                log.warning("listener(s) %s on port %d (%s) serve nothing: %s; retrying with backoff",
                            ", ".join(names), ip.port, ip.protocol, why)
            task = self._retries.get(ip.port)
            if task is None or task.done():
                self._retries[ip.port] = asyncio.create_task(self._retry(ip.port), name=f"ingress-bind:{ip.port}")
            return changed
        self.ports[ip.port] = p
        healed = self.binds.ok(ip.port, ip.protocol, names)
        log.info("ingress listening on %s:%d (%s)%s", self.address, ip.port, ip.protocol,
                 " after failing to bind" if healed else "")
        return True

    async def _retry(self, number: int) -> None:
        """Bind `number` again after the backoff, until it binds or the Gateway drops the port."""
        while True:
            failure = self.binds.failed.get(number)
            if failure is None:
                return
            await asyncio.sleep(self.retry.delay(failure.attempts, self._rng.random()))
            async with self._lock:
                ip = self._want.get(number)
                if ip is None or number in self.ports:
                    return
                changed = await self._bind(ip)
                bound = number in self.ports
            if changed:
                self.on_change()
            if bound:
                return

    async def _open(self, p: _Port) -> None:
        sock = socket.socket(socket.AF_INET6 if ":" in self.address else socket.AF_INET, socket.SOCK_STREAM,
                             socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.bind((self.address, p.port.port))
            sock.listen(LISTEN_BACKLOG)
            sock.setblocking(False)
            if p.port.protocol in L4_PROTOCOLS:
                def factory() -> asyncio.Protocol:
                    return _L4Accepted(p, self.relay)
            else:
                def factory() -> asyncio.Protocol:
                    return _Accepted(p, self.serve)
            if p.port.protocol == "HTTPS":
                p.handshakes = Handshakes(factory, p.base_context(), HANDSHAKE_TIMEOUT, self.pending,
                                          f"ingress port {p.port.port}")
                p.accept = AcceptLoop(sock, p.handshakes.accepted, HANDSHAKE_TIMEOUT)
                p.accept.start()
                return
            # backlog: create_server listen()s again, with its own default of 100 unless told
            p.server = await asyncio.get_running_loop().create_server(factory, sock=sock, backlog=LISTEN_BACKLOG)
        except BaseException:
            sock.close()
            raise

    async def _close(self, number: int) -> None:
        p = self.ports.pop(number)
        self.binds.forget(number)
        if p.server is not None:
            p.server.close()
        if p.accept is not None:
            p.accept.close()
        if p.handshakes is not None:
            p.handshakes.abort()
        log.info("ingress stopped listening on port %d", number)

    async def close(self) -> None:
        async with self._lock:
            self._want = {}
            for number in list(self._retries):
                await cancel(self._retries.pop(number))
            for number in list(self.ports):
                await self._close(number)
