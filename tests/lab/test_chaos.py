"""Chaos soak: random component faults, combined and repeated, under live traffic, checked against
the invariants a platform team relies on (docs/operations.md, "Chaos soak").

One lab (tests/lab/specs/chaos.yaml): `frontend` calls `myapp` through the waypoint (L7) and `vault`
over HBONE (L4); `vault` is under PeerAuthentication STRICT and an AuthorizationPolicy that DENYs
service account `denied`; `outsider`, outside the mesh, probes `vault` in plaintext; `denied` probes
it through the mesh. A seeded random generator (the seed is printed; AMBIT_CHAOS_SEED replays it)
picks faults: SIGKILL/SIGTERM of a ztunnel, an agent, the controller or the waypoint, SIGSTOP of
one for a few seconds, a configuration change (a VirtualService, or an update of the DENY policy
that keeps its rule) while a component restarts, a pod of service account `denied` deleted and
recreated. The lab's supervisor restarts what dies, as the kubelet does. Checked all along:

- security never fails open: `vault`'s own access log never shows a request from `outsider` or from
  a `denied` pod, and neither ever gets an HTTP answer from it;
- availability recovers: whenever the lab is ready again, every client succeeds within RECOVERY s;
- no leaks: after the last fault, BPF pins and map entries, netns and the lab's processes are back
  at what they were before the chaos, and the long-lived components' descriptors did not grow;
- the proxies ACK the controller's current config version;
- no component logged a Python traceback.

A failure names the seed and the faults applied, in order. Bounded (CI) by default: about 30 s of
faults; AMBIT_SOAK=full runs AMBIT_CHAOS_SECONDS (default 900).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from ambit import cgroups
from ambitctl.lab import components, state
from ambitctl.lab.runtime import Pod, Runtime
from tests.lab.labctl import REPO, Lab, running_lab
from tests.support import soak

pytestmark = [pytest.mark.lab, pytest.mark.soak]

SPEC = Path(__file__).parent / "specs" / "chaos.yaml"
SECONDS = float(os.environ.get("AMBIT_CHAOS_SECONDS", "900")) if soak.is_full() else 30.0
RECOVERY = 30.0         # seconds a client may take to succeed again once its path is ready
NODES = ("node1", "node2")
WAYPOINT = "waypoint/default/waypoint"
TARGETS = ("ztunnel/node1", "ztunnel/node2", "agent/node1", "agent/node2", "controller", WAYPOINT)
DENIED_SA = "cluster.local/ns/default/sa/denied"
TRACEBACK = "Traceback (most recent call last)"

GATEWAY = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
           "metadata": {"name": "waypoint", "namespace": "default", "labels": {"ambit.io/waypoint-for": "service"},
                        "annotations": {"lab.ambit.io/node": "node2"}},
           "spec": {"gatewayClassName": "ambit-waypoint",
                    "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}}
STRICT = {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
          "metadata": {"name": "strict", "namespace": "secure"}, "spec": {"mtls": {"mode": "STRICT"}}}


def deny_policy(extra_port: int | None = None) -> dict[str, Any]:
    """The DENY of service account `denied` on `vault`; `extra_port` adds a second rule, so an update
    of the policy (a new version of it) keeps the first rule all along."""
    rules: list[dict[str, Any]] = [{"from": [{"source": {"principals": [DENIED_SA]}}]}]
    if extra_port:
        rules.append({"to": [{"operation": {"ports": [str(extra_port)]}}]})
    return {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": "deny-denied", "namespace": "secure"},
            "spec": {"selector": {"matchLabels": {"app": "vault"}}, "action": "DENY", "rules": rules}}


def virtual_service(n: int) -> dict[str, Any]:
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "myapp-chaos", "namespace": "default"},
            "spec": {"hosts": ["myapp"], "http": [
                {"headers": {"request": {"set": {"x-chaos": str(n)}}},
                 "route": [{"destination": {"host": "myapp"}}]}]}}


# -- traffic ------------------------------------------------------------------------------------------

@dataclass
class Record:
    at: float           # time.time() when the request ended
    code: str           # HTTP status, "000" when none came back
    path: str


def probe_loop(url: str, tag: str, *, tries: int, timeout: float, pause: float) -> str:
    """A shell loop of curl requests to `url`/`tag`-N (`tries` of them, 0: for ever), printing one
    line per request: its end time, the HTTP status ("000": no answer) and the path."""
    head = f"i=0; while [ {tries} -eq 0 ] || [ $i -lt {tries} ]; do i=$((i+1)); "
    return (head + f"c=$(curl -s -o /dev/null -m {timeout} -w '%{{http_code}}' {url}/{tag}-$i); "
            f"echo \"$(date +%s.%N) $c /{tag}-$i\"; sleep {pause}; done")


def parse_records(text: str) -> list[Record]:
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3:
            out.append(Record(float(parts[0]), parts[1], parts[2]))
    return out


@dataclass
class Client:
    """A curl loop in a pod, run through `ambit lab exec`; each line it prints is one request."""
    name: str
    pod: str
    url: str            # a path `/<name>-<n>` is appended
    must_fail: bool     # a probe that must never get an answer (plaintext to STRICT, a DENYed source)
    records: list[Record] = field(default_factory=list)
    proc: subprocess.Popen[str] | None = None

    def script(self) -> str:
        return probe_loop(self.url, self.name, tries=0, timeout=2, pause=0.2)

    def start(self, lab: Lab, lock: threading.Lock) -> None:
        self.proc = subprocess.Popen(lab.exec_argv(self.pod, "sh", "-c", self.script()),
                                     env=lab.env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True, start_new_session=True)
        threading.Thread(target=self._read, args=(lock,), daemon=True).start()

    def _read(self, lock: threading.Lock) -> None:
        assert self.proc and self.proc.stdout
        for line in self.proc.stdout:
            got = parse_records(line)
            with lock:
                self.records.extend(got)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def ok_since(self, t: float) -> bool:
        return any(r.at > t and r.code.startswith("2") for r in list(self.records))


# -- the lab's state ----------------------------------------------------------------------------------

def procs(lab: Lab) -> dict[str, Any]:
    return json.loads((lab.dir / "procs.json").read_text())


def pid_of(lab: Lab, proc: str) -> int | None:
    return procs(lab).get(proc, {}).get("pid")


def not_ready(lab: Lab) -> list[str]:
    """What the lab still waits for: its components' readiness (components.not_ready) and the
    waypoint's, plus any supervised process not running."""
    st = state.load(lab.dir)
    assert st is not None
    waiting = components.not_ready(st, lab.dir)
    run = procs(lab)
    waiting += [p for p in TARGETS if not run.get(p, {}).get("pid")]
    try:
        if not components.ztunnel_ready(lab.dir, "node2") or not waypoint_ready(lab):
            waiting.append(WAYPOINT)
    except (OSError, ValueError):
        waiting.append(WAYPOINT)
    return waiting


def waypoint_ready(lab: Lab) -> bool:
    from ambit.dataplane import endpoint
    sock = lab.dir / "waypoints" / "default.waypoint.admin.sock"
    try:
        return endpoint.get_json(sock, "/healthz/ready", timeout=1.0)[0] == 200
    except (OSError, ValueError):
        return False


def fd_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def host_state(lab: Lab) -> dict[str, int]:
    """What the agent and the lab create per pod and per process: pins, map entries, netns, and the
    processes in the lab's cgroups."""
    out: dict[str, int] = {}
    for node in NODES:
        base = Path("/sys/fs/bpf/ambit") / lab.name / node
        out[f"{node}/pins"] = len(os.listdir(base / "pods"))
        for m in ("ambit_pods", "ambit_pod_ips"):
            p = subprocess.run(["bpftool", "-j", "map", "dump", "pinned", str(base / "maps" / m)],
                               capture_output=True, text=True)
            out[f"{node}/{m}"] = len(json.loads(p.stdout)) if p.returncode == 0 else -1
    out["netns"] = sum(1 for n in os.listdir("/var/run/netns") if n.startswith(lab.name))
    root = Path(cgroups.find_cgroup2_mount())
    n = 0
    for d, _, files in os.walk(root):
        if lab.name in d and "cgroup.procs" in files:
            try:
                n += len((Path(d) / "cgroup.procs").read_text().split())
            except OSError:
                pass
    out["processes"] = n
    return out


def tracebacks(lab: Lab) -> dict[str, int]:
    out = {}
    for log in sorted((lab.dir / "logs").glob("*.log")):
        n = log.read_text(errors="replace").count(TRACEBACK)
        if n:
            out[log.name] = n
    return out


def proxy_sync(lab: Lab) -> list[dict[str, Any]]:
    p = lab.ambit("proxy-status", "-o", "json", check=False)
    try:
        return json.loads(p.stdout)["proxies"]
    except (ValueError, KeyError):
        return []


def converged(rows: list[dict[str, Any]]) -> bool:
    kinds = sorted(r["kind"] for r in rows if r["connected"])
    return (kinds.count("ztunnel") == 2 and kinds.count("waypoint") == 1
            and all(r["acked_version"] == r["current_version"] and r["state"] not in ("NACK", "STALE")
                    for r in rows if r["connected"]))


# -- the soak -----------------------------------------------------------------------------------------

class Chaos:
    def __init__(self, lab: Lab, seed: int) -> None:
        self.lab = lab
        self.seed = seed
        self.rng = random.Random(seed)
        self.t0 = time.time()
        self.faults: list[str] = []
        self.violations: list[str] = []
        self.lock = threading.Lock()
        self.checked: dict[str, int] = {}
        self.log_offset = 0
        self.rt = Runtime.for_lab(lab.dir)
        self.vs_applied = False
        self.policy_version = 0
        self.ghosts = 0
        self.ghost_records: list[Record] = []

    # what happened, for the failure message
    def note(self, what: str) -> None:
        line = f"+{time.time() - self.t0:6.1f}s {what}"
        self.faults.append(line)
        print(line, flush=True)

    def violate(self, what: str) -> None:
        if what not in self.violations:
            self.violations.append(what)
            print(f"VIOLATION {what}", flush=True)

    def report(self) -> str:
        return (f"chaos seed {self.seed} (replay: AMBIT_CHAOS_SEED={self.seed}"
                f"{' AMBIT_SOAK=full AMBIT_CHAOS_SECONDS=' + str(int(SECONDS)) if soak.is_full() else ''})\n"
                f"violations:\n  " + "\n  ".join(self.violations[:20]) +
                "\nfaults:\n  " + "\n  ".join(self.faults))

    # the invariants checked all along
    def check_security(self, clients: list[Client]) -> None:
        with self.lock:
            for c in clients:
                for r in c.records[self.checked.get(c.name, 0):]:
                    if c.must_fail and r.code != "000":
                        self.violate(f"+{r.at - self.t0:.1f}s {c.name}: {r.path} answered {r.code}")
                self.checked[c.name] = len(c.records)
            for r in self.ghost_records:
                if r.code != "000":
                    self.violate(f"+{r.at - self.t0:.1f}s recreated pod: {r.path} answered {r.code}")
            self.ghost_records.clear()
        log = self.lab.dir / "logs"
        text = "".join(f.read_text(errors="replace") for f in log.glob("*vault*.log"))
        for line in text.splitlines():
            if any(tag in line for tag in ("/plain-", "/denied-", "/ghost-")) and "control" not in line:
                self.violate(f"vault's app took: {line.strip()[:200]}")

    def settle(self, clients: list[Client], what: str) -> None:
        """Wait for the lab to be ready, then for every client to succeed within RECOVERY s."""
        deadline = time.time() + 90
        while not_ready(self.lab) and time.time() < deadline:
            time.sleep(0.3)
        left = not_ready(self.lab)
        if left:
            self.violate(f"+{time.time() - self.t0:.1f}s {what}: not ready after 90 s: {left}")
            return
        ready_at = time.time()
        while time.time() < ready_at + RECOVERY:
            if all(c.ok_since(ready_at) for c in clients if not c.must_fail):
                return
            time.sleep(0.3)
        stuck = {c.name: Counter(r.code for r in list(c.records) if r.at > ready_at)
                 for c in clients if not c.must_fail and not c.ok_since(ready_at)}
        self.violate(f"+{ready_at - self.t0:.1f}s {what}: ready, but {sorted(stuck)} did not succeed "
                               f"within {RECOVERY:.0f} s (their answers since: {stuck})")

    # the faults
    def signal(self, proc: str, sig: signal.Signals) -> None:
        pid = pid_of(self.lab, proc)
        if not pid:
            self.note(f"{sig.name} {proc}: not running")
            return
        self.note(f"{sig.name} {proc} (pid {pid})")
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        self.signal(self.rng.choice(TARGETS), self.rng.choice([signal.SIGKILL, signal.SIGTERM]))

    def pause(self) -> None:
        proc = self.rng.choice(TARGETS)
        pid = pid_of(self.lab, proc)
        if not pid:
            return
        secs = self.rng.uniform(1, 5)
        self.note(f"SIGSTOP {proc} (pid {pid}) for {secs:.1f}s")
        try:
            os.kill(pid, signal.SIGSTOP)
            time.sleep(secs)
        finally:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass

    def config_in_restart(self) -> None:
        self.signal(self.rng.choice(TARGETS), self.rng.choice([signal.SIGKILL, signal.SIGTERM]))
        time.sleep(self.rng.uniform(0, 1.5))
        if self.rng.random() < 0.5:
            self.vs_applied = not self.vs_applied
            verb = "apply" if self.vs_applied else "delete"
            self.note(f"{verb} VirtualService myapp-chaos")
            self.lab.ambit(verb, "-f", "-", input=yaml.safe_dump(virtual_service(len(self.faults))))
        else:
            self.policy_version += 1
            port = 9000 + self.policy_version % 2
            self.note(f"update AuthorizationPolicy deny-denied (second rule: port {port})")
            self.lab.ambit("apply", "-f", "-", input=yaml.safe_dump(deny_policy(port)))

    def _bare_pod(self, pod: Pod) -> bool:
        """Create `pod` through the lab's runtime (CNI ADD included); False when that failed."""
        self.note(f"create pod {pod.key} on {pod.node} (uid {pod.uid[:8]})")
        try:
            self.rt.create(pod)
        except Exception as e:  # noqa: BLE001 - the CNI ADD fails while the agent is down (closed)
            self.note(f"create {pod.key} failed: {type(e).__name__}: {str(e)[:200]}")
            self.rt.remove(pod)
            return False
        return True

    def _keep_probes(self, out: str) -> None:
        with self.lock:
            self.ghost_records.extend(parse_records(out))

    def _pod_ip(self, node: str, host: int) -> str:
        return f"{self.rt.nodes[node]['pod_cidr'].rsplit('.', 1)[0]}.{host}"

    def recreate_pod(self) -> None:
        """A pod of service account `denied` deleted and recreated (new uid, same name and IP: one the
        spec's pods (.10 up) and the waypoints (.200 up) do not use): the DENY must hold for it from
        its first packet."""
        node = self.rng.choice(NODES)
        self.ghosts += 1
        pod = Pod(name="ghost", namespace="default", node=node, ip=self._pod_ip(node, 150),
                  service_account="denied", labels={"app": "ghost"})
        vault = self.lab.pod("secure/vault")["ip"]
        if not self._bare_pod(pod):
            return
        try:
            script = probe_loop(f"http://{vault}:8080", f"ghost-{self.ghosts}", tries=6, timeout=2, pause=0.3)
            self._keep_probes(self.rt.start(pod, ["sh", "-c", script], stdout=subprocess.PIPE,
                                            stderr=subprocess.DEVNULL).communicate(timeout=60)[0].decode())
        finally:
            self.note(f"delete pod {pod.key}")
            self.rt.remove(pod)

    def recreate_server_pod(self) -> None:
        """A pod of `vault`'s (namespace `secure`, label app=vault: under STRICT and the DENY) created
        anew, its app listening at once, and probed in plaintext from outside the mesh and by the
        DENYed source while it starts: its own access log must show neither."""
        node = self.rng.choice(NODES)
        self.ghosts += 1
        n = self.ghosts
        pod = Pod(name="vault-ghost", namespace="secure", node=node, ip=self._pod_ip(node, 151),
                  service_account="vault", labels={"app": "vault", "version": "ghost"})
        if not self._bare_pod(pod):
            return
        app_log = self.lab.dir / f"vault-ghost-{n}.log"
        try:
            with app_log.open("w") as out:
                app = self.rt.start(pod, [sys.executable, "-m", "ambitctl.lab.apps.echo", "--port", "8080"],
                                    cwd=REPO, env={**os.environ, "ECHO_ACCESS_LOG": "1"},
                                    stdout=out, stderr=subprocess.STDOUT)
            probes = [subprocess.Popen(self.lab.exec_argv(src, "sh", "-c",
                                        probe_loop(f"http://{pod.ip}:8080", f"{tag}-vg{n}", tries=8, timeout=1,
                                                   pause=0.2)),
                                       env=self.lab.env, cwd=REPO, stdout=subprocess.PIPE,
                                       stderr=subprocess.DEVNULL, text=True)
                      for src, tag in (("legacy/outsider", "plain"), ("default/denied", "denied"))]
            for pr in probes:
                self._keep_probes(pr.communicate(timeout=60)[0])
            app.kill()
            app.wait()
        finally:
            self.note(f"delete pod {pod.key}")
            self.rt.remove(pod)
        for line in app_log.read_text(errors="replace").splitlines():
            if f"-vg{n}-" in line:
                self.violate(f"secure/vault-ghost's app took: {line.strip()[:200]}")

    def run(self, clients: list[Client]) -> None:
        faults: list[tuple[float, Callable[[], None]]] = [
            (4, self.kill), (2, self.pause), (2, self.config_in_restart), (1, self.recreate_pod),
            (1, self.recreate_server_pod)]
        end = time.time() + SECONDS
        while time.time() < end:
            fault = self.rng.choices([f for _, f in faults], weights=[w for w, _ in faults])[0]
            fault()
            time.sleep(self.rng.uniform(0.2, 3))
            self.check_security(clients)
            if self.rng.random() < 0.3:        # else the next fault lands on a lab still recovering
                self.settle(clients, "mid-chaos")
        self.note("last fault done")


@pytest.fixture(scope="module")
def clab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with running_lab(tmp_path_factory.mktemp("chaos"), "chaos", SPEC, "chaos-lab") as lab:
        lab.ambit("apply", "-f", "-", input=yaml.safe_dump(GATEWAY))
        lab.wait_for(lambda: waypoint_ready(lab), timeout=60, interval=0.3, what="waypoint ready")
        yield lab


def vip(lab: Lab, name: str) -> str:
    return next(s["vip"] for s in lab.status()["services"] if s["name"] == name)


@pytest.mark.timeout(SECONDS + 400)
def test_random_faults_under_traffic_never_fail_open_and_recover(clab: Lab) -> None:
    lab = clab
    seed = int(os.environ.get("AMBIT_CHAOS_SEED") or random.SystemRandom().randrange(2**32))
    print(f"chaos seed {seed}", flush=True)
    vault = lab.pod("secure/vault")["ip"]
    lab.wait_for(lambda: lab.curl_rc("default/frontend", f"http://{vip(lab, 'myapp')}/") == 0, timeout=30,
                 interval=0.5, what="myapp through the waypoint")

    # Positive control: without STRICT and the DENY, the probes reach vault's app, and its log says so.
    for pod, tag in (("legacy/outsider", "plain"), ("default/denied", "denied")):
        lab.wait_for(lambda pod=pod, tag=tag: lab.curl_rc(pod, f"http://{vault}:8080/{tag}-control") == 0, timeout=20,
                     interval=0.5, what=f"{pod} reaching vault before the policies")
    log = lab.log("secure/vault")
    assert "/plain-control" in log and "/denied-control" in log, "vault's access log does not record requests"
    lab.ambit("apply", "-f", "-", input=yaml.safe_dump_all([STRICT, deny_policy()]))
    lab.wait_for(lambda: lab.curl_rc("legacy/outsider", f"http://{vault}:8080/plain-control") != 0
                 and lab.curl_rc("default/denied", f"http://{vault}:8080/denied-control") != 0,
                 timeout=20, interval=0.5, what="STRICT and the DENY in force")

    clients = [
        Client("l7", "default/frontend", f"http://{vip(lab, 'myapp')}", must_fail=False),
        Client("l4", "default/frontend", f"http://{vault}:8080", must_fail=False),
        Client("plain", "legacy/outsider", f"http://{vault}:8080", must_fail=True),
        Client("denied", "default/denied", f"http://{vault}:8080", must_fail=True),
    ]
    chaos = Chaos(lab, seed)
    before = host_state(lab)          # without the clients' curl loops, which are stopped before the end
    for c in clients:
        c.start(lab, chaos.lock)
    chaos.settle(clients, "before the chaos")
    assert not chaos.violations, chaos.report()
    fds_before = {p: fd_count(pid_of(lab, p) or 0) for p in TARGETS}
    traced_before = tracebacks(lab)
    try:
        chaos.run(clients)
        chaos.settle(clients, "after the last fault")
        chaos.check_security(clients)
        # after a last look at the probes: stop the traffic before counting processes
    finally:
        for c in clients:
            c.stop()

    # The rest is checked whatever happened above, so one report names every broken invariant.
    rows: list[dict[str, Any]] = []

    def synced() -> bool:
        rows[:] = proxy_sync(lab)
        return converged(rows)
    try:
        lab.wait_for(synced, timeout=30, interval=1, what="proxies ACK the current config version")
    except AssertionError:
        chaos.violate(f"config versions did not converge: {json.dumps(rows)[:1500]}")
    try:
        lab.wait_for(lambda: host_state(lab) == before, timeout=30, interval=1, what="host state")
    except AssertionError:
        chaos.violate(f"host state {host_state(lab)}, before the chaos {before}")
    for p, n in fds_before.items():
        now = fd_count(pid_of(lab, p) or 0)
        if now > n + 16:
            chaos.violate(f"{p}: {now} open descriptors, {n} before the chaos")
    traced = {k: v for k, v in tracebacks(lab).items() if v > traced_before.get(k, 0)}
    if traced:
        chaos.violate(f"tracebacks in component logs: {traced}")
    assert not chaos.violations, chaos.report()
