"""ztunnel's DNS proxy in a real pod netns: `PodRegistry.add` opens 127.0.0.1:15053 (UDP and TCP)
there beside the other listeners, `dig` run inside the netns gets the mesh's answers, and the rest
is forwarded from inside the netns (the upstream, a dnsmasq on an address only that netns can
reach, answers it); removing the pod closes the sockets, and a pod already holding the port is
refused with the reason, none of its listeners left open. Netns and dnsmasq of the test's own."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator

import dns.message
import pytest

from ambit.dataplane.ports import PORT_DNS, PORT_OUTBOUND
from ambit.netns import entered, netns_path
from ambit.zds import PodInfo
from tests.lab.labctl import scratch_netns
from tests.unit.ztunnel.meshcfg import config, svc, wl
from ztunnel.dns.forwarder import Forwarder, Upstream
from ztunnel.dns.metrics import DnsMetrics
from ztunnel.dns.server import DnsProxy
from ztunnel.pods import ListenerError, PodRegistry

pytestmark = [pytest.mark.lab, pytest.mark.skipif(not (shutil.which("dig") and shutil.which("dnsmasq")),
                                                  reason="needs dig and dnsmasq")]

UPSTREAM = "10.253.0.1"     # only the pod's netns has it
POD = PodInfo(uid="u-dns", name="client", namespace="demo", ip="10.253.0.9", node="node1", service_account="client")


@pytest.fixture
def netns() -> Iterator[str]:
    with scratch_netns("dnsprx") as name:
        with entered(name):
            subprocess.run(["ip", "addr", "add", f"{UPSTREAM}/32", "dev", "lo"], check=True)
        dm = subprocess.Popen(["ip", "netns", "exec", name, "dnsmasq", "--no-daemon", "--no-resolv", "--no-hosts",
                               f"--listen-address={UPSTREAM}", "--bind-interfaces", "--pid-file=",
                               "--address=/upstream.test/192.0.2.7"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_answering(name, dm)
            yield name
        finally:
            dm.kill()
            dm.wait()


def _wait_answering(netns: str, dm: subprocess.Popen[bytes]) -> None:
    """Until the upstream answers inside the netns (a forward before that would be SERVFAIL)."""
    q = dns.message.make_query("upstream.test.", "A").to_wire()
    with entered(netns):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with s:
        s.settimeout(0.05)
        for _ in range(100):
            if dm.poll() is not None:
                raise RuntimeError("dnsmasq exited")
            try:
                s.sendto(q, (UPSTREAM, 53))
                s.recv(512)
                return
            except OSError:
                continue
    raise RuntimeError("dnsmasq does not answer")


async def dig(netns: str, *args: str) -> str:
    proc = await asyncio.create_subprocess_exec("ip", "netns", "exec", netns, "dig", "@127.0.0.1", "-p", str(PORT_DNS),
                                                "+tries=3", "+timeout=1", *args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    return out.decode()


def registry() -> PodRegistry:
    async def handler(pod, leg) -> None:     # noqa: ANN001 - nothing connects to 15001/15006 here
        leg.close()
    reviews = wl("reviews", "10.1.0.5", ns="demo")
    dns_proxy = DnsProxy(config([reviews], [svc("reviews", "10.96.0.20", [reviews], ns="demo")]),
                         Forwarder([Upstream(UPSTREAM)], 2.0), DnsMetrics())
    return PodRegistry(handler, handler, reuseport=True, serve_dns=dns_proxy.serve)


def test_each_pod_gets_the_dns_proxy_in_its_netns(netns: str) -> None:
    async def go() -> None:
        reg = registry()
        await reg.add(POD, os.open(netns_path(netns), os.O_RDONLY))
        try:
            for proto in ("+notcp", "+tcp"):
                out = await dig(netns, proto, "+short", "reviews.demo.svc.cluster.local")
                assert out.split() == ["10.96.0.20"], out
                out = await dig(netns, proto, "+short", "reviews")     # a short name: the pod's namespace
                assert out.split() == ["10.96.0.20"], out
                out = await dig(netns, proto, "+short", "upstream.test")     # forwarded from inside the netns
                assert out.split() == ["192.0.2.7"], out
        finally:
            await reg.remove(POD.uid, drain=0)
        out = await dig(netns, "+tcp", "+tries=1", "reviews.demo.svc.cluster.local")
        assert "status:" not in out, f"still answered after the pod left: {out}"

    asyncio.run(go())


def test_a_pod_holding_the_dns_port_is_refused_and_nothing_stays_open(netns: str) -> None:
    async def go() -> None:
        reg = registry()
        with entered(netns):
            squat = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            squat.bind(("127.0.0.1", PORT_DNS))
        try:
            with pytest.raises(ListenerError, match="UDP port 15053 in use in the pod's netns"):
                await reg.add(POD, os.open(netns_path(netns), os.O_RDONLY))
            assert "15053" in reg.failed[POD.uid][1]
            with entered(netns):    # all or none: the listeners opened before it were closed
                probe = socket.socket()
                try:
                    assert probe.connect_ex(("127.0.0.1", PORT_OUTBOUND)) != 0
                finally:
                    probe.close()
        finally:
            squat.close()

    asyncio.run(go())
