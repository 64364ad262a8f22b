"""The bench's own lab: its spec, the files its pods need, bring-up/teardown, and running in pods.

The lab is named `ambit-bench` and keeps its state in a temporary directory, so it never touches
a user's `ambit lab`. Two nodes; servers (nginx serving 1 KiB + iperf3) on node2; clients on node1
(cross-node) and node2 (same-node); one namespace enrolled in the mesh and one not.

Commands run in a pod the way `ambit lab exec` runs them - join the pod's cgroup, then its netns -
because capture is per pod cgroup; we do it with a preexec_fn (setns) instead of spawning the CLI,
which would add ~0.3 s of Python start-up to every tool run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ambit.netns import preexec_enter
from ambitctl.lab import lab as labmod
from ambitctl.lab import spec as specmod
from ambitctl.lab import topology
from ambitctl.lab.topology import LabNames
from bench import tracing
from bench.plan import HTTP_PORT, IPERF_PORT, MESH_NS, PLAIN_NS, WEB_SERVICE

# AMBIT_BENCH_LAB_NAME: run beside another bench lab on the same machine (names must differ).
LAB_NAME = os.environ.get("AMBIT_BENCH_LAB_NAME", "ambit-bench")
ONE_KIB = b"x" * 1024


def nginx_conf(prefix: Path, www: Path, port: int = HTTP_PORT, version: str = "") -> str:
    """One worker, no logs, long keep-alive: the server must never be what limits the mesh.
    `version` adds an `x-version` response header (the L7 scenarios' servers say who answered)."""
    tmp = prefix / "tmp"
    return "\n".join([
        "worker_processes 1;", "master_process off;", "daemon off;", f"pid {prefix / 'nginx.pid'};",
        f"error_log {prefix / 'error.log'} warn;", "worker_rlimit_nofile 20000;",
        "events { worker_connections 8192; multi_accept on; }",
        "http {",
        "  access_log off;",
        f"  client_body_temp_path {tmp}; proxy_temp_path {tmp}; fastcgi_temp_path {tmp};",
        f"  uwsgi_temp_path {tmp}; scgi_temp_path {tmp};",
        "  keepalive_timeout 600s; keepalive_requests 100000000; client_header_timeout 600s;",
        "  tcp_nodelay on;",
        f"  server {{ listen {port} backlog=4096; root {www}; "
        + (f"add_header x-version {version} always; " if version else "") + "location / { } }",
        "}", ""])


def server_command(conf: Path, prefix: Path) -> list[str]:
    # One pod, two servers: iperf3 in the background, nginx in the foreground. The supervisor
    # stops a pod by its process group, which holds both.
    return ["sh", "-c", f"iperf3 -s -p {IPERF_PORT} & exec nginx -c {conf} -p {prefix}"]


def spec_dict(work: Path, l7: bool = False) -> dict[str, Any]:
    """The lab spec; writes each server pod's nginx.conf under `work`. With `l7`, also the L7
    scenarios' pods: web-v1/web-v2 (nginx, x-version header) in both namespaces, the `web` Service
    in the mesh namespace, and bench-plain/l7proxy (node1) where nginx/haproxy run as L7 proxies."""
    www = work / "www"
    www.mkdir(parents=True, exist_ok=True)
    (www / "1k").write_bytes(ONE_KIB)
    pods: list[dict[str, Any]] = []
    for ns in (PLAIN_NS, MESH_NS):
        prefix = work / "pods" / f"{ns}.server"
        (prefix / "tmp").mkdir(parents=True, exist_ok=True)
        conf = prefix / "nginx.conf"
        conf.write_text(nginx_conf(prefix, www))
        pods.append({"name": "server", "namespace": ns, "node": "node2", "serviceAccount": "server",
                     "labels": {"app": "server"}, "command": server_command(conf, prefix),
                     "ports": [{"name": "http", "containerPort": HTTP_PORT},
                               {"name": "iperf", "containerPort": IPERF_PORT}]})
        pods.append({"name": "client", "namespace": ns, "node": "node1", "serviceAccount": "client",
                     "labels": {"app": "client"}, "command": ["sleep", "infinity"]})
    pods.append({"name": "client-local", "namespace": MESH_NS, "node": "node2", "serviceAccount": "client",
                 "labels": {"app": "client"}, "command": ["sleep", "infinity"]})
    services: list[dict[str, Any]] = []
    if l7:
        for ns in (PLAIN_NS, MESH_NS):
            for version in ("v1", "v2"):
                prefix = work / "pods" / f"{ns}.web-{version}"
                (prefix / "tmp").mkdir(parents=True, exist_ok=True)
                conf = prefix / "nginx.conf"
                conf.write_text(nginx_conf(prefix, www, version=version))
                pods.append({"name": f"web-{version}", "namespace": ns, "node": "node2", "serviceAccount": "web",
                             "labels": {"app": WEB_SERVICE, "version": version},
                             "command": ["nginx", "-c", str(conf), "-p", str(prefix)],
                             "ports": [{"name": "http", "containerPort": HTTP_PORT}]})
        pods.append({"name": "l7proxy", "namespace": PLAIN_NS, "node": "node1", "serviceAccount": "l7proxy",
                     "labels": {"app": "l7proxy"}, "command": ["sleep", "infinity"]})
        if tracing.available():
            pods.append(tracing.receiver_pod())     # spans of ambit-waypoint-traced (bench/tracing.py)
        services.append({"name": WEB_SERVICE, "namespace": MESH_NS, "selector": {"app": WEB_SERVICE},
                         "ports": [{"name": "http", "port": HTTP_PORT, "targetPort": "http"}]})
    return {"nodes": 2,
            "namespaces": [{"name": PLAIN_NS}, {"name": MESH_NS, "labels": {"ambit.io/dataplane-mode": "ambient"}}],
            "pods": pods, "services": services}


@dataclass
class BenchLab:
    """A lab that is up: where its pods are and how to run things in them."""

    spec: specmod.LabSpec
    base: Path
    capture: str
    names: LabNames

    def pod(self, key: str) -> specmod.PodSpec:
        return self.spec.pod(key)

    def ip(self, key: str) -> str:
        return self.spec.pod(key).ip

    def preexec(self, key: str):  # noqa: ANN201 - a preexec_fn
        p = self.spec.pod(key)
        return preexec_enter(topology.NETNS_RUN_DIR / self.names.pod_netns(p.namespace, p.name),
                             self.names.pod_cgroup(p.node, p.namespace, p.name))

    def run(self, key: str, argv: Sequence[str], timeout: float, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        """Run a command in a pod and wait for it (stdout and stderr captured as text)."""
        return subprocess.run(list(argv), preexec_fn=self.preexec(key), capture_output=True, text=True,
                              timeout=timeout, cwd=cwd, stdin=subprocess.DEVNULL)

    def popen(self, key: str, argv: Sequence[str], **kw: Any) -> subprocess.Popen[str]:
        return subprocess.Popen(list(argv), preexec_fn=self.preexec(key), text=True, **kw)

    def ztunnel_cgroups(self) -> dict[str, Path]:
        return {n.name: self.names.component_cgroup(n.name, "ztunnel") for n in self.spec.nodes}

    def capture_state(self) -> dict[str, Any]:
        """Per pod, what the agents report about capture ("none" when no agent has it)."""
        try:
            pods = labmod.status(self.base)["pods"]
        except Exception as e:  # noqa: BLE001 - status is informative only
            return {"error": str(e)}
        return {f"{p['namespace']}/{p['name']}": p.get("capture", "none") for p in pods}


def is_captured(state: Any) -> bool:
    return state == "captured" or (isinstance(state, dict) and state.get("state") == "captured")


def wait_captured(lab: BenchLab, keys: Sequence[str], timeout: float = 20.0) -> dict[str, Any]:
    """Wait until the agents report each pod in `keys` captured; return the last capture state."""
    deadline = time.monotonic() + timeout
    while True:
        st = lab.capture_state()
        if all(is_captured(st.get(k)) for k in keys) or time.monotonic() > deadline:
            return st
        time.sleep(0.2)


def clear_leftovers(names: LabNames) -> list[str]:
    """Remove what a crashed earlier bench run left (only objects named after our own lab)."""
    if any(names.owns_netns(ns) for ns in topology.list_netns()) or names.cgroup_root.exists():
        return topology.teardown(names)
    return []


@contextmanager
def lab_up(work: Path, phase: str, name: str = LAB_NAME, wait_timeout: float = 60.0,
           l7: bool = False) -> Iterator[BenchLab]:
    """Bring the bench lab of a phase (bench/plan.py) up for the duration of the block; always tear
    it down."""
    capture = "iptables" if phase == "iptables" else "ebpf"
    names = LabNames(name)
    left = clear_leftovers(names)
    if left:
        print(f"  removed leftovers of an earlier bench lab: {len(left)} objects", flush=True)
    spec = specmod.parse(spec_dict(work, l7=l7), source="<bench spec>")
    base = work / f"lab-{phase}"
    saved = dict(os.environ)
    rcv = next((p for p in spec.pods if p.name == tracing.RECEIVER_POD), None)
    if rcv is not None:     # the supervisor, hence the waypoint, inherits the tracing settings
        tracing.set_sampling(tracing.sampling_file(work), "waypoint")
        os.environ.update(tracing.waypoint_env(rcv.ip, tracing.sampling_file(work)))
    try:
        try:
            st = labmod.up(spec, name=name, base=base, capture=capture, wait=False,
                           ztunnel_workers=0 if phase == "workers" else 1,
                           waypoint_workers=0 if phase == "workers" else 1)
        finally:
            os.environ.clear()
            os.environ.update(saved)
        labmod.wait_ready(st, base, timeout=wait_timeout)
        yield BenchLab(spec=spec, base=base, capture=capture, names=names)
    finally:
        save_logs(base, work / f"logs-{phase}")
        labmod.down(name, base, quiet=True)


def save_logs(base: Path, dest: Path) -> None:
    """Keep the lab's logs (lab down deletes them): they explain a failed scenario."""
    src = base / "logs"
    if src.exists():
        import shutil
        shutil.copytree(src, dest, dirs_exist_ok=True)


def python_argv(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]
