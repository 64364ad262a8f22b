"""A surge roll of one node's agent and ztunnel (`ambit lab roll node1 --surge`, what the node
DaemonSet's `maxSurge: 1, maxUnavailable: 0` does) under continuous traffic: no new connection
fails, and the long-lived one keeps working until the old ztunnel's drain ends, then is closed
cleanly (EOF, not a reset). docs/operations.md, "Rolling the node DaemonSet"."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.lab import surge_traffic

pytestmark = pytest.mark.lab

SPEC = Path(__file__).parent / "specs" / "surge.yaml"


def test_surge_roll_of_a_node_fails_no_new_connection(fresh_lab):
    lab = fresh_lab
    lab.up("--spec", str(SPEC))
    old = {c: lab.proc_pid(f"{c}/node1") for c in ("ztunnel", "agent")}
    traffic = surge_traffic.start(lab)
    try:
        began = time.time()
        rolled = lab.ambit("lab", "roll", "node1", "--surge", timeout=90)
        ended = time.time()
        assert "rolled (surge)" in rolled.stdout, rolled.stdout
        # traffic through the new node pod alone: a loaded machine makes fewer connections a second
        # (a fixed 0.5 s here saw none once), so wait for one
        lab.wait_for(lambda: [r for r in traffic.records() if r["kind"] == "short" and r["t"] > ended],
                     timeout=20, interval=0.2, what="a short connection after the roll")
    finally:
        lines, err = traffic.communicate(input="", timeout=30)
    recs = [json.loads(x) for x in lines.splitlines() if x.strip()]
    short = [r for r in recs if r["kind"] == "short"]
    long = [r for r in recs if r["kind"] == "long"]

    # The node's processes are the new pod's now, under the node's own ids.
    new = {c: lab.proc_pid(f"{c}/node1") for c in ("ztunnel", "agent")}
    assert all(new[c] and new[c] != old[c] for c in new), (old, new)
    assert "ztunnel/node1~surge" not in lab.status()["processes"]

    # Zero failed new connections, before, during and after the roll.
    failed = [r for r in short if not r["ok"]]
    assert failed == [], failed[:5]
    assert [r for r in short if began <= r["t"] <= ended], "no short connection was made during the roll"
    assert [r for r in short if r["t"] > ended], "no short connection was made after the roll"

    # The long-lived connection: one socket, served through the roll, then either still serving or
    # ended by the old ztunnel's drain with EOF, never a reset. An L4 drain knows no HTTP: its EOF
    # comes between two requests (RemoteDisconnected) or, on a loaded machine, inside a response
    # still being relayed (IncompleteRead); a reset would be ConnectionResetError.
    assert long and long[0]["ok"], long[:3]
    assert len({r["port"] for r in long if r["ok"]}) == 1
    assert [r for r in long if r["ok"] and r["t"] > began], "the long-lived connection did not outlive the roll's start"
    if not long[-1]["ok"]:
        assert long[-1]["errtype"] in ("RemoteDisconnected", "IncompleteRead"), long[-1]
    print(f"short connections: {len(short)}, long-lived: {len(long)} requests, ended {long[-1]}")
    log = lab.log("ztunnel", "node1")
    assert "stopping: listeners of" in log and "draining" in log

