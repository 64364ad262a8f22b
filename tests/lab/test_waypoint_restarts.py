"""Restarts of a waypoint (two workers) with real traffic. docs/operations.md, "Waypoints: restarts
and rolls".

- Stopped (SIGTERM, as a rolling update of its Deployment stops the old pod) while requests are in
  flight and clients hold idle keep-alive connections: every request is answered, and every client
  connection is told to go away, HTTP/1 by `Connection: close` on its next response, HTTP/2 by a
  GOAWAY that refuses no stream (then the final one), so the client's next request opens a new
  connection (to the new pod) instead of failing on one the drain closes or refuses under it, or
  cuts at its deadline.
- Restarted while the controller (config stream and CA) is away: it serves at once from its config
  and certificate caches, as ztunnel does."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.lab import drain_client
from tests.lab.labctl import REPO, Lab, gone, running_lab
from tests.lab.test_waypoint import GATEWAY, SPEC, apply, status_of, waypoint_log, waypoints

pytestmark = pytest.mark.lab

DELAY = "2"     # the backend answers the in-flight requests this late: the SIGTERM comes meanwhile
DRAINING = "hand-off link to the supervisor closed"     # a worker's first step of its drain


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with running_lab(tmp_path_factory.mktemp("wpr"), "wpr", SPEC, "waypoint-restarts", "--waypoint-workers", "2") as lab:
        apply(lab, [GATEWAY], tmp_path_factory.mktemp("wprcfg"), "gateway")
        yield lab


def serving(lab: Lab) -> int:
    """The waypoint's pid once it is ready and a request through it is answered."""
    lab.wait_for(lambda: [w for w in waypoints(lab) if w["ready"] and w["pid"]], timeout=60, what="waypoint ready")
    lab.wait_for(lambda: status_of(lab, "default/frontend", "http://myapp/")[0] == 200, timeout=30,
                 interval=0.5, what="myapp through the waypoint")
    return waypoints(lab)[0]["pid"]


def test_sigterm_answers_in_flight_and_next_requests_and_tells_their_connections_to_go(lab: Lab) -> None:
    supervisor = serving(lab)
    client = subprocess.Popen(lab.exec_argv("default/frontend", sys.executable,
                                            drain_client.__file__, "myapp", "80", DELAY), env=lab.env, cwd=REPO,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert json.loads(client.stdout.readline() or "null") == {"sent": True}, client.stderr.read()
        before = waypoint_log(lab).count(DRAINING)
        os.kill(supervisor, signal.SIGTERM)
        lab.wait_for(lambda: waypoint_log(lab).count(DRAINING) >= before + 2, timeout=10, what="both workers draining")
        client.stdin.write("go\n")      # the idle connection's next request, during the drain
        client.stdin.flush()
        got = json.loads(client.stdout.readline() or "null")
    finally:
        client.kill()
        client.wait()
    assert got is not None
    # HTTP/1: the in-flight request is answered, and that answer closes the keep-alive connection.
    assert got["h1"] == {"status": 200, "connection": "close"}, got
    # An idle keep-alive connection is not closed under the client: its next request is served,
    # and that answer closes it.
    assert got["h1_idle"] == {"status": 200, "connection": "close"}, got
    # HTTP/2: first a GOAWAY that refuses no stream (RFC 9113 §6.8: the last stream id 2^31-1), so a
    # stream the client opens meanwhile (3, sent during the drain) is served too, as is the one in
    # flight (1); the final GOAWAY follows.
    assert got["h2"]["goaways"][:1] == [2**31 - 1] and got["h2"]["streams"] == {"1": 200, "3": 200}, got


def test_a_waypoint_restarted_while_the_controller_is_away_serves_from_its_caches(lab: Lab) -> None:
    old = serving(lab)
    try:
        lab.ambit("lab", "stop", "controller")
        lab.ambit("lab", "restart", "waypoint/default/waypoint")
        lab.wait_for(lambda: gone(old) and (waypoints(lab)[0]["pid"] or old) != old, timeout=20,
                     what="the waypoint restarted")
        # No config stream and no CA: what it serves is its cached config, with its cached certificate.
        lab.wait_for(lambda: status_of(lab, "default/frontend", "http://myapp/")[0] == 200, timeout=20,
                     interval=0.5, what="myapp through the restarted waypoint, the controller away")
    finally:
        lab.ambit("lab", "start", "controller")
        # back for the next test (its debug API answers): `--wait` needs it
        lab.wait_for(lambda: lab.ambit("status", "-o", "json", check=False).returncode == 0, timeout=30,
                     interval=0.5, what="the controller back")


def _mac(netns: str) -> str:
    return json.loads(subprocess.run(["ip", "-n", netns, "-j", "link", "show", "eth0"], capture_output=True,
                                     text=True, check=True).stdout)[0]["address"]


def _neighbour(netns: str, ip: str) -> str | None:
    out = json.loads(subprocess.run(["ip", "-n", netns, "-j", "neigh", "show", ip], capture_output=True,
                                    text=True, check=True).stdout)
    return out[0].get("lladdr") if out else None


def test_a_waypoint_applied_again_at_its_old_address_is_reached_at_once(lab: Lab) -> None:
    """Deleted and applied again, the waypoint gets its old address and a new MAC. A pod on its
    node that talked to the old one held the old MAC, and ztunnel dials from inside that pod's
    netns: its first tunnels timed out (10 s) until the kernel re-probed. The new pod announces
    itself (gratuitous ARP, as the CNI bridge plugin does), so the next request is served."""
    serving(lab)
    pods = {f"{p['namespace']}/{p['name']}": p for p in lab.status()["pods"]}
    client = pods["default/myapp-v3"]        # on node2, the waypoint's node: one bridge
    assert status_of(lab, "default/myapp-v3", "http://myapp/")[0] == 200
    before = waypoints(lab)[0]
    wp_netns = f"{lab.name}.default.{before['pod']}"
    old_mac = _mac(wp_netns)
    assert _neighbour(client["netns"], before["ip"]) == old_mac
    lab.ambit("delete", "gateway", "waypoint", "-n", "default", "--wait")
    lab.wait_for(lambda: not waypoints(lab), timeout=30, what="the waypoint removed")
    apply(lab, [GATEWAY], lab.dir, "gateway-again")
    lab.wait_for(lambda: [w for w in waypoints(lab) if w["ready"] and w["pid"]], timeout=60, what="waypoint ready")
    after = waypoints(lab)[0]
    assert after["ip"] == before["ip"]
    new_mac = _mac(wp_netns)
    assert new_mac != old_mac
    assert _neighbour(client["netns"], after["ip"]) == new_mac     # told, not re-probed
    code, body = status_of(lab, "default/myapp-v3", "http://myapp/")     # the first try, 5 s at most
    assert code == 200, body
