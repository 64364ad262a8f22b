"""A pod's sandbox re-created at the same netns path with the same IP (same pod uid: a runtime
restarting a dead sandbox), with no change any view of the pods shows: the agent must capture the
new netns, and ztunnel serve it, as it did the old one. A lab of the module's own (`ztf`)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ambit import cgroups
from ambitctl.lab.topology import LabNames, pod_network
from tests.lab.conftest import MESH_SPEC
from tests.lab.labctl import Lab, running_lab
from tests.lab.test_agent import is_captured_now

pytestmark = pytest.mark.lab

POD, NODE = "demo/client", "node1"


@pytest.fixture(scope="module")
def zlab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with running_lab(tmp_path_factory.mktemp("ztf"), "ztf", MESH_SPEC, "agent-sandbox-lab") as lab:
        yield lab


def ipn(ns: str, *argv: str) -> str:
    return subprocess.run(["ip", "-n", ns, *argv], check=True, capture_output=True, text=True).stdout


def recreate_sandbox(lab: Lab, key: str, node: str) -> None:
    """What a runtime does for a dead sandbox: its processes gone, its netns deleted, a new one at
    the same path with the same address (the veth of the old one removed with it)."""
    names = LabNames(lab.name)
    ns, name = key.split("/")
    pns = names.pod_netns(ns, name)
    ip = lab.pod(key)["ip"]
    gw = json.loads(ipn(pns, "-j", "route", "show", "default"))[0]["gateway"]
    cgroups.kill_all(names.pod_cgroup(node, ns, name))
    ipn(pns, "link", "del", "eth0")                 # both ends: the address is free on the bridge
    subprocess.run(["ip", "netns", "del", pns], check=True)
    subprocess.run(["ip", "netns", "add", pns], check=True)
    pod_network(names.node_netns(node), pns, "vztf0", ip, gw)


def test_a_sandbox_re_created_at_the_same_path_and_ip_is_captured_again(zlab: Lab) -> None:
    url = f"http://{zlab.pod('demo/echo-v1')['ip']}:8080/"
    assert is_captured_now(zlab, POD, NODE, url), "positive control: captured before"
    netns = Path("/var/run/netns") / LabNames(zlab.name).pod_netns(*POD.split("/"))
    old = netns.stat().st_ino
    recreate_sandbox(zlab, POD, NODE)
    assert netns.stat().st_ino != old
    zlab.wait_for(lambda: is_captured_now(zlab, POD, NODE, url), timeout=15,
                  what=f"{POD}'s new netns captured (outbound through ztunnel)")
    assert any("sandbox re-created" in ln for ln in zlab.log("agent", NODE).splitlines())
