"""The lab's pod netns sysctls keep ztunnel's ports out of the kernel's ephemeral ports, on a real
kernel (a network namespace of the test's own).

Why: the lab widens a pod's ephemeral range to 1024-65000 and reserved 15000-15021, which left out
15053, the DNS proxy's. ztunnel's UDP socket on 127.0.0.1:15053 has SO_REUSEPORT (surge rolls), so
the kernel may hand 15053 to a client socket that also sets SO_REUSEPORT and runs as the same uid
(dig does, as root in the lab). That socket's query, redirected by DNS capture to 127.0.0.1:15053,
is then delivered to itself (a connected socket beats the bound one), and dig reads its own query
back as the answer: "query response not set", no NXDOMAIN (seen once in tests/lab/test_egress.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ambit.dataplane.ports import PORT_DNS, PORT_HBONE, PORT_INBOUND, PORT_OUTBOUND
from ambitctl.lab.topology import POD_SYSCTLS

# In the netns: the lab's pod sysctls, ztunnel's DNS socket as ztunnel opens it, then for each of
# ztunnel's pod ports an ephemeral range of that one port, and a client socket as dig makes it
# (SO_REUSEPORT, bind to port 0): the kernel must refuse it rather than hand out ztunnel's port.
SCRIPT = """
import errno, json, socket, subprocess, sys
from pathlib import Path
from ztunnel.pods import open_dns
from ambit.dataplane.ports import PORT_DNS

def sysctl(name, value):
    Path("/proc/sys/" + name.replace(".", "/")).write_text(value)

for k, v in json.loads(sys.argv[1]).items():
    sysctl(k, v)
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
udp, tcp = open_dns(reuseport=True)
got = {}
for port in json.loads(sys.argv[2]):
    sysctl("net.ipv4.ip_local_port_range", f"{port} {port}")
    c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        c.bind(("0.0.0.0", 0))
    except OSError as e:
        got[port] = "refused: " + errno.errorcode.get(e.errno, str(e.errno))
        continue
    given = c.getsockname()[1]
    c.connect(("127.0.0.1", PORT_DNS))      # where DNS capture sends the query
    c.send(b"query")
    c.settimeout(1)
    try:
        data = c.recv(100)
    except TimeoutError:
        data = b""
    got[port] = f"given port {given}" + (", and its query to the DNS proxy came back to itself" if data == b"query" else "")
print(json.dumps(got))
"""


pytestmark = [pytest.mark.lab,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root for a network namespace of its own")]


def test_no_client_socket_is_given_a_ztunnel_port_in_a_lab_pod() -> None:
    root = Path(__file__).resolve().parents[2]
    ports = [PORT_OUTBOUND, PORT_INBOUND, PORT_HBONE, PORT_DNS]
    p = subprocess.run(["unshare", "--net", sys.executable, "-c", SCRIPT, json.dumps(POD_SYSCTLS), json.dumps(ports)],
                       capture_output=True, text=True, timeout=60, cwd=root, env={**os.environ, "PYTHONPATH": str(root)})
    assert p.returncode == 0, p.stderr[-2000:]
    got = json.loads(p.stdout.strip().splitlines()[-1])
    assert got == {str(port): "refused: EADDRINUSE" for port in ports}, got
