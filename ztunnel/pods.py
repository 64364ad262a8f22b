"""The pods a ztunnel serves, and their listeners inside each pod's netns.

The listeners are created by entering the pod's netns on the event-loop thread (setns is
per-thread) and coming straight back: a socket keeps the netns it was born in. ztunnel itself stays
in its own cgroup, so its sockets are never captured, and the getsockopt program attached to that
cgroup answers SO_ORIGINAL_DST on the connections accepted here.

Why SO_REUSEPORT: during a surge roll of the node DaemonSet (docs/operations.md, "Rolling the node
DaemonSet") the new node pod's ztunnel opens its listeners in every pod netns *beside* the old
one's; the kernel spreads new connections over both. When the old ztunnel stops, it closes its
listeners (`PodRegistry.shutdown`) and, with `net.ipv4.tcp_migrate_req=1` (the agent sets it in
every pod netns), the connections still queued on them move to the new ztunnel's instead of being
reset. Before Linux 6.5 `bpf_sk_assign` refuses SO_REUSEPORT listeners, so there ztunnel binds
exclusively and a surge hand-off waits for the old ztunnel to leave (see `reuseport_supported`).

The DNS proxy's 127.0.0.1:15053 (UDP and TCP, `open_dns`) is opened with the other listeners, all
or none, and shares their SO_REUSEPORT choice: a surge roll's two ztunnels, or a node's workers,
take turns at a pod's queries, and closing the old one's sockets leaves the new one's.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import os
import re
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ambit.dataplane.acceptloop import AcceptLoop
from ambit.dataplane.ports import (
    AMBIT_LISTENER_MARK,
    AMBIT_MARK,
    LISTEN_BACKLOG,
    PORT_DNS,
    PORT_HBONE,
    PORT_INBOUND,
    PORT_OUTBOUND,
)
from ambit.dataplane.relay import Leg
from ambit.netns import entered, socket_at
from ambit.zds import PodInfo
from ztunnel import listengroup

log = logging.getLogger("ambit.ztunnel.pods")

IP_TRANSPARENT = 19
# The key of the plaintext listeners' accept backoffs (`ambit_accept_backoffs_total{listener}`).
BACKOFF_KEY = "plaintext"
# Handles one accepted connection (a `Leg` buffering what arrives until the handler relays it).
Handler = Callable[["PodProxy", Leg], Awaitable[None]]


class Closable(Protocol):
    def close(self) -> None: ...


# Serves a pod's HBONE listener (already bound and listening in the pod's netns) with a server of its
# own (TLS is terminated per pod, with that pod's certificate); returns what stops it accepting.
HBONEServe = Callable[["PodProxy", socket.socket], Awaitable[Closable]]
# Serves a pod's DNS proxy sockets (UDP bound, TCP listening, both 127.0.0.1:15053 in its netns;
# ztunnel/dns/server.py); returns what closes them.
DNSServe = Callable[["PodProxy", socket.socket, socket.socket], Awaitable[Closable]]
# Told about pods coming ("add") and going ("remove"), e.g. to prefetch or forget certificates.
PodListener = Callable[[str, "PodProxy"], None]


class ListenerError(OSError):
    """ztunnel cannot open one of its listeners in a pod's netns (e.g. the pod holds the port)."""

    def __str__(self) -> str:   # what the agent shows as the pod's status: the words, no "[Errno 98]"
        return str(self.strerror)


def reuseport_supported(release: str | None = None) -> bool:
    """Can ztunnel share its pod listeners with another ztunnel? ambit_tc_in hands inbound
    connections over with bpf_sk_assign, which accepts SO_REUSEPORT listeners since Linux 6.5
    (commit 9c02bec95954); on older kernels it would refuse them and inbound would be dropped."""
    release = release if release is not None else os.uname().release
    m = re.match(r"(\d+)\.(\d+)", release)
    return m is not None and (int(m.group(1)), int(m.group(2))) >= (6, 5)


def _listener(host: str, port: int, transparent: bool = False, marked: bool = False,
              reuseport: bool = False) -> socket.socket:
    """A listener in the calling thread's netns. `marked`: carry AMBIT_LISTENER_MARK, the proof
    ambit_tc_in asks for before it hands a packet to a listener on ztunnel's ports. `reuseport`:
    another ztunnel (a surge roll's new or old one) may listen on the same port beside it."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuseport:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if transparent:
            s.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
        if marked:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, AMBIT_LISTENER_MARK)
        s.bind((host, port))
        s.listen(LISTEN_BACKLOG)
        s.setblocking(False)
        if reuseport and marked and listengroup.unmarked_listeners(port, AMBIT_LISTENER_MARK):
            # A pod's own SO_REUSEPORT listener shares the port: it would get some of the connections
            # steered to ztunnel. Refuse the pod as if the port were in use (ztunnel/listengroup.py).
            raise OSError(errno.EADDRINUSE, "a listener there is not ztunnel's")
    except OSError as e:
        s.close()
        if e.errno == errno.EADDRINUSE:
            raise ListenerError(e.errno, f"port {port} in use in the pod's netns ({host}:{port})") from None
        raise ListenerError(e.errno, f"cannot listen on {host}:{port} in the pod's netns: {e.strerror}") from None
    return s


def open_listeners(with_hbone: bool, reuseport: bool = False) -> dict[int, socket.socket]:
    """ztunnel's listeners for one pod, in the calling thread's netns: all of them or none."""
    specs = [(PORT_OUTBOUND, "127.0.0.1", False, False), (PORT_INBOUND, "0.0.0.0", True, True)]
    if with_hbone:
        specs.append((PORT_HBONE, "0.0.0.0", False, True))
    socks: dict[int, socket.socket] = {}
    try:
        for port, host, transparent, marked in specs:
            socks[port] = _listener(host, port, transparent=transparent, marked=marked, reuseport=reuseport)
    except BaseException:
        for s in socks.values():
            s.close()
        raise
    return socks


def open_dns(reuseport: bool = False) -> tuple[socket.socket, socket.socket]:
    """The DNS proxy's UDP and TCP sockets on 127.0.0.1:PORT_DNS in the calling thread's netns (both
    or neither). Not marked: the capture redirects the pod's own queries there, no other traffic.
    The UDP socket has no SO_REUSEADDR: on UDP it would let a second socket take the port over."""
    tcp = _listener("127.0.0.1", PORT_DNS, reuseport=reuseport)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    try:
        if reuseport:
            udp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        udp.bind(("127.0.0.1", PORT_DNS))
        udp.setblocking(False)
    except OSError as e:
        udp.close()
        tcp.close()
        if e.errno == errno.EADDRINUSE:
            raise ListenerError(e.errno, f"UDP port {PORT_DNS} in use in the pod's netns (127.0.0.1:{PORT_DNS}, "
                                         "the DNS proxy's)") from None
        raise ListenerError(e.errno, f"cannot bind UDP 127.0.0.1:{PORT_DNS} in the pod's netns: {e.strerror}") from None
    return udp, tcp


def serve_plaintext(proxy: PodProxy, sock: socket.socket, handler: Handler) -> AcceptLoop:
    """Serve a pod's plaintext listener (outbound capture, inbound plaintext; bound and listening):
    our own accept loop, each connection's transport made by `loop.connect_accepted_socket` in
    the task that then runs `handler`. Returns what stops it accepting.

    Why not `loop.create_server`: under concurrent new connections uvloop's server path cost
    ztunnel ~25 % more CPU per connection (docs/performance.md, round 21); the work is the same,
    spread over twice as many loop iterations. No TCP_DEFER_ACCEPT here, unlike the TLS
    listeners: a captured protocol may have the server speak first (SMTP, MySQL, SSH), and the
    kernel would hold such a connection back until the deferral ends."""
    loop = asyncio.get_running_loop()

    async def serve(conn: socket.socket) -> None:
        conn.setblocking(False)
        try:
            _, leg = await loop.connect_accepted_socket(Leg, conn)
        except OSError:
            conn.close()
            return
        await handler(proxy, leg)

    def accepted(conn: socket.socket, _source: str) -> None:
        task = asyncio.ensure_future(serve(conn))
        proxy.conns.add(task)
        task.add_done_callback(functools.partial(_served, proxy.conns, conn))

    accept = AcceptLoop(sock, accepted, None, backoff_key=BACKOFF_KEY)
    accept.start()
    return accept


def _served(conns: set[Any], conn: socket.socket, task: asyncio.Task[None]) -> None:
    conns.discard(task)
    if task.cancelled():
        conn.close()    # cancelled before its transport took the socket (else a no-op: detached)


@dataclass
class PodProxy:
    pod: PodInfo
    netns_fd: int
    servers: list[Closable] = field(default_factory=list)
    conns: set[Any] = field(default_factory=set)    # handlers' tasks and relays: what draining waits for, then cuts
    draining: bool = False

    def socket(self) -> socket.socket:
        """A plain TCP socket in the pod's netns (for connections *from* the pod's address)."""
        s = socket_at(self.netns_fd)
        s.setblocking(False)
        return s

    def delivery_socket(self, src_ip: str) -> socket.socket:
        """A socket in the pod's netns bound to the *client's* IP: the app sees the real peer.

        IP_TRANSPARENT allows binding a non-local address; AMBIT_MARK makes the app's replies
        route back over lo (the agent installs the rule at enrolment).
        """
        s = self.socket()
        try:
            s.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, AMBIT_MARK)
            s.bind((src_ip, 0))
        except OSError:
            s.close()
            raise
        return s

    def stop_accepting(self) -> None:
        self.draining = True
        for s in self.servers:
            s.close()

    async def close(self, drain: float) -> None:
        """Stop accepting; let open connections finish for up to `drain` seconds, then cut them."""
        self.stop_accepting()
        if self.conns and drain > 0:
            # handlers' tasks, and the relays of connections past their set-up (`ConnBook.hand_off`)
            await asyncio.wait({c if isinstance(c, asyncio.Future) else c.ended() for c in self.conns},
                               timeout=drain)
        for t in list(self.conns):
            t.cancel()
        with contextlib.suppress(OSError):
            os.close(self.netns_fd)


class PodRegistry:
    """All pods of this node that ztunnel serves, keyed by uid."""

    def __init__(self, on_outbound: Handler, on_inbound: Handler, serve_hbone: HBONEServe | None = None,
                 reuseport: bool | None = None, serve_dns: DNSServe | None = None):
        self.pods: dict[str, PodProxy] = {}
        self.reuseport = reuseport_supported() if reuseport is None else reuseport
        self.shutting_down = False      # SIGTERM: no pod is served any more, open connections drain
        self.by_ip: dict[str, PodProxy] = {}
        self._draining: set[asyncio.Future[None]] = set()
        self._handlers = {PORT_OUTBOUND: on_outbound, PORT_INBOUND: on_inbound}
        self._serve_hbone = serve_hbone
        self._serve_dns = serve_dns     # None: no DNS proxy (its sockets are not opened)
        self.listeners: list[PodListener] = []
        # uid -> (pod, why): pods the agent handed over whose listeners could not be opened. They
        # are not served (inbound to them is dropped by ambit_tc_in); the agent retries.
        self.failed: dict[str, tuple[PodInfo, str]] = {}

    def view(self) -> dict[str, list[dict[str, str]]]:
        """What the admin endpoint /pods shows: the pods served, and those whose hand-off failed."""
        def row(p: PodInfo) -> dict[str, str]:
            return {"uid": p.uid, "namespace": p.namespace, "name": p.name, "ip": p.ip}
        return {"serving": [{**row(px.pod), "state": "serving"} for px in self.pods.values()],
                "failed": [{**row(p), "state": "capture-failed", "reason": why} for p, why in self.failed.values()]}

    def _notify(self, event: str, proxy: PodProxy) -> None:
        for fn in list(self.listeners):
            try:
                fn(event, proxy)
            except Exception:
                log.exception("pod %s listener failed for %s/%s", event, proxy.pod.namespace, proxy.pod.name)

    async def add(self, pod: PodInfo, netns_fd: int) -> None:
        if self.shutting_down:
            os.close(netns_fd)
            raise ListenerError(errno.ESHUTDOWN, "ztunnel is shutting down")
        old = self.pods.get(pod.uid)
        if old is not None:
            if old.pod == pod and _same_netns(old.netns_fd, netns_fd):
                os.close(netns_fd)  # same pod replayed after an agent reconnect: keep serving
                return
            await self.remove(pod.uid, drain=0)
        proxy = PodProxy(pod, netns_fd)
        dns_socks: tuple[socket.socket, socket.socket] | None = None
        try:
            with entered(netns_fd):
                socks = open_listeners(PORT_HBONE in self._handlers or self._serve_hbone is not None,
                                       reuseport=self.reuseport)
                if self._serve_dns is not None:
                    try:
                        dns_socks = open_dns(reuseport=self.reuseport)
                    except BaseException:
                        for s in socks.values():
                            s.close()
                        raise
        except BaseException as e:
            os.close(netns_fd)   # ours from the hand-off on: the agent retries with a fresh one
            if isinstance(e, ListenerError):
                self.failed[pod.uid] = (pod, str(e.strerror))
                log.warning("cannot serve pod %s/%s (%s): %s", pod.namespace, pod.name, pod.ip, e.strerror)
            raise
        try:
            for port, sock in socks.items():
                if port == PORT_HBONE and self._serve_hbone is not None:
                    proxy.servers.append(await self._serve_hbone(proxy, sock))
                    continue
                proxy.servers.append(serve_plaintext(proxy, sock, self._handlers[port]))
            if dns_socks is not None and self._serve_dns is not None:
                proxy.servers.append(await self._serve_dns(proxy, *dns_socks))
        except BaseException:
            for srv in proxy.servers:
                srv.close()
            for s in (*socks.values(), *(dns_socks or ())):
                s.close()
            os.close(netns_fd)
            raise
        self.pods[pod.uid] = proxy
        self.by_ip[pod.ip] = proxy
        self.failed.pop(pod.uid, None)
        log.info("serving pod %s/%s (%s) uid=%s", pod.namespace, pod.name, pod.ip, pod.uid)
        self._notify("add", proxy)

    async def remove(self, uid: str, drain: float, wait: bool = True) -> None:
        """Stop serving a pod: no new connections at once; open ones get `drain` seconds.

        With wait=False the drain continues in the background (the agent's unenrol must not block
        on long-lived connections)."""
        self.failed.pop(uid, None)
        proxy = self.pods.pop(uid, None)
        if proxy is None:
            return
        if self.by_ip.get(proxy.pod.ip) is proxy:
            del self.by_ip[proxy.pod.ip]
        log.info("draining pod %s/%s (%d open connections, bound %.1fs)", proxy.pod.namespace,
                 proxy.pod.name, len(proxy.conns), drain)
        proxy.stop_accepting()
        self._notify("remove", proxy)
        if wait:
            await proxy.close(drain)
        else:
            self._draining.add(asyncio.ensure_future(proxy.close(drain)))
            for t in list(self._draining):
                if t.done():
                    self._draining.discard(t)

    async def shutdown(self, drain: float) -> int:
        """ztunnel is stopping (SIGTERM): close every pod's listeners at once, so new connections
        go to the other ztunnel of a surge roll (queued ones migrate to it), then give the open
        connections up to `drain` seconds to finish before cutting them. Returns how many
        connections were still open when the listeners closed."""
        self.shutting_down = True
        proxies = list(self.pods.values())
        self.pods.clear()
        self.by_ip.clear()
        for px in proxies:
            px.stop_accepting()
        open_conns = sum(len(px.conns) for px in proxies)
        log.info("stopping: listeners of %d pods closed; draining %d open connections (bound %.1fs)",
                 len(proxies), open_conns, drain)
        # No "remove" events: they would close the pods' pooled HBONE connections, which carry the
        # outbound tunnels now draining.
        await asyncio.gather(*(px.close(drain) for px in proxies), *self._draining, return_exceptions=True)
        return open_conns


def _same_netns(a: int, b: int) -> bool:
    """Do two netns fds name one netns? (A pod's sandbox re-created at the same path is another.)
    By nsfs inode: safe here, as the fd we hold keeps the first one alive, so its number is not
    reused meanwhile."""
    sa, sb = os.fstat(a), os.fstat(b)
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)
