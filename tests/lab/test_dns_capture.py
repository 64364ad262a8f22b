"""DNS capture against the real kernel: an enrolled pod's queries to port 53 of a resolver outside
the pod reach ztunnel's DNS proxy on 127.0.0.1:15053 in the pod netns, and real resolvers (dig,
glibc) accept the answer as the resolver's.

The "proxy" here is the test's own UDP+TCP listener on 127.0.0.1:15053 inside the pod netns (a
thread of the test process: outside the pod's cgroup, as ztunnel is); the "upstream" resolver
listens on the node's 10.78.0.1:53. Which one answered tells whether the query was captured.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.capture import CaptureEngine, PodCapture
from tests.lab.dns_fixtures import (
    ENGINE_NODE,
    LOCAL_ANSWER,
    NAME,
    NODE_IP,
    NS_POD,
    POD_IP,
    PROXY_ANSWER,
    UPSTREAM_ANSWER,
    DnsLab,
    DnsServer,
    sweep,
)

pytestmark = pytest.mark.lab

UID = "dnsc-pod"


@pytest.fixture(scope="module")
def dlab() -> Iterator[DnsLab]:
    lab = DnsLab.create()
    upstream = DnsServer(lab.node_ns, NODE_IP, 53, UPSTREAM_ANSWER)
    try:
        yield lab
    finally:
        upstream.close()
        sweep()


@pytest.fixture
def proxy(dlab: DnsLab) -> Iterator[DnsServer]:
    s = DnsServer(dlab.pod_ns, "127.0.0.1", 15053, PROXY_ANSWER)
    try:
        yield s
    finally:
        s.close()


def pod(dlab: DnsLab, **over) -> PodCapture:
    return PodCapture(**{"uid": UID, "netns_path": dlab.pod_ns, "cgroup_path": str(dlab.pod_cg), "pod_ip": POD_IP,
                         "node_ip": NODE_IP, **over})


def make_engine(dlab: DnsLab, mode: str, **over) -> Iterator[CaptureEngine]:
    eng = CaptureEngine(ENGINE_NODE, dlab.zt_cg, mode=mode, node_netns=dlab.node_ns)
    try:
        eng.load()
        eng.enrol(pod(dlab, **over))
        yield eng
    finally:
        eng.uninstall()


@pytest.fixture
def engine(dlab: DnsLab) -> Iterator[CaptureEngine]:
    yield from make_engine(dlab, "ebpf")


# What an application does with a socket of its own, run in the pod: the peer it is told about
# and the source its reply comes from must be the resolver it asked, not 127.0.0.1:15053.
CLIENT = r"""
import json, socket, struct, sys
import dns.message
mode, ip = sys.argv[1], sys.argv[2]
q = dns.message.make_query("web.example.", "A").to_wire()
out = {}
if mode == "udp-connected":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
    s.connect((ip, 53)); out["peer"] = list(s.getpeername()); s.send(q)
    data, src = s.recvfrom(4096); out["src"] = list(src)
elif mode == "udp-sendto":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
    s.sendto(q, (ip, 53)); data, src = s.recvfrom(4096); out["src"] = list(src)
elif mode == "udp6-sendto":
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); s.settimeout(2)
    s.sendto(q, ("::ffff:" + ip, 53)); data, src = s.recvfrom(4096); out["src"] = list(src[:2])
elif mode == "udp6-connected":
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); s.settimeout(2)
    s.connect(("::ffff:" + ip, 53)); s.send(q); data, src = s.recvfrom(4096); out["src"] = list(src[:2])
elif mode == "tcp":
    s = socket.create_connection((ip, 53), timeout=2); out["peer"] = list(s.getpeername())
    s.sendall(struct.pack("!H", len(q)) + q); n = struct.unpack("!H", s.recv(2))[0]; data = s.recv(n)
out["answer"] = [r.to_text() for r in dns.message.from_wire(data).answer]
print(json.dumps(out))
"""


def client(dlab: DnsLab, mode: str, ip: str = NODE_IP) -> dict:
    r = dlab.run([sys.executable, "-c", CLIENT, mode, ip])
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def bind_in_pod(dlab: DnsLab, kind: str, port: int) -> str:
    code = ("import socket, sys\n"
            f"s = socket.socket(socket.AF_INET, socket.{kind})\n"
            "try:\n"
            f"    s.bind(('127.0.0.1', {port})); print('bound')\n"
            "except OSError as e:\n"
            "    print(f'errno {e.errno}')\n")
    return dlab.run([sys.executable, "-c", code]).stdout.strip()


# ---- eBPF ------------------------------------------------------------------------------------

def test_dig_over_udp_is_answered_by_the_dns_proxy_as_if_by_the_resolver(dlab, engine, proxy):
    before = engine.stats()
    # +short prints the answer only: "reply from unexpected source" or a timeout would show here.
    assert dlab.dig(f"@{NODE_IP}") == PROXY_ANSWER
    # What ztunnel's DNS proxy sees: the app's socket, from 127.0.0.1 (the source chosen for the
    # rewritten destination); its reply goes back there as it is.
    assert [p[:2] for p in proxy.peers] == [("udp", "127.0.0.1")]
    after = engine.stats()
    assert after["dns_udp_redirected"] > before["dns_udp_redirected"]
    assert after["dns_reply_rewritten"] > before["dns_reply_rewritten"]


def test_dig_over_tcp_goes_to_the_dns_proxy_not_the_outbound_listener(dlab, engine, proxy):
    before = engine.stats()["dns_tcp_redirected"]
    assert dlab.dig("+tcp", f"@{NODE_IP}") == PROXY_ANSWER
    assert [p[:2] for p in proxy.peers] == [("tcp", "127.0.0.1")]
    assert engine.stats()["dns_tcp_redirected"] == before + 1


def test_glibc_resolver_accepts_the_proxied_answer(dlab, engine, proxy):
    conf = Path("/etc/netns") / NS_POD
    conf.mkdir(parents=True, exist_ok=True)
    (conf / "resolv.conf").write_text(f"nameserver {NODE_IP}\noptions timeout:1 attempts:1\n")
    # ip netns exec bind-mounts /etc/netns/<ns>/resolv.conf; the pod's cgroup is joined first.
    r = dlab.run(["ip", "netns", "exec", NS_POD, "getent", "ahostsv4", NAME])
    assert r.returncode == 0, r.stderr
    assert {line.split()[0] for line in r.stdout.splitlines()} == {PROXY_ANSWER}
    assert proxy.peers and all(p[0] == "udp" for p in proxy.peers)


@pytest.mark.parametrize("mode", ["udp-connected", "udp-sendto", "udp6-sendto", "udp6-connected", "tcp"])
def test_apps_see_the_resolver_they_asked_as_peer_and_reply_source(dlab, engine, proxy, mode):
    out = client(dlab, mode)
    assert out["answer"] == [f"{NAME} 30 IN A {PROXY_ANSWER}"]
    resolver = [f"::ffff:{NODE_IP}" if mode.startswith("udp6") else NODE_IP, 53]
    if "src" in out:
        assert out["src"] == resolver
    if "peer" in out:
        assert out["peer"] == resolver


def test_dns_capture_off_goes_to_the_real_resolver_and_turning_it_on_takes_effect(dlab, proxy):
    for eng in make_engine(dlab, "ebpf", dns_capture=False):
        before = eng.stats()["dns_skip_off"]
        assert dlab.dig(f"@{NODE_IP}") == UPSTREAM_ANSWER
        assert eng.stats()["dns_skip_off"] == before + 1
        assert proxy.peers == []
        eng.enrol(pod(dlab, dns_capture=True))               # the annotation changed on a running pod
        assert dlab.dig(f"@{NODE_IP}") == PROXY_ANSWER


def test_loopback_resolver_is_not_redirected(dlab, engine, proxy):
    local = DnsServer(dlab.pod_ns, "127.0.0.53", 53, LOCAL_ANSWER)
    try:
        assert dlab.dig("@127.0.0.53") == LOCAL_ANSWER
        assert dlab.dig("+tcp", "@127.0.0.53") == LOCAL_ANSWER
    finally:
        local.close()
    assert proxy.peers == []


def test_ztunnels_own_queries_are_never_captured(dlab, engine, proxy):
    assert dlab.dig(f"@{NODE_IP}", cgroup=dlab.zt_cg) == UPSTREAM_ANSWER
    assert dlab.dig("+tcp", f"@{NODE_IP}", cgroup=dlab.zt_cg) == UPSTREAM_ANSWER
    assert proxy.peers == []


def test_pod_cannot_bind_the_dns_proxy_port(dlab, engine):
    assert bind_in_pod(dlab, "SOCK_DGRAM", 15053) == "errno 1"     # EPERM
    assert bind_in_pod(dlab, "SOCK_STREAM", 15053) == "errno 1"
    assert bind_in_pod(dlab, "SOCK_DGRAM", 15054) == "bound"       # only ztunnel's ports are refused


def test_a_socket_given_the_dns_proxy_port_does_not_get_its_own_query_back(dlab, engine):
    """ztunnel's UDP 127.0.0.1:15053 has SO_REUSEPORT, so the kernel may give a client's
    SO_REUSEPORT socket of the same uid (dig's) port 15053 as its ephemeral port (the bind()
    program sees port 0). Redirected to 127.0.0.1:15053, its query went to itself, and dig read its
    own query as the answer ("query response not set", no answer; seen once in test_egress.py).
    Here the pod's ephemeral range is 15053 alone, so dig is always given it: its query must go out
    uncaptured (answered by the resolver it asked) rather than come back to itself."""
    proxy = DnsServer(dlab.pod_ns, "127.0.0.1", 15053, PROXY_ANSWER, reuseport=True)
    range_file = "/proc/sys/net/ipv4/ip_local_port_range"
    saved = dlab.run(["cat", range_file]).stdout.split()
    try:
        assert dlab.run(["sh", "-c", f"echo 15053 15053 > {range_file}"]).returncode == 0
        before = engine.stats()["dns_skip_self"]
        out = dlab.dig(f"@{NODE_IP}")
        assert out == UPSTREAM_ANSWER, out
        assert engine.stats()["dns_skip_self"] == before + 1
        assert proxy.peers == []
    finally:
        dlab.run(["sh", "-c", f"echo {' '.join(saved)} > {range_file}"])
        proxy.close()


# ---- iptables --------------------------------------------------------------------------------

def test_iptables_mode_sends_port_53_to_the_dns_proxy(dlab, proxy):
    for _ in make_engine(dlab, "iptables"):
        assert dlab.dig(f"@{NODE_IP}") == PROXY_ANSWER
        assert dlab.dig("+tcp", f"@{NODE_IP}") == PROXY_ANSWER
        assert client(dlab, "udp-sendto")["src"] == [NODE_IP, 53]
        # REDIRECT keeps the source the route to the resolver chose: the pod's IP, not 127.0.0.1.
        assert [p[:2] for p in proxy.peers] == [("udp", POD_IP), ("tcp", POD_IP), ("udp", POD_IP)]
        assert dlab.dig(f"@{NODE_IP}", cgroup=dlab.zt_cg) == UPSTREAM_ANSWER   # ztunnel's cgroup: RETURN


def test_iptables_mode_honours_dns_capture_off(dlab, proxy):
    for _ in make_engine(dlab, "iptables", dns_capture=False):
        assert dlab.dig(f"@{NODE_IP}") == UPSTREAM_ANSWER
        assert proxy.peers == []


def test_iptables_mode_a_socket_given_the_dns_proxy_port_still_reaches_the_proxy(dlab):
    """The eBPF case above, in iptables mode: REDIRECT leaves the source the pod's IP, so the query
    (pod IP:15053 -> 127.0.0.1:15053) matches no socket but the proxy's; no self-delivery."""
    proxy = DnsServer(dlab.pod_ns, "127.0.0.1", 15053, PROXY_ANSWER, reuseport=True)
    range_file = "/proc/sys/net/ipv4/ip_local_port_range"
    saved = dlab.run(["cat", range_file]).stdout.split()
    try:
        for _ in make_engine(dlab, "iptables"):
            assert dlab.run(["sh", "-c", f"echo 15053 15053 > {range_file}"]).returncode == 0
            assert dlab.dig(f"@{NODE_IP}") == PROXY_ANSWER
            assert [p[:3] for p in proxy.peers] == [("udp", POD_IP, 15053)]
    finally:
        dlab.run(["sh", "-c", f"echo {' '.join(saved)} > {range_file}"])
        proxy.close()
