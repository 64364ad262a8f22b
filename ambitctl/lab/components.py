"""Which processes a lab runs, and how to ask them whether they are ready.

Apps run in their pod's cgroup and netns. The mesh components (controller, agents, ztunnels) are
added here as they exist; each node's agent and ztunnel run in that node's netns, in cgroups of
their own (ztunnel's cgroup is where the getsockopt program is attached).
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from ambit import cgroups
from ambit.dataplane.settings import WATCHDOG_KILL_AFTER
from ambitctl.lab import dns, runtime
from ambitctl.lab.spec import LabSpec
from ambitctl.lab.state import LabState, ProcSpec
from ambitctl.lab.topology import NETNS_RUN_DIR, LabNames


def zds_socket(base: Path, node: str) -> Path:
    return base / node / "zds.sock"


def agent_status_file(base: Path, node: str) -> Path:
    return base / f"agent-{node}.status.json"


def agent_config_cache(base: Path, node: str) -> Path:
    """The agent's copy of its last good Workloads: a restart during a controller outage keeps enrolling."""
    return base / node / "agent-config.json"


def controller_socket(base: Path) -> Path:
    """The controller's gRPC socket (config stream + CA): a file, so that ztunnels in node netns
    reach it without any route to the host."""
    return base / "controller.sock"


def debug_token_file(base: Path) -> Path:
    """The lab's admin token for the controller's debug API (the controller creates it, 0600)."""
    return base / "debug-token"


def controller_metrics_socket(base: Path) -> Path:
    """The controller's metrics (Prometheus text, `ambit_config_*`, `ambit_ca_*`) on a unix socket."""
    return base / "controller.metrics.sock"


def ztunnel_admin_socket(base: Path, node: str) -> Path:
    return base / node / "admin.sock"


def ztunnel_metrics_socket(base: Path, node: str) -> Path:
    """The node's ztunnel metrics (Prometheus text) on a unix socket, scrapable from the host."""
    return base / node / "metrics.sock"


def node_token_file(base: Path, node: str) -> Path:
    """The node's CA credential; the controller writes it (controller/ca_setup.py), ztunnel reads it."""
    from controller.ca_setup import token_file
    return token_file(base, node)


def mesh_config_file(base: Path) -> Path:
    """The controller's mesh config (trustDomainAliases); absent by default, watched when present."""
    return base / "mesh-config.yaml"


def controller_root_file(base: Path) -> Path:
    """The lab's bootstrap trust: the controller's root, pinned by every client (what a cluster's
    ambit-root-cert ConfigMap is). The lab writes it, not the controller's channel."""
    return base / "controller-root.pem"


CONTROLLER_SA = "ambit-controller"


def controller_identity(trust_domain: str) -> str:
    from ambit.configclient.tls import controller_identity as identity
    return identity(trust_domain, "ambit-system", CONTROLLER_SA)


def controller_trust(base: Path, trust_domain: str | None = None) -> Any:
    """What a lab client checks the controller against (ambit.configclient.tls.ControllerTrust);
    the trust domain defaults to the running lab's."""
    from ambit.configclient.tls import ControllerTrust
    if trust_domain is None:
        from ambitctl.lab import state
        st = state.load(base)
        trust_domain = (st.spec.get("trust_domain") if st is not None else None) or "cluster.local"
    return ControllerTrust(controller_root_file(base), controller_identity(trust_domain))


def controller_tls_args(base: Path, trust_domain: str) -> list[str]:
    """The flags every lab client of the controller (agent, ztunnel, waypoint) gets."""
    return ["--controller-root-cert", str(controller_root_file(base)),
            "--controller-identity", controller_identity(trust_domain)]


def bootstrap_ca(base: Path, trust_domain: str) -> Path:
    """Make (or keep) the lab's CA before the controller starts, and write its root bundle where
    clients pin it: the bootstrap trust comes from the lab, never from the controller's socket."""
    from controller.ca import DirectoryStorage, load_or_create
    material = load_or_create(DirectoryStorage(base / "ca"), trust_domain)
    path = controller_root_file(base)
    path.write_text("".join(material.trust_bundle().pems()))
    return path


def controller_process(names: LabNames, base: Path, trust_domain: str = "cluster.local") -> ProcSpec:
    bootstrap_ca(base, trust_domain)
    cg = cgroups.create(names.component_cgroup(None, "controller"))  # the topology makes only system/
    return ProcSpec(
        id="controller", component="controller", cgroup=str(cg),
        argv=[sys.executable, "-m", "controller", "--lab-store", str(base / "store.json"),
              "--listen", f"unix:{controller_socket(base)}", "--ca-dir", str(base / "ca"),
              # a CA edited in base/ca is taken up in seconds, and new roots are written where clients pin them
              "--ca-reload-interval", "2", "--root-cert-file", str(controller_root_file(base)),
              "--node-token-dir", str(base), "--trust-domain", trust_domain,
              "--controller-service-account", CONTROLLER_SA,
              "--mesh-config", str(mesh_config_file(base)),
              "--metrics-socket", str(controller_metrics_socket(base)),
              "--debug-token-file", str(debug_token_file(base)),
              # the lab's JWKS server rotates keys in seconds, not Istio's 20 minutes
              "--jwks-refresh", "2"])


# Extra flags for every node's ztunnel (e.g. its limits, docs/operations.md), for tests that need a
# lab with other limits than the defaults. ztunnel refuses a bad flag at start-up, so the lab fails
# to come up rather than run without it.
ZTUNNEL_ARGS_ENV = "AMBIT_LAB_ZTUNNEL_ARGS"
# On SIGTERM a lab ztunnel drains its open connections this long (a cluster's default is 20 s, in a
# 30 s terminationGracePeriod); the supervisor's SIGKILL comes 2 s later.
ZTUNNEL_DRAIN = 3.0
# An agent told to stop may uninstall every pod's capture first (--cleanup-on-delete): give it time.
AGENT_STOP_GRACE = 10.0
AGENT_ARGS_ENV = "AMBIT_LAB_AGENT_ARGS"     # the same for every node's agent (e.g. --cleanup-on-delete)
WAYPOINT_ARGS_ENV = "AMBIT_LAB_WAYPOINT_ARGS"    # the same for every waypoint (e.g. --metrics-expiry)


def processes(spec: LabSpec, names: LabNames, base: Path, capture: str = "ebpf",
              cert_ttl: float | None = None, ztunnel_workers: int = 1) -> list[ProcSpec]:
    procs: list[ProcSpec] = [controller_process(names, base, spec.trust_domain), dns.process(spec, names, base)]
    py = sys.executable
    for n in spec.nodes:
        node_ns = str(NETNS_RUN_DIR / names.node_netns(n.name))
        zt_cg = names.component_cgroup(n.name, "ztunnel")
        procs.append(ProcSpec(
            id=f"ztunnel/{n.name}", component="ztunnel", node=n.name, netns=node_ns, cgroup=str(zt_cg),
            argv=[py, "-m", "ztunnel", "--node", n.name, "--zds-socket", str(zds_socket(base, n.name)),
                  "--controller", f"unix:{controller_socket(base)}",
                  "--config-cache", str(base / n.name / "config-cache.json"),
                  "--admin-socket", str(ztunnel_admin_socket(base, n.name)),
                  "--node-token-file", str(node_token_file(base, n.name)),
                  "--cert-cache", str(base / n.name / "certs"),
                  "--trust-domain", spec.trust_domain, *controller_tls_args(base, spec.trust_domain),
                  "--metrics-socket", str(ztunnel_metrics_socket(base, n.name)),
                  "--report-interval", "3", "--termination-drain", str(ZTUNNEL_DRAIN),
                  "--workers", str(ztunnel_workers), "--watchdog-kill-after", f"{WATCHDOG_KILL_AFTER:g}",
                  *(["--cert-ttl", str(cert_ttl)] if cert_ttl else []),
                  *dns_upstream_args(spec),
                  *shlex.split(os.environ.get(ZTUNNEL_ARGS_ENV, ""))],
            stop_grace=ZTUNNEL_DRAIN + 2, needs=[str(node_token_file(base, n.name))]))
        procs.append(ProcSpec(
            id=f"agent/{n.name}", component="agent", node=n.name, netns=node_ns,
            cgroup=str(names.component_cgroup(n.name, "agent")),
            argv=[py, "-m", "agent", "--node", n.name, "--controller", f"unix:{controller_socket(base)}",
                  "--node-token-file", str(node_token_file(base, n.name)),
                  *controller_tls_args(base, spec.trust_domain),
                  "--config-cache", str(agent_config_cache(base, n.name)), "--pod-paths", "controller",
                  "--zds-socket", str(zds_socket(base, n.name)), "--ztunnel-cgroup", str(zt_cg),
                  "--pin-base", str(names.bpf_pin_base), "--node-ip", n.gateway_ip, "--capture", capture,
                  "--status-file", str(agent_status_file(base, n.name)),
                  # The node's CNI chain (ambitctl/lab/runtime.py): pods started while the lab runs are
                  # captured while their sandbox is created.
                  "--cni-socket", str(runtime.cni_socket(base, n.name)),
                  "--cni-conf-dir", str(runtime.cni_conf_dir(base, n.name)),
                  "--cni-bin-dir", str(runtime.cni_bin_dir(base, n.name)),
                  "--cni-lab-store", str(base / "store.json"),
                  *shlex.split(os.environ.get(AGENT_ARGS_ENV, ""))],
            stop_grace=AGENT_STOP_GRACE, needs=[str(node_token_file(base, n.name))]))
    for p in spec.pods:
        procs.append(ProcSpec(
            id=f"pod/{p.namespace}/{p.name}", component="app", node=p.node, argv=list(p.command),
            cgroup=str(names.pod_cgroup(p.node, p.namespace, p.name)),
            netns=str(NETNS_RUN_DIR / names.pod_netns(p.namespace, p.name)),
            hosts_netns=names.pod_netns(p.namespace, p.name),
            env={"POD_NAME": p.name, "POD_NAMESPACE": p.namespace, "POD_IP": p.ip, "NODE_NAME": p.node,
                 "POD_LABELS": json.dumps(p.labels)}))
    return procs


def dns_upstream_args(spec: LabSpec) -> list[str]:
    """ztunnel's DNS proxy forwards what it does not answer to the lab's cluster DNS (ztunnel's own
    /etc/resolv.conf, the host's, knows no Service)."""
    return ["--dns-upstream", dns.address(spec.underlay_cidr)]


def listening_ports(pid: int) -> set[int]:
    """TCP ports in LISTEN state in the netns of `pid` (read from its /proc/<pid>/net/tcp)."""
    ports: set[int] = set()
    for f in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{f}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) > 3 and cols[3] == "0A":
                ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    return ports


def not_ready(st: LabState, base: Path) -> list[str]:
    """Processes that run but are not ready yet: apps whose declared ports are not listening."""
    from ambitctl.lab.state import runtime
    rt = runtime(base)
    from ambitctl.lab import prometheus
    waiting = []
    if not prometheus.ready(st):
        waiting.append("prometheus")
    if not controller_ready(base):
        waiting.append("controller")
    if any(p.id == "dns" for p in st.processes) and not dns_ready(rt.get("dns", {}).get("pid")):
        waiting.append("dns")
    for n in st.spec["nodes"]:
        if not _zds_of(st, n["name"]).exists() or not ztunnel_ready(base, n["name"]):
            waiting.append(f"ztunnel/{n['name']}")
        if not agent_ready(base, n["name"], rt.get(f"agent/{n['name']}", {}).get("pid")):
            waiting.append(f"agent/{n['name']}")
    for p in st.spec["pods"]:
        pid = rt.get(f"pod/{p['namespace']}/{p['name']}", {}).get("pid")
        want = {int(x["containerPort"]) for x in p.get("ports") or []}
        if pid and want and not want <= listening_ports(pid):
            waiting.append(f"pod/{p['namespace']}/{p['name']}")
    return waiting


def dns_ready(pid: int | None) -> bool:
    """Does the lab's dnsmasq `pid` listen on UDP port 53 (in its netns)?"""
    if not pid:
        return False
    try:
        lines = Path(f"/proc/{pid}/net/udp").read_text().splitlines()[1:]
    except OSError:
        return False
    return any(len(c := line.split()) > 1 and c[1].endswith(":0035") for line in lines)


def controller_ready(base: Path) -> bool:
    """Does the controller accept on its socket? It binds only once its first config is translated;
    a connect, as the manifest's tcpSocket probe does, not the socket file's presence: a controller
    killed hard leaves the file behind, with nothing listening."""
    import socket
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(str(controller_socket(base)))
        except OSError:
            return False
    return True


def agent_ready(base: Path, node: str, pid: int | None) -> bool:
    """Is the node's agent process `pid` ready: has it, itself, written the node's status file (its
    first reconcile done: eBPF loaded, pods handed to ztunnel)? The writer-stamp check
    (ambit/readymark.py), naming the process: a file left by an agent that died, or written by the
    other agent of a surge roll, is not this one's readiness. The same moment as the manifest's
    probe, /healthz/ready (agent/health.py), which the lab's agents serve only when given
    --metrics-port (AGENT_ARGS_ENV): a surge roll runs two agents of a node in its netns."""
    from ambit import readymark
    return pid is not None and readymark.file_problem(agent_status_file(base, node), pid) is None


def _zds_of(st: LabState, node: str) -> Path:
    """The node's agent -> ztunnel socket, as its ztunnel was told (a surge roll gives each node pod
    generation its own)."""
    argv = st.proc(f"ztunnel/{node}").argv
    return Path(argv[argv.index("--zds-socket") + 1])


def remove_runtime_files(base: Path, nodes: list[str]) -> None:
    """What the mesh components leave in the lab dir (sockets, node tokens, config caches, the CA,
    agent status files); `lab down` calls this so a later lab never starts from a stale cache."""
    import shutil

    from ztunnel.workers import SHORT_RUN_BASE, run_dir
    for n in nodes:
        # ztunnel workers' sockets, when the node dir was too deep for them (ztunnel/workers.py):
        # one directory per zds socket of any generation (a surge roll names its own).
        for zds in {zds_socket(base, n), *(base / n).glob("zds*.sock")}:
            d = run_dir(zds)
            if d.parent == SHORT_RUN_BASE:
                shutil.rmtree(d, ignore_errors=True)
        shutil.rmtree(base / n, ignore_errors=True)
        agent_status_file(base, n).unlink(missing_ok=True)
    shutil.rmtree(base / "ca", ignore_errors=True)
    controller_root_file(base).unlink(missing_ok=True)
    shutil.rmtree(base / "waypoints", ignore_errors=True)     # waypoint admin/metrics sockets
    controller_socket(base).unlink(missing_ok=True)
    controller_metrics_socket(base).unlink(missing_ok=True)
    debug_token_file(base).unlink(missing_ok=True)            # the debug API's admin token
    from ambitctl.lab import prometheus, tracing
    dns.remove(base)                                           # the cluster DNS's names
    prometheus.remove(base)                                    # its config, targets and TSDB
    tracing.remove(base)                                       # the collector's query socket


def ztunnel_ready(base: Path, node: str) -> bool:
    """Is the node's ztunnel ready: its admin /healthz/ready, the endpoint the kubelet's probe asks
    (config synced from the controller, a valid certificate for every identity of the pods it
    serves, not stopping). Without the certificates a lab would be "up" while its first mTLS
    connections still wait for the CA."""
    from ambit.dataplane import endpoint
    try:
        return endpoint.get_json(ztunnel_admin_socket(base, node), "/healthz/ready", timeout=1.0)[0] == 200
    except (OSError, ValueError):
        return False


def capture_status(st: LabState, base: Path) -> dict[str, Any]:
    """Per pod "NS/NAME" -> capture state, from what each node's agent reports."""
    out: dict[str, Any] = {}
    for f in sorted(base.glob("agent-*.status.json")):
        try:
            out.update(json.loads(f.read_text()).get("pods", {}))
        except (OSError, json.JSONDecodeError):
            continue
    return out
