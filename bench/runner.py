"""Run a plan: lab phases, tunnels, interleaved repetitions, the config push, and progress output.

Per lab phase the order is rep-major: rep 1 of every scenario, then rep 2, ... so rep i of each
scenario ran close together in time (the ratios pair them). A measure that fails is recorded as
an error of that rep and the run goes on; Ctrl-C or SIGTERM stops it, and the lab is always torn
down (the lab context manager's `finally`).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import confpush, l7, labenv, load, measures, parsers, profiles, tunnels
from bench.labenv import BenchLab
from bench.measures import MeasureError, Target
from bench.plan import PHASES, PLAIN_NS, TUNNEL_PORTS, Plan, Scenario
from bench.results import RunResults

EXPECTED_ERRORS = (MeasureError, parsers.ToolOutputError, OSError, subprocess.TimeoutExpired, ValueError)


def say(msg: str) -> None:
    print(f"\033[1;36m[bench]\033[0m {msg}", flush=True)


class TunnelSet:
    """stunnel and haproxy, client side in the plain client pod, server side in the plain server pod."""

    def __init__(self, lab: BenchLab, work: Path, which: list[str]):
        self.lab, self.work, self.which = lab, work, which
        self.procs: dict[str, list[subprocess.Popen[str]]] = {}

    def start(self) -> dict[str, str]:
        """Start each tunnel (both sides); return {tunnel: why it failed} for those that did not start."""
        failed: dict[str, str] = {}
        if not self.which:
            return failed
        pki = tunnels.make_pki(self.work / "pki", {"client": f"{PLAIN_NS}/client", "server": f"{PLAIN_NS}/server"})
        server_ip = self.lab.ip(f"{PLAIN_NS}/server")
        for name in self.which:
            routes = [tunnels.Route(kind, local, wire, 80 if kind == "http" else 5201)
                      for kind, (local, wire) in TUNNEL_PORTS[name].items()]
            d = self.work / name
            d.mkdir(parents=True, exist_ok=True)
            for side, pod in (("server", f"{PLAIN_NS}/server"), ("client", f"{PLAIN_NS}/client")):
                certs = pki[side]
                if name == "stunnel":
                    conf = d / f"{side}.conf"
                    conf.write_text(tunnels.stunnel_conf(side, routes, certs, server_ip, d / f"{side}.log"))
                    argv = ["stunnel", str(conf)]
                else:
                    conf = d / f"{side}.cfg"
                    conf.write_text(tunnels.haproxy_conf(side, routes, certs, server_ip))
                    argv = ["haproxy", "-f", str(conf), "-db"]
                with open(d / f"{side}.out", "w") as log:
                    self.procs.setdefault(name, []).append(
                        self.lab.popen(pod, argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
        time.sleep(0.5)
        for name, ps in list(self.procs.items()):
            dead = [p for p in ps if p.poll() is not None]
            if dead:
                out = " | ".join(f.read_text().strip()[-300:] for f in sorted((self.work / name).glob("*.out")))
                failed[name] = f"{name} exited at start ({dead[0].returncode}): {out}"
                for p in ps:
                    if p.poll() is None:
                        p.kill()
                        p.wait()
                del self.procs[name]
        return failed

    def pids(self, name: str) -> Callable[[], list[int]]:
        return lambda: [p.pid for p in self.procs.get(name, []) if p.poll() is None]

    def stop(self) -> None:
        for ps in self.procs.values():
            for p in ps:
                if p.poll() is None:
                    p.terminate()
        for ps in self.procs.values():
            for p in ps:
                try:
                    p.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        self.procs.clear()


class Runner:
    def __init__(self, plan: Plan, work: Path, out_dir: Path, stamp: str):
        self.plan, self.work, self.out_dir, self.stamp = plan, work, out_dir, stamp
        self.results = RunResults(reps=plan.reps)
        self.capture: dict[str, Any] = {}
        self.profiles: dict[str, str] = {}

    # ----- one measure -----------------------------------------------------------------------

    def attempt(self, sc: str, measure: str, rep: int | None, fn: Callable[[], None]) -> bool:
        t0 = time.monotonic()
        try:
            fn()
        except EXPECTED_ERRORS as e:
            msg = f"{type(e).__name__}: {e}"
            self.results.error(sc, measure, rep, msg)
            say(f"    {sc if rep is None else ''} {measure}: FAILED ({msg[:300]})")
            return False
        where = f"{sc} " if rep is None else ""
        say(f"    {where}{measure}: {self._show(sc, measure, rep)} ({time.monotonic() - t0:.1f}s)")
        return True

    def _show(self, sc: str, measure: str, rep: int | None) -> str:
        keys = {"throughput-1": ["tput_1s_gbps"], "throughput-4": ["tput_4s_gbps"],
                "latency-100": ["lat100_p50_ms", "lat100_p99_ms"],
                "latency-1000": ["lat1000_p50_ms", "lat1000_p99_ms", "zt_cpu_per_1k", "proxy_cpu_per_1k",
                                 "l7_cpu_per_1k", "l7_rss_mb"],
                "max-rate": ["max_rps", "max_p99_ms", "l7_cpu_per_1k_max"], "new-connections": ["conn_per_s"],
                "ztunnel-rss": ["zt_rss_idle_mb", "zt_rss_1000conn_mb"],
                "config-push": ["push_initial_s", "push_p50_ms", "push_p99_ms"]}.get(measure, [])
        if rep is None:
            return "ok"
        parts = []
        for k in keys:
            v = self.results.per_rep(sc, k)[rep]
            if v is not None:
                parts.append(f"{k}={v:.3g}")
        return ", ".join(parts) or "ok"

    # ----- phases ----------------------------------------------------------------------------

    def run_phase(self, phase: str) -> None:
        scs = self.plan.phase_scenarios(phase)
        if not scs:
            return
        say(f"phase {phase}: bringing up lab {labenv.LAB_NAME!r} for {', '.join(s.name for s in scs)}")
        try:
            with labenv.lab_up(self.work, phase, l7=any(s.l7 for s in scs)) as lab:
                self._in_lab(lab, phase, scs)
        except EXPECTED_ERRORS + (RuntimeError,) as e:
            for sc in scs:
                self.results.error(sc.name, "lab", None, f"{type(e).__name__}: {e}")
            say(f"phase {phase} failed: {e}")

    def _in_lab(self, lab: BenchLab, phase: str, scs: list[Scenario]) -> None:
        tun = TunnelSet(lab, self.work, [s.tunnel for s in scs if s.tunnel])
        l7set = l7.L7Set(lab, self.work, [s.l7 for s in scs if s.l7])
        try:
            failed = tun.start()
            for sc in scs:
                if sc.tunnel in failed:
                    self.results.error(sc.name, "tunnel start", None, failed[sc.tunnel])
                    say(f"  {sc.name}: FAILED to start ({failed[sc.tunnel][:300]})")
            scs = [s for s in scs if s.tunnel not in failed]
            l7_failed = l7set.start() if l7set.which else {}
            for sc in scs:
                why = l7_failed.get(sc.l7) if sc.l7 else None
                if why and sc.waypoint and why.startswith("waypoint cannot start"):
                    self.results.notes.append(f"{sc.name}: skipped: {why}")
                    say(f"  {sc.name}: SKIPPED ({why})")
                elif why:
                    self.results.error(sc.name, "l7 proxy start", None, why)
                    say(f"  {sc.name}: FAILED to start ({why[:300]})")
            scs = [s for s in scs if not (s.l7 and s.l7 in l7_failed)]
            self.capture[phase] = labenv.wait_captured(lab, [s.client_key for s in scs if s.mesh])
            targets: dict[str, Target] = {}
            for sc in scs:
                t = measures.target_for(lab, sc, tun.pids(sc.tunnel) if sc.tunnel else None,
                                        l7set.pids(sc.l7) if sc.l7 else None)
                if self.attempt(sc.name, "path check", None, lambda t=t: measures.check_path(lab, t)):
                    targets[sc.name] = t
            for sc in scs:
                if sc.mesh and sc.name in targets:
                    state = self.capture[phase].get(sc.client_key, "none")
                    if not labenv.is_captured(state):
                        self.results.notes.append(f"{sc.name}: the client pod was not reported captured "
                                                  f"({state}); its figures may be of direct traffic")
            for rep in range(self.plan.reps):
                for sc in scs:
                    if sc.name in targets:
                        if sc.l7 and not self.attempt(sc.name, "configure", rep, lambda sc=sc: l7set.activate(sc.l7)):
                            continue
                        self.run_rep(lab, targets[sc.name], rep)
        finally:
            tun.stop()
            l7set.stop()

    def run_rep(self, lab: BenchLab, t: Target, rep: int) -> None:
        sc, plan, res, work = t.scenario.name, self.plan, self.results, self.work
        now = load.sample()
        res.detail(sc, load.DETAIL, rep, now)
        busy = f" (busy machine: load average {now['load1']:.2f} > {now['cores']} cores)" if load.is_busy(now) else ""
        say(f"  {sc} rep {rep + 1}/{plan.reps}{busy}")
        if t.ztunnel_cgroups and (not plan.hold_reps or rep < plan.hold_reps):
            self.attempt(sc, "ztunnel-rss", rep, lambda: measures.ztunnel_rss(lab, t, plan, res, rep))
        if t.has_iperf:
            self.attempt(sc, "throughput-1", rep, lambda: measures.throughput(lab, t, plan, res, rep, 1))
            self.attempt(sc, "throughput-4", rep, lambda: measures.throughput(lab, t, plan, res, rep, 4))
        for rate in plan.rates:
            self.attempt(sc, f"latency-{rate}", rep,
                         lambda rate=rate: measures.latency_at_rate(lab, t, plan, res, rep, rate, work))
        self.attempt(sc, "max-rate", rep, lambda: measures.max_rate(lab, t, plan, res, rep, work))
        if not t.scenario.h2:       # wrk's HTTP/1.0 connect-request-close; an h2c-only listener refuses it
            self.attempt(sc, "new-connections", rep, lambda: measures.connection_rate(lab, t, plan, res, rep))
        if rep == 0 and plan.profile:
            self._profile_scenario(lab, t)

    def _profile_scenario(self, lab: BenchLab, t: Target) -> None:
        """`--profile`: one more run, recorded nowhere, under py-spy. A sampler that stops the process
        (py-spy's default, needed for --native) must not touch the figures, hence the extra run."""
        sc, plan, work = t.scenario.name, self.plan, self.work
        scratch = RunResults(reps=1)
        if sc == "ambit-l4-cross-node" and 1000 in plan.rates:
            self.attempt(sc, "profile", None, lambda: self._profiled(
                lambda: measures.latency_at_rate(lab, t, plan, scratch, 0, 1000, work), self._ztunnel_pids(lab),
                "ztunnel", "most sampled functions (self time) at 1000 req/s", plan.warmup + plan.seconds))
        elif t.scenario.waypoint and t.l7_pids and t.l7_pids() and sc not in self.profiles:
            # the first pid is the waypoint's top process: py-spy --subprocesses follows its workers
            # into the same file (one py-spy per pid would have three write one file)
            pids = [(f"{sc}-waypoint", t.l7_pids()[0])]
            self.attempt(sc, "profile", None, lambda: self._profiled(
                lambda: measures.max_rate(lab, t, plan, scratch, 0, work), pids, sc,
                f"most sampled functions (self time) of the waypoint at saturation ({sc})",
                plan.warmup + (plan.max_seconds or plan.seconds)))

    @staticmethod
    def _ztunnel_pids(lab: BenchLab) -> list[tuple[str, int]]:
        """("ztunnel-<node>", pid) of each ztunnel in the lab."""
        from ambitctl.lab import state
        return [(f"ztunnel-{pid_id.split('/', 1)[1]}", int(info["pid"]))
                for pid_id, info in sorted(state.runtime(lab.base).items())
                if pid_id.startswith("ztunnel/") and info.get("pid")]

    def _profiled(self, fn: Callable[[], None], pids: list[tuple[str, int]], key: str, what: str,
                  seconds: float) -> None:
        """Run `fn` with py-spy sampling each (label, pid) on-CPU for `seconds`; collapsed stacks go
        next to the results as <stamp>-<label>.folded, the summary line under profiles[key]."""
        spies = []
        spy = measures.py_spy()
        if spy:
            for label, pid in pids:
                out = self.out_dir / f"{self.stamp}-{label}.folded"
                argv = measures.py_spy_argv(spy, pid, seconds, out)
                spies.append((label, out, subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                                                           stderr=subprocess.PIPE, text=True)))
        else:
            self.results.notes.append("--profile: py-spy is not installed (pip install py-spy); no profile taken")
        try:
            fn()
        finally:
            shown = []
            for label, out, p in spies:
                try:
                    _, err = p.communicate(timeout=60)
                except subprocess.TimeoutExpired:
                    p.kill()
                    _, err = p.communicate()
                top = profiles.top_frames(out.read_text()) if out.exists() else ""
                if top:
                    shown.append(f"{label} ([{out.name}]({out.name})): {top}")
                else:
                    self.results.notes.append(f"py-spy on {label} recorded nothing: {err.strip()[-200:]}")
            if shown:
                self.profiles[key] = f"{what} — " + "; ".join(shown)

    def run_config_push(self) -> None:
        if not self.plan.push_pods:
            return
        say(f"controller: config push latency with {self.plan.push_pods} synthetic pods")
        for rep in range(self.plan.reps):
            def one(rep: int = rep) -> None:
                r = confpush.run(self.plan.push_pods, self.plan.push_changes)
                s = r.summary()
                self.results.record("controller", "push_initial_s", rep, s["initial_s"])
                self.results.record("controller", "push_p50_ms", rep, s["p50_ms"])
                self.results.record("controller", "push_p99_ms", rep, s["p99_ms"])
                self.results.detail("controller", "push", rep, {**s, "changes": len(r.latencies_ms)})
            self.attempt("controller", "config-push", rep, one)

    def run(self) -> RunResults:
        for phase in PHASES:
            self.run_phase(phase)
        self.run_config_push()
        return self.results
