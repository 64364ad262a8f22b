"""The demo's walk-through steps, in order. Each prints what it shows; see ambit/lab/demo.py."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from ambit.lab import lab
from ambit.lab.demo import BOLD, DIM, GREEN, RESET, run_in, show_echo, step


def _ambit(*args: str) -> subprocess.CompletedProcess[str]:
    print(f"{DIM}$ ambit {' '.join(args)}{RESET}", flush=True)
    return subprocess.run([sys.executable, "-m", "ambit.cli", *args], capture_output=True, text=True, timeout=60)


def _access(node: str) -> list[dict]:
    p = subprocess.run([sys.executable, "-m", "ambit.cli", "lab", "logs", "ztunnel", "--node", node],
                       capture_output=True, text=True, timeout=30)
    return [json.loads(ln[7:]) for ln in p.stdout.splitlines() if ln.startswith("access ")]


def _show_access(rec: dict) -> None:
    keys = ("direction", "route", "src.addr", "src.workload", "dst.addr", "dst.workload", "bytes_sent", "bytes_recv")
    print("  " + GREEN + "ztunnel access log: " + RESET + " ".join(f"{k}={rec[k]}" for k in keys if k in rec))


def plain_routing() -> None:
    step("3. A request from demo/client to the echo service, by name, across nodes")
    for _ in range(3):
        show_echo(run_in("demo/client", "curl -s -m 5 http://echo.demo.svc.cluster.local:8080/"))


def captured_next_to_uncaptured() -> None:
    step("4. Capture: demo/ is enrolled (ambit.io/dataplane-mode=ambient), legacy/ is not")
    s = lab.status()
    for p in s["pods"]:
        cap = p["capture"] if isinstance(p["capture"], str) else p["capture"].get("state")
        print(f"  {p['namespace'] + '/' + p['name']:<16} on {p['node']}: capture {BOLD}{cap}{RESET}")
    v2 = next(p for p in s["pods"] if p["name"] == "echo-v2")
    print("\n  demo/client (enrolled) -> echo-v2: the eBPF connect4 hook hands it to ztunnel on node1")
    n1 = len(_access("node1"))
    show_echo(run_in("demo/client", f"curl -s -m 5 http://{v2['ip']}:8080/"))
    time.sleep(0.3)
    for rec in [r for r in _access("node1")[n1:] if r["direction"] == "outbound"][-1:]:
        _show_access(rec)
    print("\n  legacy/client (not enrolled) -> echo-v2: no outbound capture on node2; the echo pod's own")
    print("  inbound capture (TC + sk_assign) still hands it to ztunnel on :15006, with the client IP kept")
    n2 = len(_access("node2"))
    show_echo(run_in("legacy/client", f"curl -s -m 5 http://{v2['ip']}:8080/"))
    time.sleep(0.3)
    recs = _access("node2")[n2:]
    print(f"  outbound records for legacy/client: {sum(1 for r in recs if r['direction'] == 'outbound')}")
    for rec in [r for r in recs if r["direction"] == "inbound"][-1:]:
        _show_access(rec)


def enrol_at_runtime() -> None:
    step("5. Enrol a namespace at runtime: label legacy, and its traffic is captured within a second")
    _ambit("label", "namespace", "legacy", "ambit.io/dataplane-mode=ambient")
    time.sleep(1.0)
    cap = next(p for p in lab.status()["pods"] if p["namespace"] == "legacy")["capture"]
    print(f"  legacy/client capture: {BOLD}{cap if isinstance(cap, str) else cap.get('state')}{RESET}")
    _ambit("label", "namespace", "legacy", "ambit.io/dataplane-mode-")
    print("  (label removed again, so the next steps see legacy/ as a non-mesh client)")
    time.sleep(1.0)


STEPS = [plain_routing, captured_next_to_uncaptured, enrol_at_runtime]
