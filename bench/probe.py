"""A probe of one scenario at a fixed rate: what each proxy spends per request, and where.

`make bench` gives ratios; an A/B of one change on this shared 2-core box needs something finer
(docs/performance.md, round 8, "How this round measured"). This brings up the bench's lab for one
scenario, drives it with one of three loads, and over a window reads, per proxy (the waypoint if
the scenario has one, and each ztunnel):

- `--load keepalive` (default): as `latency_at_rate`, one `h2load` client per 100 req/s, one
  connection each: the cost of a request;
- `--load conn`: NEW connections at a fixed `--rate` per second, one HTTP/1.1 request each (one
  `h2load --rate` process opening a new client every 0.1 s period): the cost of a connection;
- `--load wrk`: the bench's own closed-loop new-connection load (`tools.wrk_conn_argv`, 8 at a
  time, HTTP/1.0 connect-request-close) for `--seconds`; figures per connection wrk made, and the
  rate it reached;
- `--load iperf`: the bench's throughput load (`iperf3 -P --streams`) for `--seconds`; figures per
  MB that got through, and the rate (L4 scenarios only: no iperf3 behind an HTTP proxy);

- `--mode io` (default): CPU seconds (cgroup or /proc), read and write syscalls
  (`/proc/<pid>/io`) and voluntary context switches, each also per request; with the keepalive
  load also the latency percentiles (as h2load timed them, warm-up included, no CO correction)
  and how the slow requests (≥ the p99) group in time: requests of different clients slow
  within 5 ms of each other are one stall of something they share, lone ones are not;
- `--mode perf`: `perf record --call-graph dwarf` of each proxy into WORK/probe-<name>.perf;
- `--mode pyspy`: `py-spy record --native` (it stops the process per sample) into
  WORK/probe-<name>.folded; `bench/profiles.py` reads it.

    python -m bench.probe --scenario ambit-waypoint --seconds 10
    python -m bench.probe --scenario ambit-l4-cross-node --load conn --rate 300
    PYTHONPATH=<other tree> python -m bench.probe ...      # the same probe of another tree

Set AMBIT_BENCH_LAB_NAME to run beside another bench lab. Alternate the trees (A B B A) and read
the figures pair by pair: on a shared box the CPU moves with the load around it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench import l7, labenv, measures, parsers, tools
from bench.plan import SCENARIOS

FIELDS = ("syscr", "syscw", "vcs")


def parse_io(io_text: str, statuses: list[str]) -> dict[str, int]:
    """syscr/syscw of /proc/<pid>/io, and the voluntary context switches of all its threads."""
    d = {}
    for line in io_text.splitlines():
        key, _, value = line.partition(":")
        if key in ("syscr", "syscw"):
            d[key] = int(value)
    d["vcs"] = sum(int(line.split()[1]) for s in statuses for line in s.splitlines()
                   if line.startswith("voluntary_ctxt_switches"))
    return d


def per_request(before: Mapping[str, float], after: Mapping[str, float], requests: int) -> dict[str, float]:
    """Each counter's growth over the window, divided by the requests served in it."""
    if requests <= 0:
        raise ValueError(f"per_request: requests={requests} must be positive")
    return {k: (after[k] - before[k]) / requests for k in after if k in before}


@dataclass(frozen=True)
class Burst:
    """Slow requests that started within `gap_us` of each other."""

    start_us: int           # the first one's start
    requests: int
    max_us: int             # the slowest one's duration


def bursts(rows: Sequence[parsers.Request], threshold_us: int, gap_us: int = 5000) -> list[Burst]:
    """Requests of at least `threshold_us`, grouped while each starts within `gap_us` of the
    previous one, in time order. Many clients slow at once point at a stall they share (a proxy's
    loop, the machine); lone slow requests at scheduling or the client."""
    out: list[Burst] = []
    last = 0
    for r in sorted((r for r in rows if r.duration_us >= threshold_us), key=lambda r: r.start_us):
        if out and r.start_us - last <= gap_us:
            b = out[-1]
            out[-1] = Burst(b.start_us, b.requests + 1, max(b.max_us, r.duration_us))
        else:
            out.append(Burst(r.start_us, 1, r.duration_us))
        last = r.start_us
    return out


def latency_report(rows: Sequence[parsers.Request]) -> list[str]:
    """Lines: the percentiles, then the slow requests' bursts (the five largest)."""
    if not rows:
        return ["latency: no request logged"]
    d = sorted(r.duration_us for r in rows)
    n = len(d)
    p = {q: d[min(n - 1, int(n * q))] for q in (0.5, 0.9, 0.99, 0.999)}
    lines = [f"latency ({n} requests, µs): p50 {p[0.5]}, p90 {p[0.9]}, p99 {p[0.99]}, p99.9 {p[0.999]}, "
             f"max {d[-1]}"]
    bs = bursts(rows, p[0.99])
    if bs:
        t0 = min(r.start_us for r in rows)
        lone = sum(1 for b in bs if b.requests == 1)
        lines.append(f"slow (≥ p99): {sum(b.requests for b in bs)} requests in {len(bs)} bursts, {lone} alone; "
                     "largest: " + ", ".join(f"{b.requests} at +{(b.start_us - t0) / 1e6:.2f} s (max {b.max_us})"
                                             for b in sorted(bs, key=lambda b: (-b.requests, b.start_us))[:5]))
    return lines


def conn_load_argv(url: str, rate: int, seconds: float) -> list[str]:
    """h2load making `rate` new connections per second for `seconds`, one request on each.

    h2load's `--rate` opens that many clients per `--rate-period`; with `-n` equal to `-c` each
    client sends one request and closes: a fixed-rate, open-loop stream of new connections."""
    if rate < 10 or seconds <= 0:
        raise ValueError(f"conn_load_argv: rate={rate} must be at least 10 and seconds={seconds} positive")
    total = round(rate * seconds)
    return ["h2load", "--h1", "-t", "1", "--rate", str(round(rate / 10)), "--rate-period", "100ms",
            "-c", str(total), "-n", str(total), "-T", "5", url]


def _read(pid: int) -> dict[str, int]:
    tasks = Path(f"/proc/{pid}/task")
    statuses = [(t / "status").read_text() for t in tasks.iterdir()]
    return parse_io(Path(f"/proc/{pid}/io").read_text(), statuses)


def _recorder(mode: str, name: str, pid: int, seconds: float, work: Path) -> subprocess.Popen[str] | None:
    out = work / f"probe-{name.replace('/', '-')}"
    if mode == "perf":
        argv = ["perf", "record", "-F", "499", "--call-graph", "dwarf,32768", "-o", f"{out}.perf", "-p", str(pid),
                "--", "sleep", str(round(seconds))]
    elif mode == "pyspy":
        argv = measures.py_spy_argv(measures.py_spy() or "py-spy", pid, seconds, Path(f"{out}.folded"))
    else:
        return None
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenario", default="ambit-waypoint", choices=sorted(SCENARIOS))
    ap.add_argument("--load", choices=("keepalive", "conn", "wrk", "iperf"), default="keepalive",
                    help="requests on kept connections, new connections at --rate, wrk's closed loop, "
                         "or iperf3's bulk streams")
    ap.add_argument("--streams", type=int, default=4, help="iperf3's parallel streams (--load iperf)")
    ap.add_argument("--rate", type=int, default=1000,
                    help="requests (--load conn: connections) per second (default 1000)")
    ap.add_argument("--seconds", type=float, default=10.0, help="the measured window (default 10)")
    ap.add_argument("--mode", choices=("io", "perf", "pyspy"), default="io")
    ap.add_argument("--work", type=Path, default=Path("/tmp/ambit-probe"))
    args = ap.parse_args()
    sc = SCENARIOS[args.scenario]
    if not sc.mesh:
        ap.error(f"--scenario {sc.name}: not a mesh scenario (no ztunnel to probe)")
    if args.load == "iperf" and sc.l7:
        ap.error(f"--load iperf: {sc.name} carries HTTP only (no iperf3 behind an HTTP proxy)")
    args.work.mkdir(parents=True, exist_ok=True)
    from ambitctl.lab import state
    with labenv.lab_up(args.work, sc.phase, l7=bool(sc.l7)) as lab:
        l7set = l7.L7Set(lab, args.work, [sc.l7] if sc.l7 else [])
        try:
            failed = l7set.start() if sc.l7 else {}
            if failed:
                raise SystemExit(f"{sc.name}: {failed}")
            if sc.l7:
                l7set.activate(sc.l7)
            labenv.wait_captured(lab, [sc.client_key])
            t = measures.target_for(lab, sc, None, l7set.pids(sc.l7) if sc.l7 else None)
            measures.check_path(lab, t)
            pids = {k: int(v["pid"]) for k, v in state.runtime(lab.base).items()
                    if k.startswith("ztunnel/") and v.get("pid")}
            if sc.waypoint:
                pids = {"waypoint": t.l7_pids()[0], **pids}
            warmup = 2.0
            if args.load == "wrk":
                argv = tools.wrk_conn_argv(t.url, 8, args.seconds)
                loads = []
            elif args.load == "iperf":
                argv = tools.iperf3_argv(t.iperf_host, t.iperf_port, args.streams, round(args.seconds))
                loads = []
                warmup = 0.0
            elif args.load == "conn":
                out = (args.work / "probe-load.log").open("w")     # h2load's summary: failures, if any
                loads = [lab.popen(sc.client_key, conn_load_argv(t.url, args.rate, args.seconds + warmup + 2),
                                   stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)]
                out.close()
            else:
                for old_log in args.work.glob("probe-h2load-*.tsv"):
                    old_log.unlink()
                loads = [lab.popen(sc.client_key, ["h2load", *([] if sc.h2 else ["--h1"]), "-c", "1", "-m", "1",
                                                    "--rps", f"{r:g}", "-D", f"{round(args.seconds + warmup + 2)}s",
                                                    f"--log-file={args.work / f'probe-h2load-{i}.tsv'}", t.url],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
                         for i, r in enumerate(tools.split_rate(args.rate, 100))]
            wrk = iperf = None
            try:
                time.sleep(warmup)
                recs = [(n, _recorder(args.mode, n, p, args.seconds, args.work)) for n, p in pids.items()]
                cpu0, io0 = t.proxy_cpu() if t.proxy_cpu else {}, {n: _read(p) for n, p in pids.items()}
                if args.load == "wrk":
                    wrk = parsers.parse_wrk(measures._run(lab, sc, argv, timeout=args.seconds + 30))
                elif args.load == "iperf":
                    iperf = parsers.parse_iperf3(measures._run(lab, sc, argv, timeout=args.seconds + 30))
                else:
                    time.sleep(args.seconds)
                cpu1, io1 = t.proxy_cpu() if t.proxy_cpu else {}, {n: _read(p) for n, p in pids.items()}
            finally:
                for p in loads:
                    p.wait(timeout=60)
            unit = {"keepalive": "request", "iperf": "MB"}.get(args.load, "connection")
            if iperf is not None:
                requests = max(1, round(iperf.bytes / 1e6))
                print(f"{sc.name}: iperf3 -P {args.streams}, {iperf.gbit_per_second:.2f} Gbit/s over "
                      f"{iperf.seconds:g} s ({requests} MB, {iperf.retransmits} retransmits), "
                      f"load average {os.getloadavg()[0]:.2f}")
            elif wrk is not None:
                requests = wrk.requests
                print(f"{sc.name}: wrk closed loop, {wrk.per_second:.0f} connections/s over {args.seconds:g} s "
                      f"({requests} connections, {sum(wrk.errors.values())} errors), load average {os.getloadavg()[0]:.2f}")
            else:
                requests = round(args.rate * args.seconds)
                print(f"{sc.name}: {args.rate} {unit}s/s over {args.seconds:g} s (~{requests} {unit}s), "
                      f"load average {os.getloadavg()[0]:.2f}")
            for name in cpu1:
                print(f"  CPU {name}: {cpu1[name] - cpu0[name]:.3f} s, "
                      f"{1e6 * (cpu1[name] - cpu0[name]) / requests:.0f} µs per {unit}")
            for name in pids:
                each = per_request(io0[name], io1[name], requests)
                print(f"  {name}: " + ", ".join(f"{k} {each[k]:.2f}" for k in FIELDS) + f" per {unit}")
            if args.load == "keepalive":
                rows = [r for log in sorted(args.work.glob("probe-h2load-*.tsv"))
                        for r in parsers.parse_h2load_log(log.read_text(), what=str(log))]
                for line in latency_report(rows):
                    print(f"  {line}")
            for name, rec in recs:
                if rec is not None:
                    _, err = rec.communicate(timeout=120)
                    print(f"  {args.mode} {name}: rc {rec.returncode} {err.strip()[-200:]}")
        finally:
            l7set.stop()


if __name__ == "__main__":
    main()
