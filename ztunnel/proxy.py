"""Connection handlers: what ztunnel does with a captured connection.

Outbound (15001): find the original destination, decide the route, connect, relay.
Inbound plaintext (15006): the connection was steered here by the TC program; its local address
*is* the original destination. Deliver it to the app from the client's own IP.
The route decision itself is a pure function in ztunnel/routing.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from agent.capture.origdst import original_dst
from ztunnel import accesslog
from ztunnel.accesslog import ConnRecord
from ztunnel.config import MeshConfig
from ztunnel.pods import PodProxy, PodRegistry
from ztunnel.relay import relay

log = logging.getLogger("ambit.ztunnel.proxy")
CONNECT_TIMEOUT = 10.0


async def open_from(sock_factory, dst: tuple[str, int]) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:  # noqa: ANN001
    loop = asyncio.get_running_loop()
    s = sock_factory()
    try:
        await asyncio.wait_for(loop.sock_connect(s, dst), CONNECT_TIMEOUT)
    except BaseException:
        s.close()
        raise
    return await asyncio.open_connection(sock=s, limit=256 * 1024)


class Proxy:
    def __init__(self, config: MeshConfig | None = None) -> None:
        # The mesh config (workloads, services, policies) from the controller; None without one.
        self.config = config
        self.registry = PodRegistry(self.outbound, self.inbound_plaintext)

    async def outbound(self, pod: PodProxy, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        peer = writer.get_extra_info("peername")
        rec = ConnRecord("outbound", src_addr=f"{pod.pod.ip}:{peer[1]}", dst_addr="",
                         src_workload=pod.pod.name, src_namespace=pod.pod.namespace, route="passthrough")
        try:
            dst = original_dst(sock)
            rec.dst_addr = f"{dst[0]}:{dst[1]}"
            if dst == sock.getsockname()[:2]:
                raise OSError("original destination unknown (is ztunnel in its own cgroup?)")
            up_r, up_w = await open_from(pod.socket, dst)
            rec.bytes_sent, rec.bytes_recv = await relay(reader, writer, up_r, up_w)
        except (TimeoutError, OSError) as e:
            rec.error = f"{type(e).__name__}: {e}"
        finally:
            writer.close()
            accesslog.emit(rec)

    async def inbound_plaintext(self, pod: PodProxy, reader: asyncio.StreamReader,
                                writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        # eBPF (sk_assign): the local address is the original destination; iptables: conntrack.
        local = original_dst(writer.get_extra_info("socket"))
        rec = ConnRecord("inbound", src_addr=f"{peer[0]}:{peer[1]}", dst_addr=f"{local[0]}:{local[1]}",
                         dst_workload=pod.pod.name, dst_namespace=pod.pod.namespace, route="inbound-plaintext")
        try:
            app_r, app_w = await open_from(lambda: pod.delivery_socket(peer[0]), (local[0], local[1]))
            rec.bytes_sent, rec.bytes_recv = await relay(reader, writer, app_r, app_w)
        except (TimeoutError, OSError) as e:
            rec.error = f"{type(e).__name__}: {e}"
        finally:
            with contextlib.suppress(Exception):
                writer.close()
            accesslog.emit(rec)
