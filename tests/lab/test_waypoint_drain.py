"""A waypoint stopped (SIGTERM, as a rolling update of its Deployment stops the old pod) while
requests are in flight and clients hold idle keep-alive connections: every request is answered, and
every client connection is told to go away, HTTP/1 by `Connection: close` on its next response,
HTTP/2 by a GOAWAY that lets its stream finish, so the client's next request opens a new connection
(to the new pod) instead of failing on one the drain closes under it or cuts at its deadline.
docs/operations.md, "Waypoints: restarts and rolls"."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from tests.lab import drain_client
from tests.lab.labctl import AMBIT, REPO, running_lab
from tests.lab.test_waypoint import GATEWAY, SPEC, apply, status_of, waypoint_log, waypoints

pytestmark = pytest.mark.lab

DELAY = "2"     # the backend answers the in-flight requests this late: the SIGTERM comes meanwhile
DRAINING = "hand-off link to the supervisor closed"     # a worker's first step of its drain


def test_sigterm_answers_in_flight_and_next_requests_and_tells_their_connections_to_go(tmp_path_factory):
    with running_lab(tmp_path_factory.mktemp("wpd"), "wpd", SPEC, "waypoint-drain", "--waypoint-workers", "2") as lab:
        apply(lab, [GATEWAY], tmp_path_factory.mktemp("wpdcfg"), "gateway")
        lab.wait_for(lambda: [w for w in waypoints(lab) if w["ready"]], timeout=60, what="waypoint ready")
        lab.wait_for(lambda: status_of(lab, "default/frontend", "http://myapp/")[0] == 200, timeout=30,
                     interval=0.5, what="myapp through the waypoint")
        supervisor = waypoints(lab)[0]["pid"]
        client = subprocess.Popen([*AMBIT, "lab", "exec", "default/frontend", "--", sys.executable,
                                   drain_client.__file__, "myapp", "80", DELAY], env=lab.env, cwd=REPO,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert json.loads(client.stdout.readline() or "null") == {"sent": True}, client.stderr.read()
            before = waypoint_log(lab).count(DRAINING)
            os.kill(supervisor, signal.SIGTERM)
            lab.wait_for(lambda: waypoint_log(lab).count(DRAINING) >= before + 2, timeout=10,
                         what="both workers draining")
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
        # HTTP/2: a GOAWAY that covers the in-flight stream (id 1), which is then answered in full.
        assert got["h2"] == {"status": 200, "goaway_last_stream": 1, "ended": True}, got
