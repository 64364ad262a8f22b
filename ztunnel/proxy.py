"""Connection handlers: what ztunnel does with a captured connection. The asyncio edge.

Outbound (15001): read the original destination, let `routing.decide` pick the route, then either
open an HBONE tunnel (mTLS as the *source pod's* identity, dialled from inside the source pod's
netns so it leaves with the pod's IP) or pass the bytes through as plain TCP.
Inbound HBONE (15008): TLS is terminated with the *destination pod's* certificate (each listener
belongs to one pod); `admission.admit_hbone` decides; the tunnel is delivered to the app from the
client's own IP.
Inbound plaintext (15006): the TC program steered it here; its local address *is* the original
destination. `admission.admit_plaintext` applies PeerAuthentication and L4 policy, then delivery
as above.

Every connection ends in one access-log line (with `error` and `policy` when refused) and in the
Istio TCP metrics; a refused connection is reset (RST), so the client fails at once, not at its
timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import time
from collections.abc import Callable, Coroutine
from typing import Any

from ambit.accept import BACKOFFS
from ambit.configclient import ConfigUpdate
from ambit.dataplane import tls
from ambit.dataplane.connect import connect, connect_finished, connect_started
from ambit.dataplane.gctune import GCStats
from ambit.dataplane.hbone import (
    HBONEClientPool,
    HBONEConnectError,
    HBONEConnection,
    HBONEServer,
    HBONEStream,
    PoolKey,
)
from ambit.dataplane.hbone.limits import CERTIFICATE_WAITS, DEFENSES, REFUSED, ConnLimiter, PendingHandshakes
from ambit.dataplane.identity import CertificateUnavailable, IdentityManager
from ambit.dataplane.identity.wait import IdentityGate
from ambit.dataplane.keepalive import apply as apply_keepalive
from ambit.dataplane.origdst import original_dst
from ambit.dataplane.relay import Leg, TCPRelay, TunnelRelay
from ambit.dataplane.settings import TunnelSettings
from ambit.dataplane.telemetry.accesslog import AccessLogSink, ConnRecord, PolicySink, StreamSink
from ambit.dataplane.telemetry.health import HealthCollector
from ambit.dataplane.telemetry.metrics import FLAG_CONNECT, FLAG_DENY, MUTUAL_TLS, NONE, ConnLabels, Metrics
from ambit.model import Authorization, PeerAuthn, Service, TcpKeepalive, Workload
from ambit.telemetry import CLIENT, SERVER
from ambit.telemetryconfig import AccessLogConfig
from ambit.telemetrymetrics import DEFAULT as DEFAULT_METRICS
from ambit.telemetrymetrics import MetricsConfig
from ambit.zds import PodInfo
from ztunnel import admission, routing
from ztunnel.connbook import ConnBook, reset
from ztunnel.dns.server import DnsProxy
from ztunnel.limits import ProxyLimits
from ztunnel.meshstate import MeshState
from ztunnel.pods import PodProxy, PodRegistry

log = logging.getLogger("ambit.ztunnel.proxy")
OriginalDst = Callable[[socket.socket], tuple[str, int]]
# The longest a policy update's re-check of open connections holds the event loop at a time
# (`Proxy._recheck_admitted`): a slice inside the config apply, then slices between other work.
RECHECK_SLICE = 0.02


async def open_from(sock_factory: Callable[[], socket.socket], dst: tuple[str, int], timeout: float,
                    keepalive: TcpKeepalive | None = None) -> Leg:
    """Connect a socket made by `sock_factory` (in a pod's netns) to `dst`; a relay leg on it, with
    `keepalive` (ztunnel's `--keepalive*`) when it leaves the node."""
    loop = asyncio.get_running_loop()
    s = sock_factory()
    try:
        apply_keepalive(s, keepalive)
        if not connect_started(s, dst):     # a local app: connected already, nothing to wait for
            async with asyncio.timeout(timeout):    # not wait_for: no extra task per connection
                await connect_finished(s)
        _, leg = await loop.create_connection(Leg, sock=s)
    except BaseException:
        s.close()
        raise
    return leg


async def resolve(host: str, port: int, timeout: float) -> tuple[str, int]:
    """The first TCP address `host` resolves to (the node's resolver, bounded by `timeout`)."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout):
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    if not infos:
        raise OSError(f"{host}: no address")
    addr = infos[0][4]
    return str(addr[0]), int(addr[1])


def gone(client: Leg) -> None:
    """A captured connection the client reset before its handler ran (the kernel no longer knows
    its peer): nothing to serve or to log. Without this check every such connection, which any pod
    can make at will, ended in an ERROR traceback ("Task exception was never retrieved")."""
    log.debug("captured connection reset by the client before it was handled")
    reset(client)


def traceparent() -> str:
    """A new W3C trace context for the tunnel (not sampled: ztunnel starts no spans itself)."""
    ids = os.urandom(24).hex()      # one getrandom() for both ids: trace (16 bytes) and parent (8)
    return f"00-{ids[:32]}-{ids[32:]}-00"


class _PodHBONE:
    """A pod's HBONE server as PodRegistry sees it: `close()` stops accepting at once, then the
    connections get a GOAWAY and a bounded drain in the background."""

    def __init__(self, server: HBONEServer, background: set[asyncio.Task[None]], drain: float) -> None:
        self.server = server
        self._background = background
        self._drain = drain

    def close(self) -> None:
        t = asyncio.ensure_future(self.server.close(grace=self._drain))
        self._background.add(t)
        t.add_done_callback(self._background.discard)


class Proxy:
    """ztunnel's data path for all pods of the node. Without `identities` there is no mTLS: every
    connection passes through in plaintext (the capture-only mode of earlier milestones)."""

    def __init__(self, config: MeshState | None = None, *, identities: IdentityManager | None = None,
                 metrics: Metrics | None = None, trust_domain: str = "cluster.local",
                 tunnel: TunnelSettings | None = None, limits: ProxyLimits | None = None,
                 access_log: AccessLogSink | None = None, original_dst: OriginalDst = original_dst,
                 keepalive: TcpKeepalive | None = None, dns: DnsProxy | None = None) -> None:
        # The mesh config (workloads, services, policies) from the controller; None without one.
        self.config = config
        self.identities = identities
        self.metrics = metrics or Metrics()
        self.trust_domain = trust_domain
        self.tunnel = tunnel or TunnelSettings()
        self.cert_wait = self.tunnel.cert_wait
        # TCP keepalive on the sockets that leave the node: HBONE both ways, plaintext upstreams
        # (ztunnel/settings.py says why); not on a pod's own, local legs.
        self.keepalive = keepalive
        self.otlp_logs: Any = None        # made when an envoyOtelAls provider is first used (_otel)
        self.access_log = access_log or PolicySink(StreamSink(), self.access_log_config, otel=self._otel)
        # How a captured socket's original destination is read (eBPF getsockopt or conntrack);
        # injected so the data path runs in tests without the kernel's capture.
        self.original_dst = original_dst
        self.limits = limits = limits or ProxyLimits()
        # Fairness: one noisy or hostile pod must not exhaust the node's ztunnel (sans-IO counters).
        self.per_identity = ConnLimiter(limits.max_hbone_conns_per_identity, "HBONE connections per identity")
        self.per_source_ip = ConnLimiter(limits.max_plaintext_per_source_ip, "plaintext connections per source IP")
        self.per_dst_pod = ConnLimiter(limits.max_inbound_per_pod, "inbound connections per pod")
        self.per_src_pod = ConnLimiter(limits.max_outbound_per_pod, "outbound connections per pod")
        # TLS handshakes under way on every pod's :15008, process-wide as the caps above are node-wide
        self.pending_handshakes = PendingHandshakes(limits.max_pending_handshakes,
                                                    limits.max_pending_handshakes_per_source)
        self.contexts = tls.ContextCache()
        self.lb = routing.RoundRobin()
        self._background: set[asyncio.Task[None]] = set()
        # The inbound connections open now, each with its admission to decide again when a policy
        # changes (`_recheck_admitted`), by id of their ConnBook (which leaves when it finishes).
        self.admitted: dict[int, ConnBook] = {}
        self._recheck_rest: asyncio.Task[None] | None = None     # a re-check pass going on in slices
        self.pool: HBONEClientPool | None = None
        self.gc_stats: GCStats | None = None    # the collector's pauses, for admin /memory (__main__ sets it)
        if identities is not None:
            self.pool = HBONEClientPool(self._client_context, dial=self._dial, max_streams=limits.hbone_max_streams)
        # The DNS proxy (ztunnel/dns): 127.0.0.1:15053 in every pod's netns; None: not served.
        self.dns = dns
        self.registry = PodRegistry(self.outbound, self.inbound_plaintext,
                                    serve_hbone=self._serve_hbone if identities is not None else None,
                                    serve_dns=dns.serve if dns is not None else None)
        self.registry.listeners.append(self._pod_event)
        if config is not None:
            config.on_change(self._on_config_change)

    # --- identities ---------------------------------------------------------------------------------

    def workload_of(self, pod: PodInfo) -> Workload:
        return admission.pod_workload(self.config, pod, self.trust_domain)

    def access_log_config(self, rec: ConnRecord) -> AccessLogConfig | None:
        """The Telemetry API's access logging for a finished connection: the source workload's as
        CLIENT for outbound, the destination workload's as SERVER for inbound (None: no config or
        unknown workload, the default log)."""
        if self.config is None:
            return None
        outbound = rec.direction == "outbound"
        try:
            ip = routing.parse_addr(rec.src_addr if outbound else rec.dst_addr)[0]
        except ValueError:
            return None
        w = self.config.lookup_workload(ip)
        if w is None:
            return None
        return self.config.access_log_config(w, CLIENT if outbound else SERVER)

    def metrics_config(self, w: Workload, side: str) -> MetricsConfig:
        """The Telemetry API's metrics for the reporting side's workload (source: CLIENT,
        destination: SERVER); the default (every metric, Istio's labels) without a config."""
        return self.config.metrics_config(w, side) if self.config is not None else DEFAULT_METRICS

    def identity_of(self, pod: PodInfo) -> str:
        return self.workload_of(pod).identity

    def _pod_event(self, event: str, proxy: PodProxy) -> None:
        """A pod arrived or left: its pooled connections close when it leaves, and the managed
        identities follow the pods served (`sync_identities`)."""
        if self.identities is None:
            return
        if event == "remove" and self.pool is not None:
            self.pool.close_where(lambda k: k.src_ip == proxy.pod.ip, "source pod left the node")
        self.sync_identities()

    def _on_config_change(self, _view: object, update: ConfigUpdate) -> None:
        """A pod's identity follows its Workload (its service account may change while it is
        served); a policy change applies to the connections already open too."""
        if update.type_url == Workload.TYPE and self.identities is not None:
            self.sync_identities()
        elif update.type_url in (Authorization.TYPE, PeerAuthn.TYPE):
            self._recheck_admitted()

    def _recheck_admitted(self) -> None:
        """Decide every open inbound connection again and cut those no longer allowed, as Istio's
        ztunnel does when policies change (its PolicyWatcher): otherwise a connection admitted
        before a DENY (or STRICT) went on carrying what the policy now refuses for as long as it
        stayed open, a waypoint's pooled upstream connection for ever. Never raises (that would
        NACK the update).

        Each distinct admission (the connection's `recheck_key`: pod, peer, source address,
        port...) is decided once per pass: the connections of one client pod to one port, a
        waypoint's pooled ones above all, share one verdict. The pass runs inside the config apply
        for up to `RECHECK_SLICE` seconds, so the update is ACKed (and `ambit apply --wait`
        returns) with those connections cut; what is left (many distinct sources under many
        policies: 10,000 distinct admissions under 50 policies took 1.5 s, docs/performance.md
        "The cost of the fifteenth set of changes") goes on in slices of that length between
        other work, instead of stalling every connection of the node. A newer policy update starts
        the pass over with its own config."""
        if self._recheck_rest is not None:
            self._recheck_rest.cancel()
            self._recheck_rest = None
        books = list(self.admitted.values())
        verdicts: dict[tuple[Any, ...], admission.Admission] = {}
        at = self._recheck_slice(books, 0, verdicts, RECHECK_SLICE)
        if at < len(books):
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:        # applied outside the event loop (a test, a tool): finish here
                self._recheck_slice(books, at, verdicts, None)
                return
            self._recheck_rest = loop.create_task(self._recheck_later(books, at, verdicts))
            self._background.add(self._recheck_rest)
            self._recheck_rest.add_done_callback(self._background.discard)

    async def _recheck_later(self, books: list[ConnBook], at: int,
                             verdicts: dict[tuple[Any, ...], admission.Admission]) -> None:
        while at < len(books):
            await asyncio.sleep(0)
            at = self._recheck_slice(books, at, verdicts, RECHECK_SLICE)
        self._recheck_rest = None

    def _recheck_slice(self, books: list[ConnBook], at: int, verdicts: dict[tuple[Any, ...], admission.Admission],
                       budget: float | None) -> int:
        """Re-check `books[at:]` until `budget` seconds have passed (None: all); the index to go on from."""
        deadline = None if budget is None else time.monotonic() + budget
        while at < len(books):
            book = books[at]
            at += 1
            if book.revoked is not None or self.admitted.get(id(book)) is not book:
                continue        # refused already (its handler cuts it once its app connection is made), or ended
            try:
                adm = verdicts.get(book.recheck_key) if book.recheck_key else None
                if adm is None and book.recheck is not None:
                    adm = book.recheck()
                    if book.recheck_key:
                        verdicts[book.recheck_key] = adm
                if adm is not None and not adm.allowed:
                    book.revoke(adm)
                    log.info("closed inbound %s -> %s: no longer allowed after a policy update: %s%s",
                             book.rec.src_addr, book.rec.dst_addr, adm.reason,
                             f" [policy {adm.policy}]" if adm.policy else "")
            except Exception:  # noqa: BLE001 - one connection's failure must not NACK the config or spare the others
                log.exception("re-checking inbound %s -> %s after a policy update", book.rec.src_addr,
                              book.rec.dst_addr)
            if deadline is not None and not at % 16 and time.monotonic() >= deadline:
                break
        return at

    def sync_identities(self) -> None:
        """Manage a certificate for exactly the identities the served pods have now: prefetch the new
        ones (the first connection finds a certificate), forget the others. Recomputed from the pods
        rather than tracked per event: a pod whose Workload changed its identity while served would
        otherwise leave its old identity managed for ever, renewing against the CA, listed in
        /certs and, once the CA refuses it, keeping ztunnel NotReady (`certificates_missing`)."""
        ids = self.identities
        if ids is None or self.registry.shutting_down:
            return      # stopping: no pod is "served", but the draining connections still use theirs
        wanted = {self.identity_of(p.pod) for p in self.registry.pods.values()}
        managed = set(ids.identities())
        for ident in managed - wanted:
            ids.forget(ident)
            self.contexts.forget(ident)
        for ident in sorted(wanted - managed):
            try:
                ids.prefetch([ident])
            except Exception as e:  # noqa: BLE001 - one bad identity must not stop the others (or NACK a config)
                log.warning("cannot manage a certificate for %s: %s", ident, e)

    async def _client_context(self, identity: str) -> ssl.SSLContext:
        assert self.identities is not None
        return self.contexts.client(await self.identities.get(identity, self.cert_wait))

    async def _dial(self, key: PoolKey, port: int) -> socket.socket:
        """TCP to the HBONE peer from inside the source pod's netns (the packets carry its IP)."""
        pod = self.registry.by_ip.get(key.src_ip)
        if pod is None:
            raise ConnectionError(f"source pod {key.src_ip} is no longer served on this node")
        s = pod.socket()
        try:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            async with asyncio.timeout(self.tunnel.connect_timeout):
                await connect(s, (key.dst_ip, port))
        except BaseException:
            s.close()
            raise
        return s

    # --- outbound ----------------------------------------------------------------------------------------

    def _book(self, rec: ConnRecord, labels: ConnLabels | None = None, client: Leg | None = None) -> ConnBook:
        return ConnBook(rec, self.metrics, self.access_log, labels=labels, client=client)

    async def outbound(self, pod: PodProxy, client: Leg) -> None:
        sock: Any = client.get_extra_info("socket")
        peer: Any = client.get_extra_info("peername")
        if peer is None:
            gone(client)
            return
        c = self._book(ConnRecord("outbound", src_addr=f"{pod.pod.ip}:{peer[1]}", dst_addr="",
                                  src_workload=pod.pod.name, src_namespace=pod.pod.namespace,
                                  route=routing.PASSTHROUGH), client=client)
        rec = c.rec
        try:
            if not c.hold(self.per_src_pod, pod.pod.uid):
                rec.error = f"source pod has {self.per_src_pod.limit} outbound connections open (limit)"
                log.warning("outbound from %s/%s refused: %s", pod.pod.namespace, pod.pod.name, rec.error)
                return
            dst = self.original_dst(sock)
            rec.dst_addr = routing.format_addr(*dst)
            if dst == sock.getsockname()[:2]:
                raise OSError("original destination unknown (is ztunnel in its own cgroup?)")
            route = (routing.decide(self.config, dst[0], dst[1], self.lb, pod.pod.namespace, pod.pod.node,
                                    pod.pod.uid)
                     if self.config is not None else routing.Route(routing.PASSTHROUGH, dst, dst))
            rec.route = route.kind
            if route.workload is not None:
                rec.dst_workload, rec.dst_namespace = route.workload.name, route.workload.namespace
            if route.service is not None:
                rec.dst_service = route.service.hostname
            if route.kind == routing.REFUSE:
                if route.reason.startswith("outboundTrafficPolicy"):     # counted, as Istio's BlackHoleCluster
                    c.labels = ConnLabels("source", destination_service=routing.BLACKHOLE,
                                          destination_service_name=routing.BLACKHOLE) \
                        .source_from(self.workload_of(pod.pod))
                    c.metrics_config = self.metrics_config(self.workload_of(pod.pod), CLIENT)
                    rec.dst_service = routing.BLACKHOLE
                c.refuse(route.reason, FLAG_DENY)
                return
            target = route.target or dst
            if routing.loops_back(target[0], target[1], self.registry.by_ip):
                c.refuse(f"{routing.format_addr(*target)} is a ztunnel listener (would loop back into ztunnel)")
                return
            if route.kind == routing.HBONE and self.pool is None:
                raise ConnectionError(f"{rec.dst_addr} is a mesh workload, but this ztunnel has no identities "
                                      "(no CA configured); refusing to send it plaintext")
            src_wl = self.workload_of(pod.pod)
            hbone = route.kind == routing.HBONE
            if hbone:
                rec.src_identity, rec.dst_identity = src_wl.identity, route.identity
                rec.extra["upstream"] = routing.format_addr(*route.dial) if route.dial else ""
            c.labels = ConnLabels("source", connection_security_policy=MUTUAL_TLS if hbone else NONE) \
                .source_from(src_wl, src_wl.identity if hbone else "") \
                .destination_from(route.workload, route.identity).service_from(route.service)
            c.metrics_config = self.metrics_config(src_wl, CLIENT)
            if hbone:
                assert self.pool is not None and route.dial is not None
                tunnel = await self.pool.connect(
                    src_wl.identity, route.identity, route.dial[0], route.authority,
                    forwarded_for=pod.pod.ip, traceparent=traceparent(), src_ip=pod.pod.ip,
                    keepalive=self.keepalive, timeout=self.tunnel.connect_timeout + self.cert_wait)
                c.up()
                c.hand_off(TunnelRelay(client, tunnel), pod.conns)
            else:
                assert route.dial is not None
                dial = route.dial
                if route.resolve:       # a ServiceEntry's DNS endpoint: resolved here, from the node
                    dial = await resolve(route.resolve, dial[1], self.tunnel.connect_timeout)
                    rec.extra["upstream"] = routing.format_addr(*dial)
                upstream = await open_from(pod.socket, dial, self.tunnel.connect_timeout, self.keepalive)
                c.up()
                c.hand_off(TCPRelay(client, upstream), pod.conns)
        except CertificateUnavailable as e:
            c.refuse(f"no client certificate: {e}")
            log.warning("outbound %s -> %s refused: %s", rec.src_addr, rec.dst_addr, rec.error)
        except HBONEConnectError as e:
            c.refuse(f"HBONE {e.status or 'connect'}: {e.reason}",
                     FLAG_DENY if e.status in (401, 403) else FLAG_CONNECT,
                     e.headers.get(admission.POLICY_HEADER, ""))
        except (TimeoutError, OSError, ssl.SSLError) as e:
            c.refuse(f"{type(e).__name__}: {e}", FLAG_CONNECT)
        finally:
            if not c.relaying:
                c.finish()

    # --- inbound HBONE ---------------------------------------------------------------------------------

    async def _serve_hbone(self, pod: PodProxy, sock: socket.socket) -> _PodHBONE:
        assert self.identities is not None
        identities = self.identities

        def server_context() -> ssl.SSLContext:
            # Called per handshake, synchronously (OpenSSL's servername callback): no waiting here.
            # The pod's certificate was prefetched when it arrived; a handshake that came before it
            # waited for it first (the gate below), so this refuses only once that wait ran out.
            ident = self.identity_of(pod.pod)
            cert = identities.current(ident)
            if cert is None:
                raise CertificateUnavailable(ident, "no server certificate yet")
            return self.contexts.server(cert)

        def on_connect(st: HBONEStream, peer_identity: str, authority: str,
                       headers: dict[str, str]) -> Coroutine[Any, Any, None]:
            # The coroutine itself, not an `async def` awaiting it: one frame fewer per tunnel being
            # set up (docs/performance.md, §66).
            return self.inbound_hbone(pod, st, peer_identity, authority, headers)

        lim = self.limits
        server = HBONEServer(
            sock, server_context, on_connect, handshake_timeout=lim.tls_handshake_timeout,
            preface_timeout=lim.hbone_preface_timeout, idle_timeout=lim.hbone_idle_timeout,
            per_identity=self.per_identity, pending=self.pending_handshakes,
            certificate_gate=IdentityGate(identities, lambda: self.identity_of(pod.pod)), keepalive=self.keepalive,
            connection_factory=lambda: HBONEConnection(client_side=False, max_concurrent_streams=lim.hbone_max_streams))
        await server.start()
        return _PodHBONE(server, self._background, self.tunnel.drain)

    async def inbound_hbone(self, pod: PodProxy, st: HBONEStream, peer_identity: str, authority: str,
                            headers: dict[str, str]) -> None:
        """A tunnel has no client socket of ours: refusals are HTTP statuses on the stream."""
        dest = self.workload_of(pod.pod)
        tls_peer = st.get_extra_info("peername") or ("", 0)
        c = self._book(
            ConnRecord("inbound", src_addr="", dst_addr=authority, src_identity=peer_identity,
                       dst_workload=pod.pod.name, dst_namespace=pod.pod.namespace, dst_identity=dest.identity,
                       route="inbound-hbone"),
            ConnLabels("destination", source_principal=peer_identity, connection_security_policy=MUTUAL_TLS)
            .destination_from(dest, dest.identity).service_from(self._service_of(dest)))
        c.metrics_config = self.metrics_config(dest, SERVER)
        rec, labels = c.rec, c.labels
        assert labels is not None
        task = asyncio.current_task()
        if task is not None:
            pod.conns.add(task)     # so draining the pod waits for (then cuts) its tunnels
        try:
            if st.is_closed:
                rec.error = f"tunnel gone before it was served: {st.error or 'closed'}"
                return
            if not c.hold(self.per_dst_pod, pod.pod.uid):
                c.refuse(f"503 destination pod has {self.per_dst_pod.limit} inbound connections open (limit)",
                         FLAG_CONNECT)
                st.respond(503, "destination pod is at its connection limit")
                return
            adm = admission.admit_hbone(self.config, pod.pod, dest, peer_identity, authority, headers, tls_peer[0])
            rec.src_addr = f"{adm.src_ip or tls_peer[0]}:0"
            if adm.src_workload is not None:
                rec.src_workload, rec.src_namespace = adm.src_workload.name, adm.src_workload.namespace
                labels.source_from(adm.src_workload)
            if adm.audit:
                rec.extra["audit"] = list(adm.audit)
            if not adm.allowed:
                c.refuse(f"{adm.status} {adm.reason}", FLAG_DENY, adm.policy)
                log.warning("denied HBONE %s (%s) -> %s/%s %s: %s%s", rec.src_addr, peer_identity, pod.pod.namespace,
                            pod.pod.name, authority, adm.reason, f" [policy {adm.policy}]" if adm.policy else "")
                st.respond(adm.status, adm.reason,
                           [(admission.POLICY_HEADER, adm.policy)] if adm.policy else None)
                return
            if routing.loops_back(pod.pod.ip, adm.dst_port, (pod.pod.ip,)):
                c.refuse(f"400 port {adm.dst_port} is a ztunnel listener (would loop back into ztunnel)", FLAG_DENY)
                st.respond(400, f"port {adm.dst_port} is not a destination")
                return
            c.track(lambda: admission.admit_hbone(self.config, pod.pod, self.workload_of(pod.pod), peer_identity,
                                                  authority, headers, tls_peer[0]), self.admitted,
                    ("hbone", id(pod.pod), peer_identity, authority, headers.get("forwarded"), tls_peer[0]))
            try:
                app = await self._deliver(pod, st, adm.src_ip, adm.dst_port)
            except (TimeoutError, OSError) as e:
                c.refuse(f"503 cannot reach the app: {type(e).__name__}: {e}", FLAG_CONNECT)
                st.respond(503, f"cannot reach {authority}: {e}")
                return
            except asyncio.CancelledError:
                if st.is_closed:
                    rec.error = f"tunnel gone while connecting to the app: {st.error or 'closed'}"
                raise
            local: Any = app.get_extra_info("sockname")
            rec.src_addr = f"{local[0]}:{local[1]}"     # what the app sees as its peer
            if c.revoked is not None:   # a policy update refused it while the app connection was made
                reset(app)
                st.respond(c.revoked.status, c.revoked.reason,
                           [(admission.POLICY_HEADER, c.revoked.policy)] if c.revoked.policy else None)
                return
            try:
                st.respond(200)
            except OSError:
                reset(app)      # the tunnel went away meanwhile: never leave the app connection behind
                raise
            c.up()
            c.hand_off(TunnelRelay(app, st), pod.conns, reverse=True)
        except (TimeoutError, OSError) as e:
            rec.error = rec.error or f"{type(e).__name__}: {e}"
        finally:
            if task is not None:
                pod.conns.discard(task)
            if not c.relaying:
                c.finish()

    async def _deliver(self, pod: PodProxy, st: HBONEStream, src_ip: str, port: int) -> Leg:
        """The app connection for a tunnel. A tunnel reset while it is being made cancels the
        connect; the callback that does it lives only as long as the connect (§66)."""
        task = asyncio.current_task()
        connecting = True

        def cancel_connect() -> None:
            if connecting and task is not None:     # (the callback may run after we moved on)
                task.cancel()
        unregister = st.on_closed(cancel_connect)
        try:
            return await open_from(lambda: pod.delivery_socket(src_ip), (pod.pod.ip, port),
                                   self.tunnel.connect_timeout)
        finally:
            connecting = False
            unregister()

    # --- inbound plaintext -----------------------------------------------------------------------------

    async def inbound_plaintext(self, pod: PodProxy, client: Leg) -> None:
        peer: Any = client.get_extra_info("peername")
        if peer is None:
            gone(client)
            return
        # eBPF (sk_assign): the local address is the original destination; iptables: conntrack.
        local = self.original_dst(client.get_extra_info("socket"))  # type: ignore[arg-type]
        dest = self.workload_of(pod.pod)
        c = self._book(
            ConnRecord("inbound", src_addr=f"{peer[0]}:{peer[1]}", dst_addr=f"{local[0]}:{local[1]}",
                       dst_workload=pod.pod.name, dst_namespace=pod.pod.namespace, route="inbound-plaintext"),
            ConnLabels("destination", connection_security_policy=NONE)
            .destination_from(dest, dest.identity).service_from(self._service_of(dest)),
            client)
        c.metrics_config = self.metrics_config(dest, SERVER)
        rec, labels = c.rec, c.labels
        assert labels is not None
        try:
            for limiter, key in ((self.per_source_ip, peer[0]), (self.per_dst_pod, pod.pod.uid)):
                if not c.hold(limiter, key):
                    log.warning("plaintext %s -> %s/%s refused: %s", rec.src_addr, pod.pod.namespace, pod.pod.name,
                                rec.error)
                    return
            if routing.loops_back(local[0], local[1], (pod.pod.ip, local[0])):
                c.refuse(f"port {local[1]} is a ztunnel listener (would loop back into ztunnel)")
                return
            adm = admission.admit_plaintext(self.config, pod.pod, dest, peer[0], local[1])
            if adm.src_workload is not None:
                rec.src_workload, rec.src_namespace = adm.src_workload.name, adm.src_workload.namespace
                labels.source_from(adm.src_workload)
            if not adm.allowed:
                c.refuse(adm.reason, FLAG_DENY, adm.policy)
                log.warning("denied plaintext %s -> %s/%s %s: %s%s", rec.src_addr, pod.pod.namespace, pod.pod.name,
                            rec.dst_addr, adm.reason, f" [policy {adm.policy}]" if adm.policy else "")
                return
            c.track(lambda: admission.admit_plaintext(self.config, pod.pod, self.workload_of(pod.pod), peer[0],
                                                      local[1]), self.admitted, ("plaintext", id(pod.pod), peer[0], local[1]))
            app = await open_from(lambda: pod.delivery_socket(peer[0]), (local[0], local[1]),
                                  self.tunnel.connect_timeout)
            if c.revoked is not None:   # a policy update refused it while the app connection was made
                reset(app)
                return
            c.up()
            c.hand_off(TCPRelay(client, app), pod.conns)
        except (TimeoutError, OSError) as e:
            c.refuse(f"{type(e).__name__}: {e}", FLAG_CONNECT)
        finally:
            if not c.relaying:
                c.finish()

    # --- helpers ---------------------------------------------------------------------------------------

    def _service_of(self, wl: Workload) -> Service | None:
        """The (first) Service a workload backs: Istio's destination_service*."""
        if self.config is None:
            return None
        for name in sorted(wl.services):
            svc = self.config.view.services.get(name)
            if svc is not None:
                return svc
        return None

    def _otel(self, provider: Any, record: Any) -> None:
        """An access-log record for an envoyOtelAls provider (ambit/dataplane/telemetry/otlp_logs.py)."""
        if self.otlp_logs is None:
            from ambit.dataplane.telemetry.otlp_logs import OtlpLogs
            self.otlp_logs = OtlpLogs()
        self.otlp_logs.submit(provider, record)

    def health(self, client: Any = None) -> HealthCollector:
        """ztunnel's `ambit_*` families (ambit/dataplane/telemetry/health.py), read at scrape time:
        `client` is the config stream client, if any."""
        # `limit` values are short identifiers (alert rules match them), not the limiters' log wording.
        limiters = {"outbound_per_pod": self.per_src_pod, "inbound_per_pod": self.per_dst_pod,
                    "plaintext_per_source_ip": self.per_source_ip, "per_identity": self.per_identity}
        return HealthCollector(
            config=client, certs=self.identities,
            connections=lambda: {"outbound": self.per_src_pod.total(), "inbound": self.per_dst_pod.total()},
            refused=lambda: {**{name: lim.refused for name, lim in limiters.items()},
                             **{k: REFUSED[k] for k in ("preface_timeout", "pending_handshakes",
                                                        "pending_handshakes_per_source")}},
            pool=lambda: sum(self.pool.connections().values()) if self.pool is not None else 0,
            defenses=lambda: dict(DEFENSES), backoffs=lambda: dict(BACKOFFS),
            certificate_waits=lambda: dict(CERTIFICATE_WAITS))

    def connections(self) -> dict[str, Any]:
        """For the admin endpoint: pooled HBONE connections and their open tunnels."""
        if self.pool is None:
            return {"hbone_pool": []}
        streams = self.pool.streams()
        return {"hbone_pool": [
            {"src_identity": k.src_identity, "dst_identity": k.dst_identity, "dst_ip": k.dst_ip,
             "src_ip": k.src_ip, "connections": n, "streams": streams.get(k, 0)}
            for k, n in sorted(self.pool.connections().items(), key=lambda kv: (kv[0].src_ip, kv[0].dst_ip))]}

    async def close(self) -> None:
        if self.otlp_logs is not None:
            await asyncio.to_thread(self.otlp_logs.close)       # what waits is sent (bounded)
        if self.pool is not None:
            await self.pool.close()
        for t in list(self._background):
            with contextlib.suppress(Exception):
                await t
