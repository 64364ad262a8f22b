"""Issue 16, race-free pod start: pods started while the lab runs go through the lab's container
runtime (ambitctl/lab/runtime.py), which runs the node's CNI chain as containerd would, with the
node agent's `ambit-cni` chained in. An app that connects the instant it starts must be captured
and tunnelled every time; with the watch path alone (no plugin call) some of those first
connections leave uncaptured, which is what the plugin is for.

"Captured and tunnelled" is read from the source node's ztunnel access log (an outbound record
whose source workload is the new pod); the app itself checks its request was answered. The runtime
reports the pod Running right after the app starts (a kubelet takes longer, up to its 1 s PLEG
relist): the most favourable case for the watch path, which still misses.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ambitctl.lab.runtime import Pod, Runtime
from tests.lab.labctl import Lab

pytestmark = pytest.mark.lab

STARTS = 100            # through the plugin: every one must be captured
WATCH_STARTS = 20       # watch path alone: enough to see it miss
PARALLEL = 2           # the machine's cores: more only contends

# The app: curl, which connects within milliseconds of its start (a Python app would give the watch
# path a head start of its interpreter's start-up).
def app(dest: str) -> list[str]:
    return ["curl", "-sS", "-o", "/dev/null", "--fail", "-m", "5", f"http://{dest}:8080/first"]


def start_pods(lab: Lab, prefix: str, n: int, cni: bool, first_host: int) -> list[str]:
    """Start `n` pods on node1 that each run the app once; returns the names whose app failed.
    Each pod gets an address of its own (node1's .first_host onwards): this test is about capture
    at start, not about an address reused seconds after its previous pod left."""
    rt = Runtime.for_lab(lab.dir)
    dest = lab.pod("demo/echo-v2")["ip"]
    net = rt.nodes["node1"]["pod_cidr"].rsplit(".", 1)[0]

    def one(i: int) -> str | None:
        pod = Pod(name=f"{prefix}-{i}", namespace="demo", node="node1", ip=f"{net}.{first_host + i}",
                  service_account="client", labels={"app": prefix})
        rt.create(pod, cni=cni)
        try:
            proc = rt.start(pod, app(dest))
            return None if proc.wait(timeout=30) == 0 else pod.name
        finally:
            rt.remove(pod, cni=cni)

    with ThreadPoolExecutor(PARALLEL) as ex:
        return [r for r in ex.map(one, range(n)) if r]


def captured(lab: Lab, prefix: str) -> set[str]:
    return {r["src.workload"] for r in lab.access_log("node1")
            if r["direction"] == "outbound" and str(r.get("src.workload", "")).startswith(prefix + "-")}


def test_the_agent_chained_its_plugin_into_the_node_cni_configuration(lab: Lab) -> None:
    conf = json.loads((Path(lab.dir) / "node1" / "cni" / "net.d" / "10-ambit-lab.conflist").read_text())
    assert [p["type"] for p in conf["plugins"]] == ["ambit-lab-veth", "ambit-cni"]
    assert (Path(lab.dir) / "node1" / "cni" / "bin" / "ambit-cni").stat().st_mode & 0o111


def test_every_first_connection_of_a_pod_started_through_cni_is_captured(lab: Lab) -> None:
    failed = start_pods(lab, "cni", STARTS, cni=True, first_host=100)
    want = {f"cni-{i}" for i in range(STARTS)}
    got = lab.wait_for(lambda: captured(lab, "cni") >= want and captured(lab, "cni"), timeout=20,
                       what="an outbound access-log record for every CNI-started pod")
    assert got == want
    # And each app's first request was answered through its tunnel.
    records = {name: [r for r in lab.access_log("node1") if r.get("src.workload") == name] for name in failed}
    assert not failed, f"apps whose first request failed, with their access-log records: {records}"


def test_the_watch_path_alone_lets_first_connections_escape(lab: Lab) -> None:
    # An escaped connection either gets its answer directly, outside the mesh, or breaks when capture
    # lands on the pod mid-connection (its replies are no longer let in): both are misses.
    broken = start_pods(lab, "watch", WATCH_STARTS, cni=False, first_host=100 + STARTS)
    time.sleep(1.0)                         # ztunnel logs a connection when it closes: let it
    missed = WATCH_STARTS - len(captured(lab, "watch"))
    print(f"watch path alone: {missed} of {WATCH_STARTS} first connections uncaptured ({len(broken)} broken)")
    assert missed > 0
