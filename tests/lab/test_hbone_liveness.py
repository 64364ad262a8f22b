"""A peer node that goes silent (the underlay partitioned: its packets are dropped, nothing is
reset) no longer leaves a mesh connection hanging: the client's ztunnel PINGs the HBONE connection,
gets no answer, closes it, and closes the app's connection, which reconnects instead of waiting for
TCP keepalive (half an hour). A quiet but healthy connection is kept through many PING intervals.
ambit/dataplane/hbone/liveness.py; the lab's ztunnels PING after 1 s of silence and give up after 2.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ambitctl.lab.components import ZTUNNEL_ARGS_ENV
from tests.lab.labctl import REPO, Lab, running_lab

pytestmark = pytest.mark.lab

SPEC = Path(__file__).parent / "specs" / "mesh.yaml"

# In the client pod: one keep-alive HTTP/1.1 connection to HOST:PORT. Each stdin line is a command:
# "req" sends a request and prints its status; "wait" blocks on the idle connection and prints how
# it ended ("reset", "eof", or "hung" after 60 s).
CLIENT = r'''
import json, socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
def req():
    s.sendall(b"GET / HTTP/1.1\r\nHost: echo\r\n\r\n")
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += s.recv(65536)
    head, _, body = buf.partition(b"\r\n\r\n")
    n = int([l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0])
    while len(body) < n:
        body += s.recv(65536)
    return int(head.split()[1])
for line in sys.stdin:
    if line.strip() == "req":
        print(json.dumps({"status": req()}), flush=True)
    else:
        s.settimeout(60)
        t0 = time.monotonic()
        try:
            end = "eof" if not s.recv(1) else "data"
        except ConnectionResetError:
            end = "reset"
        except TimeoutError:
            end = "hung"
        print(json.dumps({"end": end, "after": round(time.monotonic() - t0, 1)}), flush=True)
'''


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    env = {ZTUNNEL_ARGS_ENV: "--tunnel-ping-interval 1 --tunnel-ping-timeout 2"}
    with running_lab(tmp_path_factory.mktemp("live"), "live", SPEC, "hbone-liveness-lab", env=env) as lab:
        yield lab


def test_a_partitioned_peer_resets_the_idle_connection_and_a_healthy_one_is_kept(lab: Lab) -> None:
    pods = {f"{p['namespace']}/{p['name']}": p for p in lab.status()["pods"]}
    server = pods["demo/echo-v2"]                # node2; the client is on node1
    assert pods["demo/client"]["node"] != server["node"]
    underlay, port = f"{lab.name}.ul", f"ul-{server['node']}"
    client = subprocess.Popen(lab.exec_argv("demo/client", sys.executable, "-c", CLIENT, server["ip"], "8080"),
                              env=lab.env, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)

    def say(cmd: str) -> dict:
        client.stdin.write(cmd + "\n")
        client.stdin.flush()
        line = client.stdout.readline()
        assert line, client.stderr.read()
        return json.loads(line)

    try:
        assert say("req") == {"status": 200}
        # Quiet for many PING intervals and timeouts: the answered PINGs keep the connection.
        time.sleep(5)
        assert say("req") == {"status": 200}
        subprocess.run(["ip", "-n", underlay, "link", "set", port, "down"], check=True)
        got = say("wait")
        # Ended once the PING went unanswered (1 s of silence, then 2 s), not left hanging: closed
        # as istio/ztunnel closes an app's connection whose tunnel failed.
        assert got["end"] in ("eof", "reset"), got
        log = (lab.dir / "logs" / f"ztunnel-{pods['demo/client']['node']}.log").read_text(errors="replace")
        assert "no answer to a PING in 2s: closed, 1 tunnel(s) reset" in log
    finally:
        subprocess.run(["ip", "-n", underlay, "link", "set", port, "up"], check=False)
        client.kill()
        client.wait()
