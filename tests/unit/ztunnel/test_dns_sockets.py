"""The DNS proxy over real sockets: `dig` asks it over UDP and TCP on a loopback port, and what the
mesh does not answer goes to a real upstream, `dnsmasq`. Truncation makes the client retry over
TCP, a dead upstream gives SERVFAIL (not a hang), malformed bytes get FORMERR or nothing and never
stop the server, and one pod's forwards are bounded."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from ambit.model import Service, ServicePort
from ambit.zds import PodInfo
from tests.unit.ztunnel.meshcfg import config, svc, wl
from ztunnel.dns.forwarder import Forwarder, Upstream
from ztunnel.dns.metrics import DnsMetrics
from ztunnel.dns.server import DnsProxy, PodDns
from ztunnel.pods import PodProxy

pytestmark = pytest.mark.skipif(not (shutil.which("dig") and shutil.which("dnsmasq")),
                                reason="needs dig (bind9-dnsutils) and dnsmasq")

BIG = ["x" * 200 + str(i) for i in range(4)]     # four 200-byte TXT records: over 512 bytes


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u, socket.socket() as t:
        for _ in range(50):
            u.bind(("127.0.0.1", 0))
            port = u.getsockname()[1]
            try:
                t.bind(("127.0.0.1", port))
                return port
            except OSError:
                u.close()
                u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    raise RuntimeError("no free port")


@contextmanager
def dnsmasq() -> Iterator[int]:
    port = free_port()
    cmd = ["dnsmasq", "--no-daemon", "--no-resolv", "--no-hosts", f"--port={port}", "--listen-address=127.0.0.1",
           "--bind-interfaces", "--pid-file=", "--address=/upstream.test/192.0.2.7", "--address=/nx.test/",
           *(f'--txt-record=big.test,{t}' for t in BIG)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        q = dns.message.make_query("upstream.test.", "A").to_wire()
        for _ in range(100):        # ready once it answers
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(0.05)
                try:
                    s.sendto(q, ("127.0.0.1", port))
                    s.recv(512)
                    break
                except OSError:
                    if proc.poll() is not None:
                        raise RuntimeError(f"dnsmasq exited: {proc.stderr.read().decode() if proc.stderr else ''}") from None
        yield port
    finally:
        proc.kill()
        proc.wait()


def plain_sockets(_proxy: PodProxy) -> Any:
    def make(family: int, type_: int) -> socket.socket:
        s = socket.socket(family, type_)
        s.setblocking(False)
        return s
    return make


def mesh() -> Any:
    reviews = wl("reviews", "10.1.0.5", ns="demo")
    entry = Service(name="api.example.com", namespace="demo", hostname="api.example.com", vips=["240.240.0.1"],
                    ports=[ServicePort(443, 443, "https")], kind="ServiceEntry", resolution="DNS")
    return config([reviews, wl("client", "10.1.0.9", ns="demo")],
                  [svc("reviews", "10.96.0.20", [reviews], ns="demo"), entry])


@asynccontextmanager
async def proxy_on(upstreams: list[Upstream], timeout: float = 2.0, max_forwards: int = 128):
    registry = CollectorRegistry()
    node = DnsProxy(mesh(), Forwarder(upstreams, timeout), DnsMetrics(registry), max_forwards_per_pod=max_forwards,
                    sockets=plain_sockets)
    port = free_port()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", port))
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", port))
    tcp.listen(16)
    pod = PodProxy(PodInfo("uid-client", "client", "demo", "10.1.0.9", "node1", "client",
                           labels={"app": "client", "version": "v1"}), netns_fd=-1)
    served: PodDns = await node.serve(pod, udp, tcp)
    try:
        yield port, registry, served
    finally:
        served.close()


async def dig(port: int, *args: str) -> str:
    proc = await asyncio.create_subprocess_exec("dig", "@127.0.0.1", "-p", str(port), "+tries=1", "+timeout=8",
                                                *args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    return out.decode()


def answers(out: str) -> list[str]:
    """The ANSWER section's records of dig's output, as `name type data` (TTL and class dropped)."""
    lines = out.split(";; ANSWER SECTION:\n", 1)[1].split("\n\n", 1)[0].splitlines() if "ANSWER SECTION" in out else []
    return [" ".join(f for i, f in enumerate(line.split()) if i not in (1, 2)) for line in lines]


def test_mesh_hosts_answered_and_the_rest_forwarded_over_udp_and_tcp() -> None:
    async def go() -> None:
        with dnsmasq() as up:
            async with proxy_on([Upstream("127.0.0.1", up)]) as (port, registry, _):
                for proto in ("+notcp", "+tcp"):
                    out = await dig(port, proto, "reviews.demo.svc.cluster.local")
                    assert "status: NOERROR" in out and " aa " in out.split("flags:", 1)[1].split(";")[0], out
                    assert answers(out) == ["reviews.demo.svc.cluster.local. A 10.96.0.20"], out
                    # the second search domain tried by a resolver for `api.example.com`: a CNAME, then the VIP
                    out = await dig(port, proto, "api.example.com.demo.svc.cluster.local")
                    assert answers(out) == ["api.example.com.demo.svc.cluster.local. CNAME api.example.com.",
                                            "api.example.com. A 240.240.0.1"], out
                    out = await dig(port, proto, "reviews.demo.svc.cluster.local", "AAAA")
                    assert "status: NOERROR" in out and answers(out) == [], out
                    out = await dig(port, proto, "upstream.test")
                    assert "status: NOERROR" in out and answers(out) == ["upstream.test. A 192.0.2.7"], out
                    out = await dig(port, proto, "host.nx.test")
                    assert "status: NXDOMAIN" in out, out
                    out = await dig(port, proto, "reviews.demo.svc.cluster.local", "TXT")    # not A/AAAA: upstream's
                    assert "status: NXDOMAIN" in out or "status: REFUSED" in out, out
                text = generate_latest(registry).decode()
                assert ('istio_dns_requests_total{request_protocol="udp",request_query_type="a",'
                        'source_canonical_revision="latest",source_canonical_service="client"} 4.0') in text, text
                assert ('istio_dns_upstream_requests_total{request_protocol="tcp",request_query_type="txt",'
                        'source_canonical_revision="latest",source_canonical_service="client"} 1.0') in text, text
                assert "istio_dns_upstream_request_duration_seconds_bucket" in text
                assert "istio_dns_upstream_failures_total{" not in text
    asyncio.run(go())


def test_truncated_upstream_reply_makes_the_client_retry_over_tcp() -> None:
    async def go() -> None:
        with dnsmasq() as up:
            async with proxy_on([Upstream("127.0.0.1", up)]) as (port, _, _):
                out = await dig(port, "+noedns", "big.test", "TXT", "+ignore")
                assert "tc" in out.split("flags:", 1)[1].split(";")[0], out
                out = await dig(port, "+noedns", "big.test", "TXT")
                assert "Truncated, retrying in TCP mode" in out, out
                assert sorted(a.split()[-1].strip('"') for a in answers(out)) == sorted(BIG), out
    asyncio.run(go())


def test_upstream_down_is_servfail_and_the_next_upstream_is_tried() -> None:
    async def go() -> None:
        dead = free_port()      # nothing listens: ICMP port unreachable
        silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)   # takes queries, never answers
        silent.bind(("127.0.0.1", 0))
        try:
            async with proxy_on([Upstream("127.0.0.1", dead)]) as (port, registry, _):
                for proto in ("+notcp", "+tcp"):
                    out = await dig(port, proto, "upstream.test")
                    assert "status: SERVFAIL" in out, out
                assert 'istio_dns_upstream_failures_total{request_protocol="udp"' in generate_latest(registry).decode()
            async with proxy_on([Upstream("127.0.0.1", silent.getsockname()[1])], timeout=0.3) as (port, _, _):
                out = await dig(port, "upstream.test")
                assert "status: SERVFAIL" in out, out
            with dnsmasq() as up:
                async with proxy_on([Upstream("127.0.0.1", dead), Upstream("127.0.0.1", up)]) as (port, _, _):
                    out = await dig(port, "upstream.test")
                    assert answers(out) == ["upstream.test. A 192.0.2.7"], out
        finally:
            silent.close()
    asyncio.run(go())


async def _exchange(port: int, wire: bytes, wait: float = 2.0) -> bytes | None:
    loop = asyncio.get_running_loop()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setblocking(False)
    try:
        await loop.sock_connect(s, ("127.0.0.1", port))
        await loop.sock_sendall(s, wire)
        try:
            async with asyncio.timeout(wait):
                return await loop.sock_recv(s, 65535)
        except TimeoutError:
            return None
    finally:
        s.close()


def test_malformed_messages_never_stop_the_server() -> None:
    async def go() -> None:
        async with proxy_on([]) as (port, _, _):
            good = dns.message.make_query("reviews.demo.svc.cluster.local.", "A")
            # too short for a header: nothing to answer
            assert await _exchange(port, b"\x01\x02\x03", wait=0.3) is None
            # a header and a body that does not parse: FORMERR under the query's id
            bad = good.to_wire()[:12] + b"\xff" * 30
            r = dns.message.from_wire(await _exchange(port, bad) or b"")
            assert r.rcode() == dns.rcode.FORMERR and r.id == good.id
            # a response is never answered (two servers would bounce errors for ever)
            resp = dns.message.make_response(good)
            assert await _exchange(port, resp.to_wire(), wait=0.3) is None
            # random bytes, many times (replies, if any, are not read)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as noise:
                for _ in range(500):
                    noise.sendto(os.urandom(64), ("127.0.0.1", port))
            # over TCP: a garbage message gets FORMERR, the next one on the connection its answer
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            for wire in (bad, good.to_wire()):
                writer.write(len(wire).to_bytes(2, "big") + wire)
            replies = []
            for _ in range(2):
                size = int.from_bytes(await reader.readexactly(2), "big")
                replies.append(dns.message.from_wire(await reader.readexactly(size)))
            writer.close()
            assert [r.rcode() for r in replies] == [dns.rcode.FORMERR, dns.rcode.NOERROR]
            assert replies[1].answer[0][0].to_text() == "10.96.0.20"
            # and the server still answers over UDP (asked again as a resolver does: the noise may have
            # filled the socket's buffer, and the kernel drops what does not fit)
            for _ in range(5):
                wire = await _exchange(port, good.to_wire(), wait=1.0)
                if wire is not None:
                    break
            assert dns.message.from_wire(wire or b"").answer[0][0].to_text() == "10.96.0.20"
    asyncio.run(go())


def test_a_pods_forwards_are_bounded() -> None:
    async def go() -> None:
        silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        silent.bind(("127.0.0.1", 0))
        try:
            async with proxy_on([Upstream("127.0.0.1", silent.getsockname()[1])], timeout=1.0,
                                max_forwards=1) as (port, _, served):
                loop = asyncio.get_running_loop()
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.setblocking(False)
                await loop.sock_connect(s, ("127.0.0.1", port))
                first = dns.message.make_query("one.upstream.test.", "A")
                second = dns.message.make_query("two.upstream.test.", "A")
                await loop.sock_sendall(s, first.to_wire())
                while not served.forwards:      # the first is waiting on the upstream
                    await asyncio.sleep(0.01)
                await loop.sock_sendall(s, second.to_wire())
                r = dns.message.from_wire(await loop.sock_recv(s, 65535))
                assert (r.id, r.rcode()) == (second.id, dns.rcode.SERVFAIL)     # refused while the first waits
                assert served.forwards
                r = dns.message.from_wire(await loop.sock_recv(s, 65535))
                assert (r.id, r.rcode()) == (first.id, dns.rcode.SERVFAIL)      # the upstream never answered
                s.close()
        finally:
            silent.close()
    asyncio.run(go())


def test_closing_the_pod_closes_its_sockets() -> None:
    async def go() -> None:
        async with proxy_on([]) as (port, _, served):
            served.close()
            await asyncio.sleep(0)
            with socket.socket() as t:
                t.bind(("127.0.0.1", port))      # free again: the listener is gone
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                u.bind(("127.0.0.1", port))
    asyncio.run(go())
