"""The capture layer against the real kernel: eBPF programs, bpf_links, pins, netns and cgroups.

Each test gets a freshly loaded engine (or builds its own) on the lab of capture_fixtures.py, and
every engine is uninstalled and every pin purged afterwards, even when a test fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from agent.capture import AMBIT_MARK, CaptureEngine, PodCapture, podnet, purge
from agent.capture import iptables as ipt
from ambit import cgroups
from ambit.netns import preexec_enter
from tests.lab.capture_fixtures import (
    NODE_IP,
    P1_IP,
    P2_IP,
    PIN_BASE,
    CaptureLab,
    IdentityServer,
    Proc,
    connect_from,
    python_cmd,
    run_client,
    start_engine,
    start_ztunnel,
    sweep,
    wait_for,
)

pytestmark = pytest.mark.lab

NODE = "ambit-ct"
POD_UID = "ct-pod-1"
POD_PROGS = {"connect4", "connect6", "sendmsg4", "sendmsg6", "recvmsg4", "recvmsg6", "bind4", "bind6", "sockops", "peername4",
             "tc_in"}


# ---- fixtures ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def clab():
    clab = CaptureLab.create()
    servers = []
    try:
        servers += [
            IdentityServer(clab.node_ns, "0.0.0.0", 7000, "node-app"),
            IdentityServer(clab.node_ns, "0.0.0.0", 7003, "node-app-7003"),
            IdentityServer(clab.p1_ns, "127.0.0.1", 7001, "p1-loopback"),
            IdentityServer(clab.p1_ns, "0.0.0.0", 8080, "p1-app"),
            IdentityServer(clab.p1_ns, "0.0.0.0", 9100, "p1-metrics"),
            IdentityServer(clab.p2_ns, "0.0.0.0", 7000, "p2-app"),
        ]
        yield clab
    finally:
        for s in servers:
            s.close()
        sweep()


@pytest.fixture
def ztunnel(clab):
    zt = start_ztunnel(clab, clab.p1_ns)
    try:
        yield zt
    finally:
        zt.kill()


def p1_pod(clab: CaptureLab, **over) -> PodCapture:
    fields = dict(uid=POD_UID, netns_path=clab.p1_ns, cgroup_path=str(clab.p1_cg), pod_ip=P1_IP, node_ip=NODE_IP,
                  exclude_outbound_ports=[7003], exclude_outbound_cidrs=[f"{P2_IP}/31"],
                  exclude_inbound_ports=[9100], probe_ports=[8080])
    fields.update(over)
    return PodCapture(**fields)


@pytest.fixture
def engine(clab):
    eng = CaptureEngine(NODE, clab.zt_cg, node_netns=clab.node_ns)
    try:
        eng.load()
        eng.enrol(p1_pod(clab))
        yield eng
    finally:
        eng.uninstall()
        purge(PIN_BASE / NODE)


def bpftool(*args: str):
    """bpftool's listing, retried: `link show` / `prog show` fail (exit 255) when an object they
    listed is gone before they read it, which another lab's teardown on the other worker does."""
    for _ in range(4):
        r = subprocess.run(["bpftool", "-j", *args], capture_output=True, text=True)
        if r.returncode == 0:
            break
        time.sleep(0.1)
    r.check_returncode()
    return json.loads(r.stdout or "[]")


def node_programs(map_ids: set[int]) -> list[dict]:
    """Loaded programs that use one of this node's maps (other labs may run their own ambit_*)."""
    return [p for p in bpftool("prog", "show") if set(p.get("map_ids", [])) & map_ids]


def leftovers(prog_ids: set[int], map_ids: set[int], link_ids: set[int]) -> list[str]:
    progs = bpftool("prog", "show")
    out = [f"prog {p['id']} {p.get('name')}" for p in progs
           if p["id"] in prog_ids or (p.get("name", "").startswith("ambit_") and set(p.get("map_ids", [])) & map_ids)]
    out += [f"map {m['id']} {m.get('name')}" for m in bpftool("map", "show") if m["id"] in map_ids]
    out += [f"link {k['id']}" for k in bpftool("link", "show") if k["id"] in link_ids]
    return out


def assert_nothing_left(prog_ids: set[int], map_ids: set[int], link_ids: set[int], pin_root: Path) -> None:
    assert not pin_root.exists(), f"{pin_root} still exists"
    # The kernel frees programs and maps from RCU callbacks and a workqueue: give it a moment.
    wait_for(lambda: not leftovers(prog_ids, map_ids, link_ids), timeout=10,
             what=f"kernel objects to go: {leftovers(prog_ids, map_ids, link_ids)}")


def pinned_link_ids(pin_root: Path) -> dict[str, dict]:
    """Every link pin under a node root: path -> bpftool's view of the link."""
    by_id = {link["id"]: link for link in bpftool("link", "show")}
    out = {}
    for pin in pin_root.rglob("*"):
        if pin.is_file() and pin.parent.name != "maps":
            info = bpftool("link", "show", "pinned", str(pin))
            out[str(pin.relative_to(pin_root))] = by_id[info["id"]]
    return out


# ---- outbound ----------------------------------------------------------------------------------

def test_outbound_connect_is_redirected_with_original_destination(clab, engine, ztunnel):
    before = engine.stats()
    r = run_client(clab.p1_ns, clab.p1_cg, NODE_IP, 7000)
    assert r["reply"]["who"] == "ztunnel-out"
    assert r["reply"]["so_original_dst"] == [NODE_IP, 7000]      # answered by ambit_origdst
    assert r["reply"]["local"] == ["127.0.0.1", 15001]
    assert r["peer"] == [NODE_IP, 7000]                            # getpeername4 shows the real peer
    after = engine.stats()
    assert after["redirected"] - before["redirected"] == 1
    assert after["origdst_hit"] - before["origdst_hit"] == 2     # the double asks twice (raw + helper)


def test_outbound_v4_mapped_ipv6_connect_is_redirected(clab, engine, ztunnel):
    r = run_client(clab.p1_ns, clab.p1_cg, f"::ffff:{NODE_IP}", 7000, family=6)
    assert r["reply"]["who"] == "ztunnel-out"
    assert r["reply"]["orig"] == [NODE_IP, 7000]


@pytest.mark.parametrize("ip,port,who,stat", [
    ("127.0.0.1", 7001, "p1-loopback", "skip_loopback"),
    (P1_IP, 8080, "p1-app", "skip_own_ip"),
    (NODE_IP, 7003, "node-app-7003", "skip_port"),
    (P2_IP, 7000, "p2-app", "skip_cidr"),
])
def test_outbound_exemptions_go_direct(clab, engine, ztunnel, ip, port, who, stat):
    before = engine.stats()
    r = run_client(clab.p1_ns, clab.p1_cg, ip, port)
    assert r["reply"]["who"] == who
    assert engine.stats()[stat] - before[stat] == 1


def test_process_in_pod_cgroup_but_other_netns_is_not_redirected(clab, engine, ztunnel):
    r = run_client(clab.p2_ns, clab.p1_cg, NODE_IP, 7000)
    assert r["reply"]["who"] == "node-app"
    assert r["reply"]["peer"][0] == P2_IP


def test_original_dst_entries_are_removed_when_connections_close(clab, engine, ztunnel):
    for _ in range(5):
        assert run_client(clab.p1_ns, clab.p1_cg, NODE_IP, 7000)["reply"]["who"] == "ztunnel-out"
    # ztunnel's side closed first, so the app's sockets reach CLOSE and sockops deletes the entries.
    wait_for(lambda: engine.original_dst_entries() == 0, what="ambit_port_dst to drain")
    assert engine.stats()["sockops_cleaned"] >= 5


def test_no_ztunnel_listener_outbound_and_inbound_fail_closed(clab, engine):
    # Outbound with no 15001 listener: refused, never silently sent around the mesh.
    assert "ConnectionRefused" in run_client(clab.p1_ns, clab.p1_cg, NODE_IP, 7000)["error"]
    # Inbound with no 15006 listener: dropped, never delivered to the app around ztunnel.
    before = engine.stats()["inbound_no_listener"]
    with pytest.raises(TimeoutError):
        connect_from(clab.p2_ns, P1_IP, 8080, timeout=1.5)
    assert engine.stats()["inbound_no_listener"] > before


# ---- inbound -----------------------------------------------------------------------------------

def test_inbound_is_steered_to_ztunnel_with_original_destination(clab, engine, ztunnel):
    before = engine.stats()["inbound_assigned"]
    r = connect_from(clab.p2_ns, P1_IP, 8080)
    assert r["reply"]["who"] == "ztunnel-in"
    assert r["reply"]["local"] == [P1_IP, 8080]        # getsockname() is the original destination
    assert r["reply"]["orig"] == [P1_IP, 8080]
    assert r["reply"]["peer"] == [P2_IP, r["local"][1]]
    assert engine.stats()["inbound_assigned"] > before


def test_inbound_exemptions_reach_their_listener(clab, engine, ztunnel):
    assert connect_from(clab.p2_ns, P1_IP, 15008)["reply"]["who"] == "hbone"          # HBONE not stolen
    assert connect_from(clab.node_ns, P1_IP, 8080)["reply"]["who"] == "p1-app"        # node IP: probes
    assert connect_from(clab.p2_ns, P1_IP, 9100)["reply"]["who"] == "p1-metrics"      # excluded port
    stats = engine.stats()
    assert stats["inbound_skip_node"] >= 1 and stats["inbound_skip_port"] >= 2


def test_source_preserving_delivery_over_lo_is_not_recaptured(clab, engine, ztunnel):
    """ztunnel's delivery to the app, from the client's IP (IP_TRANSPARENT + AMBIT_MARK), reaches
    the app with the client as peer, its replies come back over lo, and TC does not steal it."""
    sysctl, rule, route = podnet.delivery_state(clab.p1_ns)
    assert sysctl and rule and route
    before = engine.stats()["inbound_assigned"]
    r = connect_from(clab.p1_ns, P1_IP, 8080, bind=(P2_IP, 0), mark=AMBIT_MARK, transparent=True)
    assert r["reply"]["who"] == "p1-app"                 # the app itself, not ztunnel's 15006
    assert r["reply"]["peer"][0] == P2_IP                # the client's IP is preserved
    assert r["reply"]["mark"] == AMBIT_MARK              # tcp_fwmark_accept: replies route via lo
    assert engine.stats()["inbound_assigned"] == before
    # Without the mark the app's SYN-ACK leaves by eth0 towards the real client: no connection.
    with pytest.raises(OSError):
        connect_from(clab.p1_ns, P1_IP, 8080, bind=(P2_IP, 0), transparent=True, timeout=1.5)


# ---- lifecycle ---------------------------------------------------------------------------------

def test_enrol_again_refreshes_exclusions_without_duplicate_links(clab, engine, ztunnel):
    links_before = pinned_link_ids(PIN_BASE / NODE)
    engine.enrol(p1_pod(clab, exclude_outbound_ports=[7000], exclude_outbound_cidrs=[]))
    assert run_client(clab.p1_ns, clab.p1_cg, NODE_IP, 7000)["reply"]["who"] == "node-app"      # new port
    assert run_client(clab.p1_ns, clab.p1_cg, NODE_IP, 7003)["reply"]["who"] == "ztunnel-out"   # old port gone
    assert run_client(clab.p1_ns, clab.p1_cg, P2_IP, 7003)["reply"]["who"] == "ztunnel-out"     # old CIDR gone
    assert pinned_link_ids(PIN_BASE / NODE) == links_before
    assert engine.enrolled() == {POD_UID}


def test_restart_readopts_links_without_gap_or_duplicates(clab, ztunnel):
    pod = p1_pod(clab)
    root = PIN_BASE / NODE
    eng_b = None
    old = start_engine(clab, NODE, [pod.__dict__])
    loop = None
    try:
        old_progs = set(old.ready["progs"].values())
        map_ids = set(old.ready["maps"].values())
        links_a = pinned_link_ids(root)
        assert {Path(p).name for p in links_a} == POD_PROGS | {"getsockopt"}
        assert {link["prog_id"] for link in links_a.values()} <= old_progs
        # An app connecting all through the restart.
        loop = Proc(python_cmd("client-loop", NODE_IP, "7000", "0.02"), clab.p1_ns, clab.p1_cg)
        time.sleep(0.3)
        old.kill()                                    # the agent dies hard
        time.sleep(0.3)
        eng_b = CaptureEngine(NODE, clab.zt_cg)
        eng_b.load()                                  # adopts: bpf_link_update to its programs
        time.sleep(0.3)
        results = loop.lines()
        loop = None
        assert len(results) >= 10
        assert [r for r in results if r.get("reply", {}).get("who") != "ztunnel-out"] == []
        assert eng_b.enrolled() == {POD_UID}
        new_progs = eng_b.program_ids()
        links_b = pinned_link_ids(root)
        # Same links (ids unchanged), now running the new programs.
        assert {k: v["id"] for k, v in links_b.items()} == {k: v["id"] for k, v in links_a.items()}
        for pin, link in links_b.items():
            assert link["prog_id"] == new_progs[Path(pin).name]
        # Exactly one copy of each program for this node, and the old ones are gone.
        progs = node_programs(map_ids)
        names = sorted(p["name"] for p in progs)
        assert names == sorted(set(names)) and len(names) == 13   # 12 + ambit_tc_host (loaded, unattached here)
        assert not {p["id"] for p in progs} & old_progs
        assert run_client(clab.p1_ns, clab.p1_cg, NODE_IP, 7000)["reply"]["who"] == "ztunnel-out"
    finally:
        if loop is not None:
            loop.kill()
        old.kill()
        if eng_b is not None:
            eng_b.uninstall()
        purge(root)


def test_both_ztunnels_of_a_surge_roll_are_exempt_until_the_old_cgroup_goes(clab):
    """The old node pod's agent registered its ztunnel; the new pod's agent loads beside it: both
    ztunnels keep SO_ORIGINAL_DST (a link per cgroup), and once the old pod's cgroup is deleted
    the set forgets it."""
    root = PIN_BASE / NODE
    old_cg = clab.cg_root / "zt-old"
    cgroups.create(old_cg)
    old = new = old_zt = new_zt = None
    try:
        old = CaptureEngine(NODE, old_cg, node_netns=clab.node_ns)
        old.load()
        old.enrol(p1_pod(clab))
        old_zt = Proc(python_cmd("ztunnel", clab.p1_ns), None, old_cg)
        assert run_client(clab.p1_ns, clab.p1_cg, NODE_IP, 7000)["reply"]["so_original_dst"] == [NODE_IP, 7000]

        new = CaptureEngine(NODE, clab.zt_cg, node_netns=clab.node_ns)
        new.load()                  # the new node pod's agent, while the old one still runs
        ids = {os.stat(old_cg).st_ino, os.stat(clab.zt_cg).st_ino}
        zt_links = {k: v for k, v in pinned_link_ids(root).items() if k.startswith("ztunnel/")}
        assert set(zt_links) == {f"ztunnel/{i}/getsockopt" for i in ids}
        assert {v["prog_id"] for v in zt_links.values()} == {new.program_ids()["getsockopt"]}
        # The old ztunnel still gets its original destinations after the new agent loaded.
        assert run_client(clab.p1_ns, clab.p1_cg, NODE_IP, 7000)["reply"]["so_original_dst"] == [NODE_IP, 7000]
        old_zt.kill()
        old_zt = None
        new_zt = Proc(python_cmd("ztunnel", clab.p1_ns), None, clab.zt_cg)
        assert run_client(clab.p1_ns, clab.p1_cg, NODE_IP, 7000)["reply"]["so_original_dst"] == [NODE_IP, 7000]
        old.close()                 # the old agent stops (capture stays pinned)

        assert new.sync_ztunnels() == sorted([str(old_cg), str(clab.zt_cg)])   # its cgroup still exists
        old_cg.rmdir()              # the old node pod is deleted
        assert new.sync_ztunnels() == [str(clab.zt_cg)]
        assert [k for k in pinned_link_ids(root) if k.startswith("ztunnel/")] == \
            [f"ztunnel/{os.stat(clab.zt_cg).st_ino}/getsockopt"]
        assert run_client(clab.p1_ns, clab.p1_cg, NODE_IP, 7000)["reply"]["so_original_dst"] == [NODE_IP, 7000]
    finally:
        for z in (old_zt, new_zt):
            if z is not None:
                z.kill()
        for e in (new, old):
            if e is not None:
                e.uninstall()
        purge(root)
        cgroups.remove_tree(old_cg)


def test_unenrol_then_uninstall_leave_nothing(clab, ztunnel):
    root = PIN_BASE / NODE
    eng = CaptureEngine(NODE, clab.zt_cg, node_netns=clab.node_ns)
    try:
        eng.load()
        eng.enrol(p1_pod(clab))
        prog_ids = set(eng.program_ids().values())
        map_ids = set(eng.map_ids().values())
        link_ids = {v["id"] for v in pinned_link_ids(root).values()}
        pod_links = {v["id"] for k, v in pinned_link_ids(root).items() if k.startswith("pods/")}
        assert run_client(clab.p1_ns, clab.p1_cg, NODE_IP, 7000)["reply"]["who"] == "ztunnel-out"

        eng.unenrol(POD_UID)
        assert eng.enrolled() == set()
        assert not (root / "pods" / POD_UID).exists()
        assert not {link["id"] for link in bpftool("link", "show")} & pod_links
        assert podnet.delivery_state(clab.p1_ns) == (False, False, False)
        assert run_client(clab.p1_ns, clab.p1_cg, NODE_IP, 7000)["reply"]["who"] == "node-app"
        assert connect_from(clab.p2_ns, P1_IP, 8080)["reply"]["who"] == "p1-app"

        eng.uninstall()
        assert_nothing_left(prog_ids, map_ids, link_ids, root)
    finally:
        eng.uninstall()
        purge(root)


def test_purge_after_sigkilled_engine_removes_everything(clab):
    root = PIN_BASE / NODE
    pod = p1_pod(clab)
    old = start_engine(clab, NODE, [pod.__dict__])
    try:
        prog_ids = set(old.ready["progs"].values())
        map_ids = set(old.ready["maps"].values())
        link_ids = {v["id"] for v in pinned_link_ids(root).values()}
        old.kill()
        assert node_programs(map_ids), "pinned links keep the programs alive after the agent died"
        purge(root)
        assert_nothing_left(prog_ids, map_ids, link_ids, root)
        assert podnet.delivery_state(clab.p1_ns) == (False, False, False)
        assert run_client(clab.p1_ns, clab.p1_cg, NODE_IP, 7000)["reply"]["who"] == "node-app"
    finally:
        old.kill()
        purge(root)


def test_clsact_fallback_captures_inbound_is_readopted_and_removed(clab, ztunnel):
    root = PIN_BASE / NODE
    first = CaptureEngine(NODE, clab.zt_cg, tc_attach="clsact")
    eng = CaptureEngine(NODE, clab.zt_cg, tc_attach="clsact")
    try:
        first.load()
        first.enrol(p1_pod(clab))
        assert not (root / "pods" / POD_UID / "tc_in").exists()
        old_tc = first.program_ids()["tc_in"]
        assert podnet.clsact_prog_ids(clab.p1_ns) == [old_tc]
        assert connect_from(clab.p2_ns, P1_IP, 8080)["reply"]["who"] == "ztunnel-in"
        first.close()                                   # as if that agent had exited
        eng.load()                                      # replaces the filter's program
        assert podnet.clsact_prog_ids(clab.p1_ns) == [eng.program_ids()["tc_in"]]
        wait_for(lambda: old_tc not in {p["id"] for p in bpftool("prog", "show")}, what="old tc program to go")
        assert connect_from(clab.p2_ns, P1_IP, 8080)["reply"]["who"] == "ztunnel-in"
        eng.uninstall()
        assert podnet.clsact_prog_ids(clab.p1_ns) == []
        assert connect_from(clab.p2_ns, P1_IP, 8080)["reply"]["who"] == "p1-app"
    finally:
        first.close()
        eng.uninstall()
        purge(root)


# ---- iptables baseline -------------------------------------------------------------------------

def test_iptables_mode_redirects_both_ways_and_is_removed(clab, ztunnel):
    root = PIN_BASE / NODE
    eng = CaptureEngine(NODE, clab.zt_cg, mode="iptables")
    try:
        eng.load()
        assert eng.program_ids() == {}                  # no BPF programs in this mode
        eng.enrol(p1_pod(clab))
        r = run_client(clab.p1_ns, clab.p1_cg, NODE_IP, 7000)
        assert r["reply"]["who"] == "ztunnel-out"
        assert r["reply"]["so_original_dst"] == [NODE_IP, 7000]   # conntrack's answer
        assert run_client(clab.p1_ns, clab.p1_cg, NODE_IP, 7003)["reply"]["who"] == "node-app-7003"
        assert run_client(clab.p1_ns, clab.p1_cg, P2_IP, 7000)["reply"]["who"] == "p2-app"
        r = connect_from(clab.p2_ns, P1_IP, 8080)
        assert r["reply"]["who"] == "ztunnel-in" and r["reply"]["orig"] == [P1_IP, 8080]
        assert connect_from(clab.p2_ns, P1_IP, 15008)["reply"]["who"] == "hbone"
        assert connect_from(clab.node_ns, P1_IP, 8080)["reply"]["who"] == "p1-app"
        r = connect_from(clab.p1_ns, P1_IP, 8080, bind=(P2_IP, 0), mark=AMBIT_MARK, transparent=True)
        assert r["reply"]["who"] == "p1-app" and r["reply"]["peer"][0] == P2_IP
        # ztunnel's own connections (its cgroup) are not redirected.
        zt_client = subprocess.run(python_cmd("client", NODE_IP, "7000"), capture_output=True, text=True,
                                   preexec_fn=preexec_enter(clab.p1_ns, clab.zt_cg), timeout=30)
        assert json.loads(zt_client.stdout)["reply"]["who"] == "node-app"
        assert eng.enrolled() == {POD_UID}
        eng.uninstall()
        assert not ipt.present(clab.p1_ns)
        assert run_client(clab.p1_ns, clab.p1_cg, NODE_IP, 7000)["reply"]["who"] == "node-app"
        assert not root.exists()
    finally:
        eng.uninstall()
        purge(root)


def test_bad_pod_fields_are_rejected_by_name(clab, engine):
    with pytest.raises(ValueError, match="pod_ip"):
        engine.enrol(p1_pod(clab, pod_ip="10.77.0"))
    with pytest.raises(ValueError, match="exclude_outbound_cidrs"):
        engine.enrol(p1_pod(clab, exclude_outbound_cidrs=["banana"]))
    with pytest.raises(ValueError, match="netns_path"):
        engine.enrol(p1_pod(clab, netns_path="/var/run/netns/ambit-ct-missing"))
