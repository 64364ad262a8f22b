"""`ambit lab demo` (what `make demo` runs): bring up the lab and show, step by step, what Ambit does.

Each step runs real commands in the lab and prints what they showed. Steps are added as
capabilities land; a step that fails says so and the demo goes on, so a newcomer sees how far
their machine got.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from collections.abc import Callable

from ambit import check
from ambitctl.lab import lab, paths
from ambitctl.term import codes

BOLD, DIM, GREEN, RED, RESET = codes(sys.stdout)   # empty when stdout is not a terminal or NO_COLOR is set


def step(title: str) -> None:
    print(f"\n{BOLD}── {title}{RESET}", flush=True)


def run_in(pod: str, cmd: str, show: bool = True) -> subprocess.CompletedProcess[str]:
    if show:
        print(f"{DIM}$ ambit lab exec {pod} -- {cmd}{RESET}", flush=True)
    return subprocess.run([sys.executable, "-m", "ambitctl.cli", "lab", "exec", pod, "--", *shlex.split(cmd)],
                          capture_output=True, text=True, timeout=60)


def show_echo(p: subprocess.CompletedProcess[str]) -> dict | None:
    if p.returncode != 0:
        print(f"  {RED}failed{RESET} (exit {p.returncode}): {p.stderr.strip()[:200]}")
        return None
    try:
        d = json.loads(p.stdout.splitlines()[0])
    except (json.JSONDecodeError, IndexError):
        print(f"  {p.stdout[:300]}")
        return None
    print(f"  {GREEN}reply{RESET} from pod={d['pod']} version={d['version']} saw peer={d['peer']}")
    return d


def _steps() -> list[Callable[[], None]]:
    from ambitctl.lab import demo_steps
    return demo_steps.STEPS


def run() -> int:
    step("1. Preflight: can this machine run Ambit? (ambit check)")
    results = check.run_all()
    failed = check.first_required_failure(results)
    for r in results:
        print(f"  [{'ok' if r.ok else 'FAIL'}] {r.name:<22} {r.detail[:90]}")
    if failed:
        print(f"{RED}cannot continue: {failed.name}: {failed.detail}{RESET}\n  hint: {failed.hint}")
        return 1

    step("2. Bring up the netns lab (ambit lab up)")
    if lab.is_up():
        print("  a lab is already up; using it")
    else:
        lab.up(lab.load_spec(None, None), name=os.environ.get("AMBIT_LAB_NAME", "ambit"))
    s = lab.status()
    print(f"  underlay netns {s['underlay']['netns']} ({s['underlay']['cidr']}); nodes: "
          + ", ".join(f"{n['name']} ({n['underlayIP']}, pods {n['podCIDR']})" for n in s["nodes"]))
    for p in s["pods"]:
        print(f"  pod {p['namespace'] + '/' + p['name']:<16} on {p['node']}  ip {p['ip']:<12} cgroup {p['cgroup']}")

    for fn in _steps():
        try:
            fn()
        except Exception as e:  # keep walking: show what works on this machine
            print(f"  {RED}step failed: {e}{RESET}")

    step("Done")
    print(f"  The lab is still up. Explore it:\n"
          f"    .venv/bin/ambit lab status\n"
          f"    .venv/bin/ambit lab exec demo/client -- curl -s http://echo.demo.svc.cluster.local:8080/\n"
          f"    .venv/bin/ambit lab logs ztunnel --node node1\n"
          f"  Logs: {paths.log_dir()}.  Remove everything with: .venv/bin/ambit lab down")
    return 0
