"""The DNS proxy's endpoints in each pod's netns, and the node-wide proxy they share (asyncio edge).

Every pod ztunnel serves gets 127.0.0.1:15053 over UDP and TCP in its netns, opened with its
other listeners (ztunnel/pods.py) and closed with them; the capture layer redirects the pod's
queries to port 53 there. The client of a query is the pod whose netns it arrived in, so its
namespace decides what it sees (ztunnel/dns/lookup.py), whatever address it came from.

Costs, since ztunnel holds thousands of pods (docs/performance.md): an idle pod costs a datagram
transport and a listening server, with no task; a task exists only while a query waits on the
upstream, and a pod may have at most `max_forwards_per_pod` of those (past it: SERVFAIL at once),
so one pod flooding queries for unknown names cannot exhaust ztunnel or the upstream. A TCP
connection carries any number of length-prefixed queries (RFC 7766: answered as they complete),
closes after `TCP_IDLE` seconds without one, and a pod may hold `MAX_TCP_PER_POD` of them.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ambit.dataplane.ports import LISTEN_BACKLOG
from ambit.dataplane.telemetry.peers import canonical_revision, canonical_service
from ambit.netns import socket_at
from ztunnel import admission
from ztunnel.dns.forwarder import TCP_MAX, Forwarder, SocketFactory, UpstreamError
from ztunnel.dns.metrics import UNKNOWN, DnsMetrics
from ztunnel.meshstate import MeshState
from ztunnel.pods import PodProxy

if TYPE_CHECKING:
    from ztunnel.dns.lookup import Answer, Hosts
    from ztunnel.dns.wire import Query

log = logging.getLogger("ambit.ztunnel.dns")

TTL = 30                    # seconds, Istio's DEFAULT_TTL_SECONDS for the answers served here
TCP_IDLE = 10.0             # seconds a TCP connection may wait for its next query
MAX_TCP_PER_POD = 64        # concurrent TCP connections per pod
MAX_TCP_WRITE_BUFFER = 256 * 1024   # replies a TCP client does not read: past it, the connection is closed


def pod_sockets(proxy: PodProxy) -> SocketFactory:
    """Sockets in the pod's netns, for the queries forwarded on its behalf."""
    def make(family: int, type_: int) -> socket.socket:
        s = socket_at(proxy.netns_fd, family, type_, 0)
        s.setblocking(False)
        return s
    return make


class DnsProxy:
    """What every pod's endpoints share: the mesh config, the upstream forwarder, the metrics."""

    def __init__(self, config: MeshState | None, forwarder: Forwarder, metrics: DnsMetrics, *,
                 cluster_domain: str = "cluster.local", trust_domain: str = "cluster.local",
                 max_forwards_per_pod: int = 128, sockets: Callable[[PodProxy], SocketFactory] = pod_sockets,
                 rng: random.Random | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.forwarder = forwarder
        self.metrics = metrics
        self.cluster_domain = cluster_domain
        self.trust_domain = trust_domain
        self.max_forwards = max_forwards_per_pod
        self.sockets = sockets
        self._rng = rng or random.Random()
        self.clock = clock
        self._hosts: tuple[object, Hosts | None] = (None, None)

    def hosts(self) -> Hosts:
        """The host index of the current config, rebuilt when its Services change."""
        from ztunnel.dns.lookup import Hosts
        services = self.config.view.services if self.config is not None else {}
        if self._hosts[1] is None or self._hosts[0] is not services:
            self._hosts = (services, Hosts.of(services.values()))
        return self._hosts[1]

    async def serve(self, proxy: PodProxy, udp: socket.socket, tcp: socket.socket) -> PodDns:
        """Serve a pod's DNS sockets (bound in its netns; `tcp` listening); returns what closes them."""
        pod = PodDns(self, proxy)
        await pod.start(udp, tcp)
        return pod

    def source_labels(self, proxy: PodProxy) -> tuple[str, str]:
        """The client's (canonical service, canonical revision), for the metrics."""
        w = admission.pod_workload(self.config, proxy.pod, self.trust_domain)
        return canonical_service(w) or UNKNOWN, canonical_revision(w) or UNKNOWN

    def answer(self, namespace: str, query: Query) -> Answer | None:
        """The mesh's answer to `query` from a pod in `namespace`; None: forward it."""
        from ztunnel.dns.lookup import IN, domain_labels, resolve
        if query.qname is None or query.rdclass != IN:
            return None
        return resolve(self.hosts(), namespace, query.qname, query.rdtype, domain_labels(self.cluster_domain),
                       self._rng.shuffle)


class PodDns:
    """One pod's UDP and TCP endpoints, and the forwarded queries under way for it."""

    def __init__(self, node: DnsProxy, proxy: PodProxy) -> None:
        self.node = node
        self.proxy = proxy
        self.make = node.sockets(proxy)
        self.udp: asyncio.DatagramTransport | None = None
        self.server: asyncio.Server | None = None
        self.tcp_conns: set[_TcpConn] = set()
        self.forwards: set[asyncio.Task[None]] = set()
        self.closed = False

    async def start(self, udp: socket.socket, tcp: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        udp.setblocking(False)
        tcp.setblocking(False)
        try:
            self.udp, _ = await loop.create_datagram_endpoint(lambda: _Udp(self), sock=udp)
            self.server = await loop.create_server(lambda: _TcpConn(self), sock=tcp, backlog=LISTEN_BACKLOG)
        except BaseException:
            self.close()
            udp.close()
            tcp.close()
            raise

    def close(self) -> None:
        """Stop serving at once: the sockets close and queries under way are abandoned (the
        client's resolver asks again, reaching the other ztunnel of a surge roll, if any)."""
        self.closed = True
        if self.udp is not None:
            self.udp.close()
        if self.server is not None:
            self.server.close()
        for c in list(self.tcp_conns):
            c.close()
        for t in list(self.forwards):
            t.cancel()

    # -- one query ---------------------------------------------------------------------------------
    def handle(self, wire: bytes, protocol: str, reply: Callable[[bytes], None]) -> None:
        """Answer, forward or drop one message; `reply` sends the client its answer (now or later).
        The DNS codec (dnspython) is imported here, at a node's first query (ztunnel/dns/upstream.py)."""
        from ztunnel.dns.wire import SERVFAIL, answer_reply, error_reply, parse
        parsed = parse(wire)
        if parsed is None:
            return
        if isinstance(parsed, bytes):
            reply(parsed)
            return
        query = parsed
        tcp = protocol == "tcp"
        max_size = TCP_MAX if tcp else query.udp_limit
        node = self.node
        labels = (query.type_name, protocol, *node.source_labels(self.proxy))
        node.metrics.requests.labels(*labels).inc()
        ns = self.proxy.pod.namespace
        ans = node.answer(ns, query)
        if ans is not None:
            _access(self.proxy, query, "success" if ans.addresses else "no records", len(ans.addresses))
            reply(answer_reply(query, ans, TTL, max_size))
            return
        node.metrics.upstream_requests.labels(*labels).inc()
        if node.max_forwards and len(self.forwards) >= node.max_forwards:
            node.metrics.upstream_failures.labels(*labels).inc()
            _access(self.proxy, query, f"refused (over {node.max_forwards} forwards under way)", 0)
            reply(error_reply(query.message, SERVFAIL, max_size))
            return
        task = asyncio.ensure_future(self._forward(query, tcp, max_size, labels, reply))
        self.forwards.add(task)
        task.add_done_callback(self.forwards.discard)

    async def _forward(self, query: Query, tcp: bool, max_size: int, labels: tuple[str, ...],
                       reply: Callable[[bytes], None]) -> None:
        from ztunnel.dns.wire import SERVFAIL, error_reply
        node = self.node
        start = node.clock()
        try:
            out = await node.forwarder.forward(query, tcp, self.make, max_size)
            _access(self.proxy, query, "forwarded", -1)
        except UpstreamError as e:
            node.metrics.upstream_failures.labels(*labels).inc()
            _access(self.proxy, query, f"forwarding failed ({e})", 0)
            out = error_reply(query.message, SERVFAIL, max_size)
        except Exception:   # noqa: BLE001 - a bug must still answer the pod, not leave it to time out
            log.exception("forwarding a DNS query of pod %s/%s failed", self.proxy.pod.namespace, self.proxy.pod.name)
            node.metrics.upstream_failures.labels(*labels).inc()
            out = error_reply(query.message, SERVFAIL, max_size)
        finally:
            node.metrics.upstream_duration.labels(*labels).observe(node.clock() - start)
        if not self.closed:
            reply(out)


def _access(proxy: PodProxy, query: Query, result: str, endpoints: int) -> None:
    """Istio's DNS access line (its `dns` target, at debug): who asked what, and what came of it."""
    if log.isEnabledFor(logging.DEBUG):
        log.debug("dns src.workload=%s src.namespace=%s query=%s domain=%s result=%r endpoints=%s",
                  proxy.pod.name, proxy.pod.namespace, query.type_name.upper(), query.name_text, result,
                  endpoints if endpoints >= 0 else "-")


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, pod: PodDns) -> None:
        self.pod = pod

    def datagram_received(self, data: bytes, addr: Any) -> None:
        transport = self.pod.udp

        def reply(wire: bytes) -> None:
            if transport is not None and not transport.is_closing():
                transport.sendto(wire, addr)
        try:
            self.pod.handle(data, "udp", reply)
        except Exception:   # noqa: BLE001 - one bad datagram must not stop the pod's DNS
            log.exception("DNS query from pod %s/%s failed", self.pod.proxy.pod.namespace, self.pod.proxy.pod.name)

    def error_received(self, exc: Exception) -> None:
        log.debug("DNS UDP error in pod %s/%s: %s", self.pod.proxy.pod.namespace, self.pod.proxy.pod.name, exc)


class _TcpConn(asyncio.Protocol):
    """A TCP client: 2-byte length-prefixed queries, replies in the order they are ready."""

    def __init__(self, pod: PodDns) -> None:
        self.pod = pod
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.idle: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.pod.closed or len(self.pod.tcp_conns) >= MAX_TCP_PER_POD:
            transport.close()
            return
        self.pod.tcp_conns.add(self)
        self._arm()

    def _arm(self) -> None:
        if self.idle is not None:
            self.idle.cancel()
        self.idle = asyncio.get_running_loop().call_later(TCP_IDLE, self.close)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self._arm()
        while len(self.buf) >= 2:
            size = int.from_bytes(self.buf[:2], "big")
            if len(self.buf) < 2 + size:
                break
            msg = bytes(self.buf[2:2 + size])
            del self.buf[:2 + size]
            try:
                self.pod.handle(msg, "tcp", self.send)
            except Exception:   # noqa: BLE001 - as for UDP
                log.exception("DNS query over TCP from pod %s/%s failed", self.pod.proxy.pod.namespace,
                              self.pod.proxy.pod.name)
                self.close()
                return

    def send(self, wire: bytes) -> None:
        t = self.transport
        if t is None or t.is_closing():
            return
        t.write(len(wire).to_bytes(2, "big") + wire)
        if t.get_write_buffer_size() > MAX_TCP_WRITE_BUFFER:
            self.close()        # the client is not reading its replies
            return
        self._arm()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.idle is not None:
            self.idle.cancel()
        self.pod.tcp_conns.discard(self)
