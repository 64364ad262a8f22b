"""Issue 9: HBONE and ztunnel survive hostile peers, in the lab with real TLS, real eBPF capture and
real clients.

The attacker holds a real mesh certificate (demo/iperf's identity, issued by the lab CA to node2's
credential, as a compromised node would have) and runs in legacy/client (node2, not in the mesh)
against echo-v1's HBONE listener on node1 with `h2` and raw frames (tests/lab/hbone_tools.py).
Meanwhile a bystander in demo/iperf (node2) requests echo-v1 through both ztunnels, a fresh
connection every 50 ms: it must keep >= 95 % success with p99 <= 1 s. Afterwards node1's ztunnel
holds no more fds than before and echo-v1 holds no leftover app connection. Every attack has a
positive control showing that it reached ztunnel (GOAWAY/RST/status received, app connections
made) so a broken lab cannot pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ambit.dataplane import endpoint
from ambit.dataplane.hbone import limits
from ambit.dataplane.hbone.client import HBONEClientPool
from ambit.dataplane.hbone.liveness import Liveness
from ambit.dataplane.identity import GrpcCertificateFetcher, make_key_and_csr
from ambitctl.lab.components import ZTUNNEL_ARGS_ENV
from tests.lab.conftest import MESH_SPEC
from tests.lab.labctl import REPO, Lab, running_lab
from tests.support import soak

pytestmark = pytest.mark.lab

ATTACKER = "legacy/client"
BYSTANDER = "demo/iperf"
TARGET = "demo/echo-v1"
ENHANCE_YOUR_CALM = 0xB


@pytest.fixture(scope="module")
def hlab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """A lab of this module's own (prefix hhb), always torn down."""
    with running_lab(tmp_path_factory.mktemp("hhb"), "hhb", MESH_SPEC, "hbone-hostile-lab") as lab:
        yield lab


@pytest.fixture(scope="module")
def cert(hlab: Lab, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A mesh certificate for demo/iperf, from the lab CA with node2's credential (as test_mtls gets one)."""
    identity = "spiffe://cluster.local/ns/demo/sa/iperf"
    token = (hlab.dir / "node2" / "bootstrap-token").read_text().strip()

    async def fetch() -> dict[str, Any]:
        async with hlab.controller_channel() as ch:
            key, csr = make_key_and_csr(identity)
            res = await GrpcCertificateFetcher(ch, "node2", lambda: token).fetch(identity, csr, 3600)
        return {"identity": identity, "key": key.decode(), "chain": res.chain_pem, "bundle": res.trust_bundle}
    path = tmp_path_factory.mktemp("hhb-cert") / "attacker.json"
    path.write_text(json.dumps(asyncio.run(fetch())))
    path.chmod(0o600)
    return str(path)


# --- helpers ---------------------------------------------------------------------------------------------

def tool_argv(lab: Lab, pod: str, *args: str) -> list[str]:
    return lab.exec_argv(pod, sys.executable, "-m", "tests.lab.hbone_tools", *args)


def tool(lab: Lab, pod: str, *args: str, timeout: float = 120) -> dict[str, Any]:
    p = subprocess.run(tool_argv(lab, pod, *args), env=lab.env, cwd=REPO, capture_output=True, text=True,
                       timeout=timeout)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    assert p.returncode == 0 and lines, f"hbone_tools {args[0]} in {pod} failed ({p.returncode}): {p.stderr[-2000:]}"
    return json.loads(lines[-1])


class Background:
    """A hbone_tools mode running in a pod; read its progress lines, then its result."""

    def __init__(self, lab: Lab, pod: str, *args: str) -> None:
        self.p = subprocess.Popen(tool_argv(lab, pod, *args), env=lab.env, cwd=REPO, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, start_new_session=True)

    def line(self, timeout: float = 60) -> str:
        assert self.p.stdout is not None
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            ln = self.p.stdout.readline()
            if ln:
                return ln.strip()
            if self.p.poll() is not None:
                break
        raise AssertionError(f"no output from {self.p.args}: {self.p.stderr.read() if self.p.stderr else ''}")

    def result(self, timeout: float = 120) -> dict[str, Any]:
        out, err = self.p.communicate(timeout=timeout)
        lines = [ln for ln in out.splitlines() if ln.startswith("{")]
        assert lines, f"no result from {self.p.args}: {err[-2000:]}"
        return json.loads(lines[-1])

    def stop(self) -> None:
        if self.p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.p.pid, 15)
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.p.pid, 9)
                self.p.wait()


@contextlib.contextmanager
def background(lab: Lab, pod: str, *args: str) -> Iterator[Background]:
    b = Background(lab, pod, *args)
    try:
        yield b
    finally:
        b.stop()


def ip(lab: Lab, pod: str) -> str:
    return lab.pod(pod)["ip"]


def ztunnel_fds(lab: Lab, node: str = "node1") -> int:
    pid = lab.proc_pid(f"ztunnel/{node}")
    assert pid, f"no ztunnel on {node}"
    return len(os.listdir(f"/proc/{pid}/fd"))


def app_conns(lab: Lab, pod: str = TARGET, port: int = 8080) -> int:
    """Established TCP connections to the app's port, counted on the app side (its netns).
    `ip netns exec` directly, not `ambit lab exec`: the count must be read while an attacker holds
    its streams, and the CLI's start-up alone can take seconds on a loaded machine."""
    ns, name = pod.split("/")
    p = subprocess.run(["ip", "netns", "exec", f"{lab.name}.{ns}.{name}", "ss", "-Htn", "state", "established",
                        f"( sport = :{port} )"], capture_output=True, text=True, check=True)
    return len([ln for ln in p.stdout.splitlines() if ln.strip()])


def settle(lab: Lab, fds_before: int, what: str) -> None:
    """Afterwards: no fd and no app connection left behind (pooled connections may come and go: +2)."""
    lab.wait_for(lambda: app_conns(lab) == 0, timeout=30, interval=0.5, what=f"{what}: no app connection left")
    lab.wait_for(lambda: ztunnel_fds(lab) <= fds_before + 2, timeout=30, interval=0.5,
                 what=f"{what}: ztunnel fds back to {fds_before} (+2)")


@contextlib.contextmanager
def bystander(lab: Lab, duration: float = 60) -> Iterator[dict[str, Any]]:
    """The bystander runs around the block from before the attack until 1 s after it, however long
    the attack takes (at most `duration` s), and for at least 200 requests, as many as the fixed 12 s
    it ran before, so its p99 is not one slow request. Its figures land in the yielded dict afterwards."""
    res: dict[str, Any] = {}
    stop = lab.dir / f"bystander-stop-{os.getpid()}-{time.monotonic_ns()}"
    with background(lab, BYSTANDER, "bystander", "--target", f"{ip(lab, TARGET)}:8080",
                    "--duration", str(duration), "--stop-file", str(stop)) as b:
        try:
            time.sleep(2)       # it is running and has pooled its HBONE connection before the attack
            yield res
            time.sleep(1)       # and the neighbour is still served once the attack is over
        finally:
            stop.touch()
        res.update(b.result(timeout=duration + 60))
    stop.unlink(missing_ok=True)
    print(f"bystander: {res}")
    assert res["n"] >= 50, f"the bystander barely ran: {res}"
    assert res["success"] >= 0.95, f"bystander success {res['success']:.1%} < 95 %: {res}"
    assert res["p99"] <= 1.0, f"bystander p99 {res['p99']:.3f}s > 1 s: {res}"


@pytest.fixture
def baseline(hlab: Lab) -> int:
    """node1 ztunnel's fds at rest, after the bystander's path has been used once."""
    tool(hlab, BYSTANDER, "bystander", "--target", f"{ip(hlab, TARGET)}:8080", "--duration", "1")
    settle_fds = ztunnel_fds(hlab)
    assert app_conns(hlab) == 0
    return settle_fds


# --- the attacks -------------------------------------------------------------------------------------------

def test_header_flood_is_cut_off_at_its_frame_headers(hlab: Lab, cert: str, baseline: int) -> None:
    target = ip(hlab, TARGET)
    # Positive control: the attacker's certificate and path work (a normal CONNECT gets 200).
    ok = tool(hlab, ATTACKER, "connect", "--cert", cert, "--ip", target, "--authority", f"{target}:8080")
    assert ok["statuses"] == {f"{target}:8080": 200}
    with bystander(hlab):
        for _ in range(3):
            r = tool(hlab, ATTACKER, "header-flood", "--cert", cert, "--ip", target, "--mib", "60")
            assert r["goaway"] == ENHANCE_YOUR_CALM, r        # refused early, with a reason
            assert r["seconds"] < 5, r
    settle(hlab, baseline, "header flood")


def test_stream_flood_gets_refused_streams_and_leaks_no_app_connection(hlab: Lab, cert: str,
                                                                       baseline: int) -> None:
    target = ip(hlab, TARGET)
    with bystander(hlab), background(hlab, ATTACKER, "stream-flood", "--cert", cert, "--ip", target,
                                     "--authority", f"{target}:8080", "--n", "300", "--hold", "8",
                                     "--more", "900") as flood:
        held = json.loads(flood.line())
        # 100 streams (the advertised SETTINGS_MAX_CONCURRENT_STREAMS) admitted, each over it refused.
        assert (held["ok"], held["refused"], held["other"], held["goaway"]) == (100, 200, 0, None), held
        # Positive control: the admitted tunnels really reached the app (+ the bystander's request).
        assert 100 <= app_conns(hlab) <= 102
        res = flood.result()
    # 900 more on top: refused until the peer has spent its reset budget, then GOAWAY.
    assert res["more"]["refused"] >= 100 and res["more"]["ok"] == 0, res
    assert res["goaway"] == ENHANCE_YOUR_CALM, res
    settle(hlab, baseline, "stream flood")


def test_rapid_reset_gets_goaway_and_leaks_nothing(hlab: Lab, cert: str, baseline: int) -> None:
    target = ip(hlab, TARGET)
    with bystander(hlab):
        for _ in range(5):
            r = tool(hlab, ATTACKER, "rapid-reset", "--cert", cert, "--ip", target,
                     "--authority", f"{target}:8080", "--max", "50000")
            assert r["goaway"] == ENHANCE_YOUR_CALM, r
            assert 300 <= r["pairs"] < 5000, r       # the budget (burst 400), not the --max, ended it
    settle(hlab, baseline, "rapid reset")


def test_a_tunnel_reset_while_its_app_connect_hangs_cancels_the_connect(hlab: Lab, cert: str,
                                                                        baseline: int) -> None:
    """The app's accept queue is full, so ztunnel's connects to it hang (up to its 10 s connect
    timeout); the peer resets the tunnels meanwhile: the connects are cancelled at once."""
    target = ip(hlab, TARGET)
    with background(hlab, TARGET, "no-accept-server", "--port", "540") as srv:
        assert srv.line() == "ready"
        r = tool(hlab, ATTACKER, "connect-then-reset", "--cert", cert, "--ip", target,
                 "--authority", f"{target}:540", "--n", "20", "--wait", "3")
        assert r["reset"] == 20 and r["answered"] <= 3, r       # most never got an answer: still connecting
        t0 = time.monotonic()
        hlab.wait_for(lambda: ztunnel_fds(hlab) <= baseline + 2, timeout=20, interval=0.2,
                      what="ztunnel fds back after the resets")
        freed = time.monotonic() - t0
    cancelled = [x for x in hlab.access_log("node1") if "while connecting" in x.get("error", "")]
    # Positive control: the resets found tunnels whose app connect was in progress.
    assert len(cancelled) >= 10, f"only {len(cancelled)} tunnels were cancelled while connecting"
    assert freed < 5, f"fds freed only after {freed:.1f}s (the 10 s connect timeout, not the reset)"
    settle(hlab, baseline, "reset while connecting")


def test_self_loop_is_refused_on_every_path(hlab: Lab, cert: str, baseline: int) -> None:
    target = ip(hlab, TARGET)
    r = tool(hlab, ATTACKER, "connect", "--cert", cert, "--ip", target,
             *[a for port in (8080, 15006, 15008, 15001) for a in ("--authority", f"{target}:{port}")])
    assert r["statuses"] == {f"{target}:8080": 200, f"{target}:15006": 400, f"{target}:15008": 400,
                             f"{target}:15001": 400}, r
    # Plaintext to the pod's own :15006 (inbound), from the pod itself, and from a mesh pod on the
    # same node (outbound): each refused at once. Control: the same pods reach :8080.
    for pod in (ATTACKER, TARGET, "demo/client"):
        assert hlab.curl_rc(pod, f"http://{target}:8080/") == 0, f"control: {pod} -> :8080"
        rc = hlab.curl_rc(pod, f"http://{target}:15006/")
        assert rc in (7, 56), f"{pod} -> {target}:15006: curl exit {rc} (expected refused/reset)"
    refused = [r for r in hlab.access_log("node1") if "loop back" in r.get("error", "")]
    assert len(refused) >= 6, refused          # 3 CONNECTs + 3 plaintext, one record each, no storm
    assert len(refused) < 50
    settle(hlab, baseline, "self-loop")


def test_slow_preface_and_handshake_hoarding_are_bounded(hlab: Lab, cert: str, baseline: int) -> None:
    target = ip(hlab, TARGET)
    with bystander(hlab), \
            background(hlab, ATTACKER, "handshake-hoard", "--ip", target, "--n", "200", "--wait", "30") as hoard:
        r = tool(hlab, ATTACKER, "slow-preface", "--cert", cert, "--ip", target, "--wait", "30")
        h = hoard.result()
    assert r["handshake"], "control: the TLS handshake completed with the mesh certificate"
    assert r["closed"] and 8 <= r["seconds"] <= 15, f"no preface: closed after {r['seconds']}s (timeout 10 s)"
    assert h["opened"] == 200 and h["still_open"] == 0 and h["seconds"] <= 15, h
    settle(hlab, baseline, "slow preface")


def test_partial_client_hellos_are_bounded_and_a_client_still_connects(hlab: Lab, cert: str, baseline: int) -> None:
    """300 connections to :15008 from one address that stop inside their ClientHello (no
    certificate needed): ztunnel held every one for the 10 s handshake timeout, uncounted. Now at
    most --max-pending-handshakes-per-source (128) stay, the rest are reset at once, and a client
    at another address (demo/optout, outside the mesh, with a mesh certificate) still gets its
    tunnel meanwhile."""
    target = ip(hlab, TARGET)
    with bystander(hlab), \
            background(hlab, ATTACKER, "handshake-hoard", "--ip", target, "--n", "300", "--wait", "30",
                       "--partial") as hoard:
        assert json.loads(hoard.line())["phase"] == "sent"
        ok = tool(hlab, "demo/optout", "connect", "--cert", cert, "--ip", target, "--authority", f"{target}:8080")
        h = hoard.result()
    assert ok["statuses"] == {f"{target}:8080": 200}, ok
    assert h["opened"] == 300 and h["still_open"] == 0, h
    assert h["open_at_2s"] <= 128, f"{h['open_at_2s']} partial handshakes held from one address (cap 128)"
    settle(hlab, baseline, "partial ClientHellos")


# --- head-of-line blocking ------------------------------------------------------------------------------

def iperf_intervals(lab: Lab, server_ip: str, seconds: int = 5,
                    during: Callable[[], None] | None = None) -> list[float]:
    """iperf3 from demo/client: the bytes received in each second; `during` runs halfway through."""
    p = subprocess.Popen(lab.exec_argv("demo/client", "iperf3", "-c", server_ip, "-p", "5201",
                                       "-t", str(seconds), "-J"), env=lab.env, cwd=REPO, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    if during is not None:
        time.sleep(1.5 + seconds / 2)
        during()
    out, err = p.communicate(timeout=seconds + 60)
    assert p.returncode == 0, out[-1000:] + err[-1000:]
    return [float(i["sum"]["bytes"]) for i in json.loads(out)["intervals"]]


def pool_entry(lab: Lab, src: str, dst: str) -> dict[str, Any]:
    status, body = endpoint.get_json(lab.dir / "node1" / "admin.sock", "/connections")
    assert status == 200
    return next((c for c in body["hbone_pool"] if c["src_ip"] == src and c["dst_ip"] == dst), {})


# Starved means stuck: with the connection window held by stalled streams a bulk flow moves nothing
# at all. One MiB a second is three orders of magnitude under what it moves here, and far above zero.
NOT_STARVED = 1024 * 1024


def test_five_stalled_receivers_do_not_starve_a_bulk_flow_on_the_same_connection(hlab: Lab) -> None:
    client, server = ip(hlab, "demo/client"), ip(hlab, "demo/iperf")
    with background(hlab, "demo/iperf", "slow-server", "--port", "530") as slow:
        assert slow.line() == "ready"
        with background(hlab, "demo/client", "slow-senders", "--target", f"{server}:530", "--n", "5",
                        "--duration", "14") as senders:
            assert json.loads(senders.line())["phase"] == "sending"
            time.sleep(4)       # each stalled tunnel takes its full stream window
            entry: dict[str, Any] = {}
            during = iperf_intervals(hlab, server, during=lambda: entry.update(pool_entry(hlab, client, server)))
            res = senders.result(timeout=60)
    print(f"iperf3 beside five 1 B/s receivers, MiB per second: {[round(b / 2**20) for b in during]}; "
          f"pool {entry}; slow senders sent {res['sent']}")
    # Positive control: the slow tunnels were there, each pushed past a stream window (4 MiB) into
    # ztunnel, and they shared the pooled connection with the bulk flow.
    assert all(s >= 4 * 1024 * 1024 for s in res["sent"]), res
    assert entry.get("streams", 0) >= 6 and entry.get("connections") == 1, entry
    assert len(during) >= 4 and min(during) >= NOT_STARVED, f"the bulk flow stalled: bytes per second {during}"


# --- scale --------------------------------------------------------------------------------------------------

# 10,000 in a soak run (AMBIT_SOAK=full, `make soak`); the bounded default still holds thousands at once.
CONCURRENT = soak.scale(bounded=2_500, full=10_000)
# How long they sit idle. At full size, longer than a liveness cycle (ambit/dataplane/hbone/liveness.py,
# Istio's defaults: a connection silent for an interval is PINGed, and dropped if the PING goes unanswered
# for the timeout): idle tunnels are what a platform's connection pools hold, and they must outlive it.
LIVENESS = Liveness()
IDLE = soak.scale(bounded=5, full=int(2 * LIVENESS.interval + LIVENESS.timeout) + 10)
PROBES = soak.scale(bounded=5, full=20)     # new connections timed beside the held ones (printed, not asserted)
# How long ztunnel's client pool keeps a connection without tunnels (its default; ztunnel sets none).
POOL_IDLE: float = inspect.signature(HBONEClientPool).parameters["idle_timeout"].default


def proc_usage(pid: int) -> tuple[int, float]:
    """(RSS in KiB, CPU seconds, user + system) of a process, from /proc."""
    rss = int(Path(f"/proc/{pid}/status").read_text().split("VmRSS:")[1].split()[0])
    stat = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return rss, (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.soak
def test_thousands_of_concurrent_connections_through_the_mesh(hlab: Lab, tmp_path: Path) -> None:
    """Thousands of tunnels from one pod at once, held idle, then all still carrying data; what each
    ztunnel costs meanwhile is printed (docs/performance.md, "The full-size soak")."""
    client, server = ip(hlab, "demo/client"), ip(hlab, "demo/iperf")
    pids = {n: hlab.proc_pid(f"ztunnel/{n}") for n in ("node1", "node2")}
    for pid in pids.values():
        soft = int(Path(f"/proc/{pid}/limits").read_text().split("Max open files")[1].split()[0])
        if soft < CONCURRENT + 1000:     # each ztunnel holds one socket per tunnel, plus its own
            pytest.skip(f"ztunnel RLIMIT_NOFILE {soft} is too low for {CONCURRENT} tunnels (run with ulimit -n 30000)")
    # The client and the echo server inherit this process's limits and raise their soft one to the hard one.
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < CONCURRENT + 1000:
        pytest.skip(f"hard RLIMIT_NOFILE {hard} is too low for {CONCURRENT} tunnels (run with ulimit -Hn 30000)")
    fds_before = {n: ztunnel_fds(hlab, n) for n in pids}
    rss_before = {n: proc_usage(pid)[0] for n, pid in pids.items()}
    idle_over = tmp_path / "idle-over"
    with background(hlab, "demo/iperf", "echo-server", "--port", "700") as echo:
        assert echo.line() == "ready"
        with background(hlab, "demo/client", "hold", "--target", f"{server}:700", "--n", str(CONCURRENT),
                        "--hold", "0", "--until-file", str(idle_over), "--probe", str(PROBES),
                        "--parallel", "400") as h:
            held = json.loads(h.line(timeout=600))
            assert held["held"] == CONCURRENT, held
            assert app_conns(hlab, "demo/iperf", 700) == CONCURRENT    # all of them at once, app side
            start, t0 = {n: proc_usage(pid) for n, pid in pids.items()}, time.monotonic()
            time.sleep(IDLE)
            end, t1 = {n: proc_usage(pid) for n, pid in pids.items()}, time.monotonic()
            entry = pool_entry(hlab, client, server)
            fds_held = {n: ztunnel_fds(hlab, n) for n in pids}
            idle_over.touch()
            res = h.result(timeout=600)
    figures = {n: {"rss_mb_before": round(rss_before[n] / 1024, 1), "rss_mb_idle": round(end[n][0] / 1024, 1),
                   "cpu_pct_idle": round(100 * (end[n][1] - start[n][1]) / (t1 - t0), 1),
                   "fds_before": fds_before[n], "fds_held": fds_held[n]} for n in pids}
    print(f"{CONCURRENT} concurrent connections, idle {t1 - t0:.0f} s: {res}; pool {entry}; ztunnels {figures}")
    assert res.get("verified") == CONCURRENT and res.get("reverified") == CONCURRENT, res
    assert not res.get("resets") and not res.get("mismatch"), res
    # Every one was a tunnel in node1's HBONE pool, on at least one HBONE connection per 100 (the stream limit).
    assert entry.get("streams") == CONCURRENT, entry
    assert entry.get("connections", 0) >= CONCURRENT / limits.MAX_CONCURRENT_STREAMS, entry
    # A new connection still works beside them, before and after their idle period.
    assert len(res["probe_before_ms"]) == len(res["probe_held_ms"]) == PROBES, res
    assert not any(k.startswith("probe_") and not k.endswith("_ms") for k in res), res
    # Closed, they leave nothing behind but the pooled HBONE connections (idle ones close after 60 s)...
    for n in pids:
        hlab.wait_for(lambda n=n: ztunnel_fds(hlab, n) <= fds_before[n] + entry["connections"] + 2, timeout=60,
                      interval=0.5, what=f"ztunnel/{n} fds back to {fds_before[n]} + the pool")
    if soak.is_full():      # ...and then not those either (a minute's wait: not in the bounded run)
        for n in pids:
            hlab.wait_for(lambda n=n: ztunnel_fds(hlab, n) <= fds_before[n] + 2, timeout=POOL_IDLE + 60,
                          interval=1, what=f"ztunnel/{n} fds back to {fds_before[n]} once the pool is idle")
    print(f"ztunnel RSS MB after: { {n: round(proc_usage(pid)[0] / 1024, 1) for n, pid in pids.items()} }")


# --- backlog ------------------------------------------------------------------------------------------------

def listen_backlogs(lines: str) -> dict[int, int]:
    """`ss -Hltn`: for a listening socket Send-Q is its backlog."""
    out = {}
    for ln in lines.splitlines():
        cols = ln.split()
        if len(cols) >= 4 and cols[0] == "LISTEN":
            out[int(cols[3].rpartition(":")[2])] = int(cols[2])
    return out


def test_every_ztunnel_listener_has_the_configured_backlog(hlab: Lab) -> None:
    # Port 541: below the pods' ephemeral range (1024-65000), so no socket of the earlier floods
    # can hold it (a connection's local port there made the bind fail once).
    with background(hlab, TARGET, "no-accept-server", "--port", "541") as srv:
        assert srv.line() == "ready"
        pod = listen_backlogs(hlab.exec(TARGET, "ss", "-Hltn", check=True).stdout)
    node = listen_backlogs(subprocess.run(["ip", "netns", "exec", f"{hlab.name}.node1", "ss", "-Hltn"],
                                          capture_output=True, text=True, check=True).stdout)
    # Control: the column is the backlog the program asked for (listen(1) there).
    assert pod.get(541) == 1, pod
    assert {p: pod.get(p) for p in (15001, 15006, 15008)} == {15001: 4096, 15006: 4096, 15008: 4096}, pod
    assert {p: node.get(p) for p in (15000, 15020)} == {15000: 4096, 15020: 4096}, node


# --- per-pod limits and the idle timeout, in a lab with small limits ------------------------------------

LIMITS = {"--max-outbound-per-pod": 20, "--max-plaintext-per-source-ip": 20, "--hbone-idle-timeout": 3}


@pytest.fixture(scope="module")
def limited_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """A second lab whose ztunnels run with small limits (AMBIT_LAB_ZTUNNEL_ARGS)."""
    with running_lab(tmp_path_factory.mktemp("hhbl"), "hhbl", MESH_SPEC, "hbone-hostile-limited-lab",
                     env={ZTUNNEL_ARGS_ENV: " ".join(f"{k} {v}" for k, v in LIMITS.items())}) as lab:
        yield lab


def test_a_noisy_pod_hits_its_own_limits_and_its_neighbours_are_served(limited_lab: Lab) -> None:
    lab = limited_lab
    v1, v2 = ip(lab, "demo/echo-v1"), ip(lab, "demo/echo-v2")
    with background(lab, "demo/echo-v2", "echo-server", "--port", "700") as e2, \
            background(lab, "demo/echo-v1", "echo-server", "--port", "700") as e1:
        assert e2.line() == "ready" and e1.line() == "ready"
        # Outbound: demo/client holds 50 connections through the mesh; 20 are its share.
        with background(lab, "demo/client", "hold", "--target", f"{v2}:700", "--n", "50", "--hold", "6",
                        "--parallel", "50") as noisy:
            assert json.loads(noisy.line())["phase"] == "held"
            # Its neighbour on the same node (another pod, another identity) is unaffected.
            other = tool(lab, "demo/client2", "hold", "--target", f"{v2}:700", "--n", "15", "--hold", "0")
            res = noisy.result()
        assert other.get("verified") == 15 and other.get("reverified") == 15, other
        assert res.get("verified") == 20 and res.get("reverified") == 20, res     # control: its share works
        assert res.get("resets", 0) + sum(v for k, v in res.items() if k.startswith("error")) == 30, res
        # Plaintext inbound: a non-mesh source IP (PERMISSIVE) gets 20 connections to echo-v1, the
        # same as outbound; demo/client2 (over HBONE) still reaches echo-v1 meanwhile.
        with background(lab, ATTACKER, "hold", "--target", f"{v1}:700", "--n", "50", "--hold", "6",
                        "--parallel", "50") as noisy:
            assert json.loads(noisy.line())["phase"] == "held"
            other = tool(lab, "demo/client2", "hold", "--target", f"{v1}:700", "--n", "15", "--hold", "0")
            res = noisy.result()
        assert other.get("verified") == 15, other
        assert res.get("verified") == 20 and res.get("reverified") == 20, res
    refused = [r for r in lab.access_log("node1") if "limit" in r.get("error", "")]
    assert len(refused) >= 60, f"{len(refused)} refusals logged"


def test_idle_hbone_connections_are_closed_by_the_server(limited_lab: Lab) -> None:
    lab = limited_lab
    iperf, v1 = ip(lab, "demo/iperf"), ip(lab, "demo/echo-v1")

    def pooled() -> bool:
        status, body = endpoint.get_json(lab.dir / "node2" / "admin.sock", "/connections")
        return any(c["src_ip"] == iperf and c["dst_ip"] == v1 for c in body["hbone_pool"])
    assert lab.curl_rc("demo/iperf", f"http://{v1}:8080/") == 0
    assert pooled(), "control: the request left a pooled HBONE connection on node2"
    t0 = time.monotonic()
    lab.wait_for(lambda: not pooled(), timeout=20, interval=0.2, what="node1 closing the idle connection")
    # node2's own pool would keep it for 60 s: node1's 3 s idle timeout (GOAWAY) ended it.
    assert time.monotonic() - t0 < 15
