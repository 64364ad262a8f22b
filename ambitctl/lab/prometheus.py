"""A real Prometheus (Debian's `prometheus` package) for the lab: `ambit lab up --prometheus`.

The lab's components serve their metrics where a host process cannot reach them over TCP: each
ztunnel on :15020 in its node's netns, each waypoint in its pod's netns, and all of them (and the
controller) on unix sockets in the lab dir. Prometheus scrapes only HTTP, so the lab runs two
supervised processes in the host netns, in cgroups of the lab's (so `lab down` kills them):

- `metrics-bridge` (ambitctl/lab/metricsbridge.py) on 127.0.0.1:<port>: `GET /controller`,
  `/ztunnel/<node>`, `/waypoint/<ns>/<name>` answer with that component's exposition, read from its
  unix socket (503 when it is down, so Prometheus's `up` says so);
- `prometheus` on 127.0.0.1:<port>, data in `<labdir>/prometheus/data` (removed by `lab down`).

Targets come from Prometheus's file-based service discovery: `<labdir>/prometheus/targets/
{controller,ztunnel,waypoint}.json`, rewritten by the supervisor whenever the lab's state changes (a
waypoint Gateway applied or deleted adds or removes its waypoint), with Kubernetes-like target
labels: `namespace`, `pod`, `node`, `component`, `app` (and `gateway` for waypoints).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from ambit import cgroups
from ambitctl.lab.state import LabState, ProcSpec
from ambitctl.lab.topology import LabNames

BINARY = "prometheus"
SCRAPE_INTERVAL = "2s"      # short, so a test (or a user) sees traffic within seconds
SYSTEM_NAMESPACE = "ambit-system"
JOBS = ("controller", "ztunnel", "waypoint")


def home(base: Path) -> Path:
    return base / "prometheus"


def config_file(base: Path) -> Path:
    return home(base) / "prometheus.yml"


def targets_dir(base: Path) -> Path:
    return home(base) / "targets"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def url(st: LabState) -> str:
    """Prometheus's base URL, or "" when the lab runs none."""
    p = st.prometheus
    return f"http://127.0.0.1:{p['port']}" if p.get("port") else ""


def config(base: Path, interval: str = SCRAPE_INTERVAL) -> str:
    """prometheus.yml: one job per component, each fed by its file_sd file."""
    lines = ["# written by `ambit lab up --prometheus`; targets in targets/*.json (rewritten by the lab)",
             "global:", f"  scrape_interval: {interval}", f"  scrape_timeout: {interval}",
             f"  evaluation_interval: {interval}", "scrape_configs:"]
    for job in JOBS:
        lines += [f"- job_name: {job}", "  file_sd_configs:",
                  f"  - files: [{json.dumps(str(targets_dir(base) / (job + '.json')))}]",
                  "    refresh_interval: 5s"]
    return "\n".join(lines) + "\n"


def targets(st: LabState, bridge: str) -> dict[str, list[dict[str, Any]]]:
    """job -> file_sd target groups for what the lab runs now."""
    def group(path: str, labels: dict[str, str]) -> dict[str, Any]:
        return {"targets": [bridge], "labels": {"__metrics_path__": path, **labels}}
    out: dict[str, list[dict[str, Any]]] = {j: [] for j in JOBS}
    out["controller"].append(group("/controller", {
        "instance": "controller", "namespace": SYSTEM_NAMESPACE, "pod": "ambit-controller", "node": "",
        "component": "controller", "app": "ambit-controller"}))
    for n in st.spec["nodes"]:
        out["ztunnel"].append(group(f"/ztunnel/{n['name']}", {
            "instance": f"ztunnel-{n['name']}", "namespace": SYSTEM_NAMESPACE, "pod": f"ztunnel-{n['name']}",
            "node": n["name"], "component": "ztunnel", "app": "ztunnel"}))
    for w in st.waypoints:
        if w.get("removing"):
            continue
        out["waypoint"].append(group(f"/waypoint/{w['namespace']}/{w['name']}", {
            "instance": f"{w['namespace']}/{w['pod']}", "namespace": w["namespace"], "pod": w["pod"],
            "node": w["node"], "component": "waypoint", "app": "waypoint", "gateway": w["name"]}))
    return out


def write_targets(base: Path, st: LabState) -> None:
    """Rewrite the file_sd files (atomically: Prometheus never reads half a file)."""
    if not st.prometheus:
        return
    d = targets_dir(base)
    d.mkdir(parents=True, exist_ok=True)
    for job, groups in targets(st, f"127.0.0.1:{st.prometheus['bridge_port']}").items():
        f = d / f"{job}.json"
        text = json.dumps(groups, indent=1)
        try:
            if f.read_text() == text:
                continue
        except FileNotFoundError:
            pass
        tmp = d / f".{job}.json.tmp"
        tmp.write_text(text)
        os.replace(tmp, f)


def enable(st: LabState, base: Path, names: LabNames) -> None:
    """Add Prometheus and the metrics bridge to the lab's processes (the caller saves the state)."""
    binary = shutil.which(BINARY)
    if binary is None:
        raise RuntimeError("prometheus is not installed: `apt-get install prometheus` (make setup does it)")
    h = home(base)
    (h / "data").mkdir(parents=True, exist_ok=True)
    st.prometheus = {"port": free_port(), "bridge_port": free_port()}
    config_file(base).write_text(config(base))
    write_targets(base, st)
    st.processes.append(ProcSpec(
        id="metrics-bridge", component="metrics-bridge",
        cgroup=str(cgroups.create(names.component_cgroup(None, "metrics-bridge"))),
        argv=[sys.executable, "-m", "ambitctl.lab.metricsbridge", str(base), str(st.prometheus["bridge_port"])]))
    st.processes.append(ProcSpec(
        id="prometheus", component="prometheus",
        cgroup=str(cgroups.create(names.component_cgroup(None, "prometheus"))),
        argv=[binary, f"--config.file={config_file(base)}", f"--storage.tsdb.path={h / 'data'}",
              f"--web.listen-address=127.0.0.1:{st.prometheus['port']}", "--storage.tsdb.retention.time=1d",
              "--log.level=warn"]))


def ready(st: LabState) -> bool:
    """Prometheus answers /-/ready (its TSDB is open and it scrapes)."""
    u = url(st)
    if not u:
        return True
    try:
        with urllib.request.urlopen(u + "/-/ready", timeout=1.0) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def remove(base: Path) -> None:
    """Its config, targets and TSDB (`lab down`)."""
    shutil.rmtree(home(base), ignore_errors=True)


def query(base_url: str, promql: str, timeout: float = 10.0) -> dict[str, Any]:
    """GET /api/v1/query: the `data` of a successful answer (raises with Prometheus's error otherwise)."""
    q = urllib.parse.urlencode({"query": promql})
    try:
        with urllib.request.urlopen(f"{base_url}/api/v1/query?{q}", timeout=timeout) as r:
            body = json.loads(r.read())
    except urllib.error.HTTPError as e:
        body = json.loads(e.read() or b"{}")
    if body.get("status") != "success":
        raise ValueError(f"{promql}: {body.get('errorType', '?')}: {body.get('error', body)}")
    return dict(body["data"])
