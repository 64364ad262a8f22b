"""`python -m bench` / `make bench` / `ambit bench`: options, the run, and writing the results."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench import bytecode, charts, report, sysinfo
from bench import plan as planmod
from bench import ratios as ratiomod
from bench import targets as targetmod
from bench.results import RunResults

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]
# Tool -> the Debian package that provides it (named in the error when it is missing).
REQUIRED = {"iperf3": "iperf3", "h2load": "nghttp2-client", "wrk": "wrk", "nginx": "nginx-light",
            "stunnel": "stunnel4", "haproxy": "haproxy", "curl": "curl"}
SCHEMA = "ambit-bench/1"


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--quick", action="store_true", help="3 reps of 1 s runs (about 5 min) instead of 5 s runs")
    ap.add_argument("--reps", type=int, help="repetitions per scenario (default 3)")
    ap.add_argument("--seconds", type=float, help="length of each timed load run")
    ap.add_argument("--scenario", action="append", metavar="NAME",
                    help=f"run only these scenarios (repeatable): {', '.join(planmod.SCENARIOS)}")
    ap.add_argument("--no-push", action="store_true", help="skip the controller config push measure")
    ap.add_argument("--profile", action="store_true",
                    help="after each scenario's first rep, one extra, unrecorded run under py-spy --native: the ztunnels "
                         "at 1000 req/s (cross-node), the waypoint at max rate (waypoint scenarios); needs py-spy")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR, help=f"where results go (default {RESULTS_DIR})")
    ap.add_argument("--render", type=Path, metavar="RESULTS.json",
                    help="do not run: re-render the summary and charts of an earlier results file")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench", description="Ambit benchmark suite (see bench/README.md)")
    add_arguments(ap)
    sys.exit(run(ap.parse_args(argv)))


def run(args: argparse.Namespace) -> int:
    out_dir: Path = args.out
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.render:
        return render_existing(args.render, out_dir)
    if os.geteuid() != 0:
        print("error: the benchmark builds a netns lab and needs root", file=sys.stderr)
        return 1
    missing = sysinfo.missing_tools(list(REQUIRED))
    if missing:
        pkgs = " ".join(sorted({REQUIRED[t] for t in missing}))
        print(f"error: missing tools: {', '.join(missing)} (apt-get install {pkgs}, or run `make setup`)",
              file=sys.stderr)
        return 1
    try:
        plan = planmod.make_plan(quick=args.quick, reps=args.reps, scenarios=args.scenario, seconds=args.seconds,
                                 profile=args.profile)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.no_push:
        plan.push_pods = 0
    stamp = time.strftime("%Y%m%d-%H%M%S")
    started = dt.datetime.now().astimezone()
    from bench.runner import Runner, say
    say(f"{plan.mode} run: {len(plan.scenarios)} scenarios × {plan.reps} reps, {plan.seconds:g} s per load run; "
        f"about {plan.estimate_seconds() / 60:.0f} min")
    # Memory figures are of processes that load bytecode, as a deployed image's do (bench/bytecode.py).
    compiled, seen, failed = bytecode.compile_stale(bytecode.package_dirs())
    if compiled or failed:
        say(f"compiled the bytecode of {compiled} of {seen} modules (missing or stale)"
            + (f"; {len(failed)} did not compile: {'; '.join(failed)[:300]}" if failed else ""))
    old_term = signal.signal(signal.SIGTERM, _terminate)
    interrupted = False
    with tempfile.TemporaryDirectory(prefix="ambit-bench-") as tmp:
        runner = Runner(plan, Path(tmp), out_dir, stamp)
        if compiled:
            runner.results.notes.append(f"bytecode of {compiled} of {seen} modules compiled before the run "
                                        "(missing or stale; bench/bytecode.py)")
        try:
            runner.run()
        except KeyboardInterrupt:
            interrupted = True
            runner.results.notes.append("the run was interrupted; results are partial")
            say("interrupted: the lab was torn down; writing partial results")
        finally:
            signal.signal(signal.SIGTERM, old_term)
        doc = build_document(runner.results, plan, started, runner.capture)
        paths = write_outputs(doc, runner.results, out_dir, stamp, runner.profiles)
        if runner.results.errors:
            # The lab's logs (ztunnel, agent, pods) explain failed measures; lab down deletes them.
            logs = out_dir / f"{stamp}-logs"
            for d in Path(tmp).glob("logs-*"):
                shutil.copytree(d, logs / d.name.removeprefix("logs-"), dirs_exist_ok=True)
            if logs.exists():
                paths.append(logs)
    say("results: " + ", ".join(str(p) for p in paths))
    return 130 if interrupted else 0


def _terminate(signum: int, _frame: object) -> None:
    """SIGTERM behaves like Ctrl-C: the lab is torn down and partial results are written.

    A Python function, not signal.default_int_handler: with the builtin installed, a SIGTERM
    arriving while the lab was up killed the process outright in our tests (exit 143, lab left up).
    """
    raise KeyboardInterrupt(f"signal {signum}")


def build_document(results: RunResults, plan: planmod.Plan, started: dt.datetime,
                   capture: dict[str, Any]) -> dict[str, Any]:
    finished = dt.datetime.now().astimezone()
    rs = ratiomod.all_ratios(results)
    verdicts = targetmod.evaluate(results)
    return {
        "schema": SCHEMA,
        "started": started.isoformat(timespec="seconds"),
        "finished": finished.isoformat(timespec="seconds"),
        "duration_s": round((finished - started).total_seconds(), 1),
        "plan": plan.to_dict(),
        "scenarios": {name: asdict(sc) for name, sc in planmod.SCENARIOS.items() if name in plan.scenarios},
        "machine": sysinfo.machine(),
        "tools": sysinfo.tool_versions(),
        "git": sysinfo.git_commit(REPO),
        "capture": capture,
        "results": results.summary(),
        "ratios": [asdict(r) for r in rs],
        "targets": [{"id": v.target.id, "description": v.target.description, "op": v.target.op,
                     "threshold": v.target.threshold, "unit": v.target.unit, "basis": v.target.basis,
                     "value": v.value, "status": v.status, "shortfall": v.shortfall} for v in verdicts],
        "istio": [{"what": ref.what, "istio": ref.istio, "unit": ref.unit, "ambit": ours, "basis": ref.basis}
                  for ref, ours in targetmod.references(results)],
        "details": results.details,
        "errors": results.errors,
        "notes": results.notes,
    }


def write_outputs(doc: dict[str, Any], results: RunResults, out_dir: Path, stamp: str,
                  profiles: dict[str, str] | None = None) -> list[Path]:
    made = charts.write_all(results, out_dir, stamp)
    doc["charts"] = made
    json_path = out_dir / f"{stamp}.json"
    json_path.write_text(json.dumps(doc, indent=1) + "\n")
    md = report.render(results, doc, targetmod.evaluate(results), ratiomod.all_ratios(results), made, profiles or {})
    md_path = out_dir / f"{stamp}.md"
    md_path.write_text(md)
    return [json_path, md_path] + [out_dir / m for m in made]


def render_existing(path: Path, out_dir: Path) -> int:
    try:
        doc = json.loads(path.read_text())
        results = RunResults.from_json(doc)
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {path}: cannot read results: {e}", file=sys.stderr)
        return 1
    stamp = path.stem
    paths = write_outputs(doc, results, out_dir, stamp)
    print("rendered: " + ", ".join(str(p) for p in paths))
    return 0
