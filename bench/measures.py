"""The measures: run a load tool in a client pod against one scenario's target and record samples.

Each function runs one repetition of one measure for one scenario and records into RunResults;
it raises MeasureError (or ToolOutputError) when the run produced no valid result, and the runner
records that as an error of this rep and moves on.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench import co, parsers, procstat, stats, tools
from bench.l7 import CANARY_HEADER, CANARY_VALUE, parse_http_version, parse_version_header
from bench.labenv import BenchLab, python_argv
from bench.metrics import LAT_PS
from bench.plan import (
    HTTP_PORT,
    IPERF_PORT,
    L7_H2_PORTS,
    L7_PORTS,
    PLAIN_NS,
    TUNNEL_PORTS,
    WEB_SERVICE,
    Plan,
    Scenario,
)
from bench.results import RunResults


class MeasureError(RuntimeError):
    pass


@dataclass
class Target:
    """Where a scenario's client sends its load, and whose CPU/memory counts as the proxy's."""

    scenario: Scenario
    http_host: str
    http_port: int
    iperf_host: str
    iperf_port: int
    proxy_cpu: Callable[[], dict[str, float]] | None = None   # CPU seconds of each proxy on the path
    ztunnel_cgroups: dict[str, Path] = field(default_factory=dict)
    l7_pids: Callable[[], Sequence[int]] | None = None      # the L7 proxy's processes (nginx, haproxy, waypoint)

    @property
    def has_iperf(self) -> bool:
        """L7 scenarios carry HTTP only: no iperf3 behind an HTTP proxy."""
        return self.iperf_port != 0

    @property
    def url(self) -> str:
        return f"http://{self.http_host}:{self.http_port}/1k"


def target_for(lab: BenchLab, sc: Scenario, tunnel_pids: Callable[[], Sequence[int]] | None = None,
               l7_pids: Callable[[], Sequence[int]] | None = None) -> Target:
    if sc.l7:
        pids = l7_pids or (lambda: [])
        if sc.waypoint:
            cgs = lab.ztunnel_cgroups()
            vip = next(s.vip for s in lab.spec.services if s.name == WEB_SERVICE and s.namespace == sc.namespace)
            return Target(sc, vip, HTTP_PORT, "", 0, ztunnel_cgroups=cgs, l7_pids=pids,
                          proxy_cpu=lambda: {**{n: procstat.cgroup_cpu_seconds(c) for n, c in cgs.items()},
                                             sc.l7: procstat.pids_cpu_seconds(pids())})
        port = (L7_H2_PORTS if sc.h2 else L7_PORTS)[sc.l7]
        return Target(sc, lab.ip(f"{PLAIN_NS}/l7proxy"), port, "", 0, l7_pids=pids,
                      proxy_cpu=lambda: {sc.l7: procstat.pids_cpu_seconds(pids())})
    server_ip = lab.ip(sc.server_key)
    if sc.tunnel:
        ports = TUNNEL_PORTS[sc.tunnel]
        pids = tunnel_pids or (lambda: [])
        return Target(sc, "127.0.0.1", ports["http"][0], "127.0.0.1", ports["iperf"][0],
                      proxy_cpu=lambda: {sc.tunnel: procstat.pids_cpu_seconds(pids())})
    if sc.mesh:
        cgs = lab.ztunnel_cgroups()
        return Target(sc, server_ip, HTTP_PORT, server_ip, IPERF_PORT,
                      proxy_cpu=lambda: {n: procstat.cgroup_cpu_seconds(c) for n, c in cgs.items()},
                      ztunnel_cgroups=cgs)
    return Target(sc, server_ip, HTTP_PORT, server_ip, IPERF_PORT)


def _run(lab: BenchLab, sc: Scenario, argv: list[str], timeout: float) -> str:
    try:
        p = lab.run(sc.client_key, argv, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise MeasureError(f"{argv[0]} did not finish within {timeout:.0f}s") from e
    if p.returncode != 0 and argv[0] != "iperf3":   # iperf3 reports its errors in the JSON
        raise MeasureError(f"{argv[0]} exited {p.returncode}: {(p.stderr or p.stdout).strip()[-300:]}")
    return p.stdout


def check_path(lab: BenchLab, t: Target, within: float = 15.0) -> None:
    """One request end to end before timing anything: a broken path fails fast, with curl's reason.

    Retried for `within` seconds: right after bring-up a pod's capture may be reported before the
    ztunnel's listeners in its netns are open.
    """
    deadline = time.monotonic() + within
    while True:
        out = lab.run(t.scenario.client_key, ["curl", "-sS", "--fail", *_curl_proto(t), "-o", "/dev/null", "-m", "3",
                                              t.url], timeout=30)
        if out.returncode == 0 and (not t.scenario.l7 or _routes_by_header(lab, t)):
            return
        if time.monotonic() > deadline:
            if out.returncode == 0:
                raise MeasureError(f"{t.url}: answered, but not routed by {CANARY_HEADER} (want v1 without it, "
                                   f"v2 with it{', over HTTP/2' if t.scenario.h2 else ''}) after {within:.0f}s")
            raise MeasureError(f"no HTTP path from {t.scenario.client_key} to {t.url} after {within:.0f}s: "
                               f"{out.stderr.strip()}")
        time.sleep(0.5)


def _curl_proto(t: Target) -> list[str]:
    """h2c with prior knowledge for the HTTP/2 scenarios (as h2load speaks it), else curl's HTTP/1.1."""
    return ["--http2-prior-knowledge"] if t.scenario.h2 else []


def _routes_by_header(lab: BenchLab, t: Target) -> bool:
    """The L7 positive control: 3 requests without the header reach v1, 3 with it reach v2 (and the
    HTTP/2 scenarios' responses come back as HTTP/2: the proxy spoke h2c, it did not fall back)."""
    for header, want in (("", "v1"), (f"{CANARY_HEADER}: {CANARY_VALUE}", "v2")):
        for _ in range(3):
            argv = ["curl", "-sS", "--fail", *_curl_proto(t), "-o", "/dev/null", "-D", "-", "-m", "3",
                    *(["-H", header] if header else []), t.url]
            p = lab.run(t.scenario.client_key, argv, timeout=30)
            if p.returncode != 0 or parse_version_header(p.stdout) != want:
                return False
            if t.scenario.h2 and parse_http_version(p.stdout) != "2":
                return False
    return True


def throughput(lab: BenchLab, t: Target, plan: Plan, res: RunResults, rep: int, streams: int) -> None:
    argv = tools.iperf3_argv(t.iperf_host, t.iperf_port, streams, plan.iperf_seconds)
    r = parsers.parse_iperf3(_run(lab, t.scenario, argv, timeout=plan.iperf_seconds + 30))
    key = "tput_1s_gbps" if streams == 1 else "tput_4s_gbps"
    res.record(t.scenario.name, key, rep, r.gbit_per_second)
    res.detail(t.scenario.name, f"iperf3_P{streams}", rep, {"retransmits": r.retransmits,
                                                            "sender_cpu_percent": r.sender_cpu_percent,
                                                            "receiver_cpu_percent": r.receiver_cpu_percent})


def _ladder(samples_us: Sequence[int]) -> dict[str, float]:
    return {k: v / 1000.0 for k, v in stats.percentiles(samples_us, what="latencies").items()}


def latency_at_rate(lab: BenchLab, t: Target, plan: Plan, res: RunResults, rep: int, rate: int, work: Path) -> None:
    """`rate` req/s from ceil(rate/100) single-connection h2load processes; CO-corrected percentiles.

    At 1000 req/s it also records the proxies' CPU per 1000 requests and ztunnel RSS under load.
    """
    sc = t.scenario
    rates = tools.split_rate(rate, plan.per_client_rps)
    logs = [work / f"h2load-{sc.name}-{rate}-{rep}-{i}.tsv" for i in range(len(rates))]
    outs = [work / f"h2load-{sc.name}-{rate}-{rep}-{i}.out" for i in range(len(rates))]
    procs = []
    try:
        for r, log, out in zip(rates, logs, outs, strict=True):
            with open(out, "w") as f:
                procs.append(lab.popen(sc.client_key, tools.h2load_rate_argv(t.url, r, plan.seconds, plan.warmup, log,
                                                                              h2=sc.h2),
                                       stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
        t_start = time.monotonic()
        time.sleep(plan.warmup + 0.05)
        cpu0, c0 = (t.proxy_cpu() if t.proxy_cpu else {}), time.monotonic()
        time.sleep(plan.seconds / 2)
        rss_load = max((procstat.cgroup_rss_mb(cg) for cg in t.ztunnel_cgroups.values()), default=None)
        l7_pids = list(t.l7_pids()) if t.l7_pids else []
        l7_rss = procstat.pids_rss_mb(l7_pids) if l7_pids else None
        deadline = t_start + plan.warmup + plan.seconds + 30
        for p in procs:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
        cpu1, c1 = (t.proxy_cpu() if t.proxy_cpu else {}), time.monotonic()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    parts, total = [], 0
    for r, log, out in zip(rates, logs, outs, strict=True):
        text = out.read_text()
        summary = parsers.parse_h2load_summary(text)
        total += summary.total
        rows = parsers.parse_h2load_log(log.read_text(), what=str(log))
        parts.append(co.correct(rows, r))
        log.unlink()
        out.unlink()
    merged = co.merge(parts)
    if not merged.n:
        raise MeasureError(f"h2load logged no request at {rate} req/s")
    corrected, measured = _ladder(merged.corrected_us), _ladder(merged.measured_us)
    for p in LAT_PS:
        res.record(sc.name, f"lat{rate}_{p}_ms", rep, corrected[p])
        res.record(sc.name, f"lat{rate}_{p}_ms_raw", rep, measured[p])
    detail = {"requests": merged.n, "blocked": merged.blocked, "achieved_rps": total / plan.seconds,
              "corrected_ms": corrected, "measured_ms": measured}
    if cpu0 and total:
        # CPU-seconds per 1000 requests = (CPU-s per second) / (requests per second) * 1000, both
        # over the main duration (the CPU window starts after h2load's warm-up).
        rps = total / plan.seconds
        per = {n: (cpu1[n] - cpu0[n]) / max(c1 - c0, 1e-6) / rps * 1000.0 for n in cpu0}
        detail["proxy_cpu_per_1k"] = per
        if rate == 1000:
            res.record(sc.name, "proxy_cpu_per_1k", rep, sum(per.values()))
            if t.ztunnel_cgroups:
                res.record(sc.name, "zt_cpu_per_1k", rep, max(v for n, v in per.items() if n in t.ztunnel_cgroups))
            if sc.l7 and sc.l7 in per:
                res.record(sc.name, "l7_cpu_per_1k", rep, per[sc.l7])
    if rate == 1000 and rss_load is not None:
        res.record(sc.name, "zt_rss_load_mb", rep, rss_load)
    if rate == 1000 and l7_rss:
        res.record(sc.name, "l7_rss_mb", rep, l7_rss)
    res.detail(sc.name, f"latency_{rate}", rep, detail)


def max_rate(lab: BenchLab, t: Target, plan: Plan, res: RunResults, rep: int, work: Path) -> None:
    """Closed-loop saturation; for the L7 scenarios also the L7 proxy's CPU per 1000 requests at that
    rate (`l7_cpu_per_1k_max`), sampled inside h2load's main duration (after its warm-up)."""
    sc = t.scenario
    log, out_path = work / f"h2load-{sc.name}-max-{rep}.tsv", work / f"h2load-{sc.name}-max-{rep}.out"
    seconds = plan.max_seconds or plan.seconds
    argv = tools.h2load_max_argv(t.url, plan.max_clients, seconds, plan.warmup, log, h2=sc.h2)
    cpu: tuple[float, float] | None = None      # (CPU-seconds, wall seconds) of the L7 proxy in the window
    with open(out_path, "w") as f:
        p = lab.popen(sc.client_key, argv, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        if sc.l7 and t.proxy_cpu:
            time.sleep(plan.warmup + 0.1)
            a, ta = t.proxy_cpu()[sc.l7], time.monotonic()
            time.sleep(seconds * 0.8)
            cpu = (t.proxy_cpu()[sc.l7] - a, time.monotonic() - ta)
        p.wait(timeout=seconds + plan.warmup + 30)
    except subprocess.TimeoutExpired as e:
        raise MeasureError(f"h2load did not finish within {seconds + plan.warmup + 30:.0f}s") from e
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    out = out_path.read_text()
    out_path.unlink()
    if p.returncode != 0:
        raise MeasureError(f"h2load exited {p.returncode}: {out.strip()[-300:]}")
    summary = parsers.parse_h2load_summary(out)
    rows = parsers.parse_h2load_log(log.read_text(), what=str(log))
    log.unlink()
    ladder = _ladder([r.duration_us for r in rows])
    res.record(sc.name, "max_rps", rep, summary.req_per_s)
    for p_ in LAT_PS:
        res.record(sc.name, f"max_{p_}_ms", rep, ladder[p_])
    detail: dict[str, object] = {"clients": plan.max_clients, "requests": summary.total, "latency_ms": ladder}
    if cpu is not None and summary.req_per_s > 0:
        per_1k = cpu[0] / max(cpu[1], 1e-6) / summary.req_per_s * 1000.0
        res.record(sc.name, "l7_cpu_per_1k_max", rep, per_1k)
        detail["l7_cpu_seconds"], detail["l7_cpu_window_s"] = cpu
    res.detail(sc.name, "max_rate", rep, detail)


def connection_rate(lab: BenchLab, t: Target, plan: Plan, res: RunResults, rep: int) -> None:
    sc = t.scenario
    out = _run(lab, sc, tools.wrk_conn_argv(t.url, plan.conn_clients, plan.seconds),
               timeout=plan.seconds + 30)
    r = parsers.parse_wrk(out)
    res.record(sc.name, "conn_per_s", rep, r.per_second)
    res.detail(sc.name, "conn_rate", rep, {"connections": r.requests, "errors": r.errors,
                                           "latency_us": r.latency_us})


def ztunnel_rss(lab: BenchLab, t: Target, plan: Plan, res: RunResults, rep: int) -> None:
    """RSS of each ztunnel idle, then with `hold_connections` open connections through the mesh."""
    sc = t.scenario
    idle = {n: procstat.cgroup_rss_mb(cg) for n, cg in t.ztunnel_cgroups.items()}
    idle_mem = {n: procstat.cgroup_memory_mb(cg) for n, cg in t.ztunnel_cgroups.items()}
    res.record(sc.name, "zt_rss_idle_mb", rep, max(idle.values()))
    argv = python_argv("bench.holdconns", t.http_host, str(t.http_port), str(plan.hold_connections),
                       str(plan.hold_deadline))
    p = lab.popen(sc.client_key, argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert p.stdout is not None and p.stdin is not None
        line = _readline(p, timeout=plan.hold_deadline + 15)
        if not line.startswith("READY"):
            raise MeasureError(f"holding {plan.hold_connections} connections failed: {line.strip() or 'no output'}")
        time.sleep(0.3)
        held = {n: procstat.cgroup_rss_mb(cg) for n, cg in t.ztunnel_cgroups.items()}
        held_mem = {n: procstat.cgroup_memory_mb(cg) for n, cg in t.ztunnel_cgroups.items()}
        res.record(sc.name, "zt_rss_1000conn_mb", rep, max(held.values()))
        _, opened, failed = line.split()
        if int(opened) < plan.hold_connections:
            raise MeasureError(f"only {opened} of {plan.hold_connections} connections could be opened through "
                               f"the mesh within the deadline ({failed} failed attempts)")
        res.detail(sc.name, "ztunnel_rss_mb", rep, {"idle": idle, "with_connections": held,
                                                    "connections": int(opened), "failed_attempts": int(failed)})
        # RSS/PSS/anonymous per ztunnel (see bench/procstat.py for which figure means what)
        res.detail(sc.name, "ztunnel_memory_mb", rep, {"idle": idle_mem, "with_connections": held_mem})
        if int(failed):
            res.notes.append(f"{sc.name} rep {rep}: {failed} of the {opened} held connections needed a retry "
                             f"(connection through the mesh refused, reset or unanswered for 3 s)")
        p.stdin.close()
        p.wait(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def _readline(p: subprocess.Popen[str], timeout: float) -> str:
    import selectors
    assert p.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(p.stdout, selectors.EVENT_READ)
    try:
        if not sel.select(timeout):
            raise MeasureError(f"no answer from {p.args[0]} within {timeout:.0f}s")
        return p.stdout.readline()
    finally:
        sel.close()


def py_spy() -> str | None:
    """py-spy on PATH, or installed in this venv (pip puts it next to the interpreter)."""
    beside = Path(sys.executable).parent / "py-spy"
    return shutil.which("py-spy") or (str(beside) if beside.exists() else None)


def py_spy_argv(spy: str, pid: int, seconds: float, out: Path) -> list[str]:
    """py-spy recording `pid` and its children for `seconds` into `out` (collapsed stacks, 250 Hz).

    --native: C frames (uvloop, OpenSSL, the kernel's entry) as they are. Without it, and with
    --nonblocking, py-spy put most of the waypoint's CPython time on two frames (`Runner.run`,
    `_write_out`) on this box; perf disagreed (docs/performance.md, round 8). --native stops the
    process per sample: never during a run whose figures count."""
    return [spy, "record", "--pid", str(pid), "--subprocesses", "--native", "--format", "raw", "-r", "250",
            "-d", str(max(1, round(seconds))), "-o", str(out)]
