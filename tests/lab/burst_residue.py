"""What a burst of held tunnels leaves in each ztunnel, burst after burst (a measurement, not a test).

    python -m tests.lab.burst_residue [--n 10000] [--rounds 3] [--idle 0]

Why: after the full-size soak's 10,000 tunnels were closed and the pool's connections had idled out,
each ztunnel's RSS stayed ~25-30 MB above where it started (docs/performance.md, "The full-size
soak"). Retention (the allocators keeping freed memory to reuse) stays put on the next burst; a
leak grows with every one. This brings up a lab of its own (prefix `hbr`, torn down whatever
happens), and per round opens `--n` tunnels demo/client -> demo/iperf (node1 -> node2), holds them
`--idle` s, closes them, waits until each ztunnel's fds are back where they started (the client
pool closes idle connections after 60 s), then reads each ztunnel's `/memory` (RSS, anonymous
memory, glibc's heap in use, objects the collector tracks). One JSON line per round.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ambit import rlimits
from ambit.dataplane import endpoint
from tests.lab.conftest import MESH_SPEC
from tests.lab.labctl import REPO, Lab, running_lab

NODES = ("node1", "node2")


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def memory(lab: Lab, node: str) -> dict[str, Any]:
    status, body = endpoint.get_json(lab.dir / node / "admin.sock", "/memory", timeout=30)
    assert status == 200, status
    malloc = body.get("malloc") or {}
    return {"rss_mb": round(body["rss_kb"] / 1024, 1), "anon_mb": round(body.get("anon_kb", 0) / 1024, 1),
            "malloc_in_use_mb": round(malloc.get("in_use_kb", 0) / 1024, 1), "gc_tracked": body["gc"]["tracked"]}


def tool(lab: Lab, pod: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(lab.exec_argv(pod, sys.executable, "-m", "tests.lab.hbone_tools", *args), env=lab.env,
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--idle", type=float, default=0.0)
    a = ap.parse_args(argv)
    rlimits.raise_nofile()
    with tempfile.TemporaryDirectory(prefix="hbr-") as tmp, \
            running_lab(Path(tmp), "hbr", MESH_SPEC, "burst-residue-lab") as lab:
        pids = {n: lab.proc_pid(f"ztunnel/{n}") for n in NODES}
        base = {n: fds(pid) for n, pid in pids.items()}
        print(json.dumps({"round": 0, **{n: memory(lab, n) for n in NODES}}), flush=True)
        server = lab.pod("demo/iperf")["ip"]
        echo = tool(lab, "demo/iperf", "echo-server", "--port", "700")
        try:
            assert echo.stdout is not None and echo.stdout.readline().strip() == "ready"
            for r in range(1, a.rounds + 1):
                h = tool(lab, "demo/client", "hold", "--target", f"{server}:700", "--n", str(a.n),
                         "--hold", str(a.idle), "--parallel", "400")
                out, err = h.communicate(timeout=900)
                res = json.loads([ln for ln in out.splitlines() if ln.startswith("{")][-1])
                t0 = time.monotonic()
                lab.wait_for(lambda: all(fds(p) <= base[n] + 2 for n, p in pids.items()), timeout=180,
                             interval=1, what="ztunnel fds back once the pool is idle")
                print(json.dumps({"round": r, "verified": res.get("verified"), "reverified": res.get("reverified"),
                                  "settled_s": round(time.monotonic() - t0), **{n: memory(lab, n) for n in NODES}}),
                      flush=True)
        finally:
            os.killpg(echo.pid, 15)
            echo.wait(10)


if __name__ == "__main__":
    main()
