"""The demo's L7 steps: a waypoint for default/, then the seed examples' header routing, cookie
canary split and L7 authorization, typed as a user would (`ambit apply -f
../shared/examples/istio/virtual-service.yaml`) and shown working on real requests.

They run only when the waypoint exists: `python -m waypoint --help` must succeed, and the Gateway
this step applies must take traffic (the echo app sees the `x-request-id` only a waypoint adds).
Otherwise each says "waypoint not available: skipped" and the rest of the demo goes on.

The lab's default spec has what the seed YAML names: Service `myapp` in `default` (pods myapp-v1
and myapp-v2, labelled version v1/v2) and `default/frontend` (service account `frontend`, the
principal the seed's AuthorizationPolicy allows).
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from ambitctl.lab.demo import BOLD, DIM, GREEN, RED, RESET, run_in, step

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO.parent / "shared" / "examples" / "istio"
SHOWN_EXAMPLES = "../shared/examples/istio"
URL = "http://myapp.default.svc.cluster.local/"
SPLIT_N = 200                       # requests for the 90/10 split: ±4.2 points at 2σ
WAYPOINT_READY_S = 30.0

WAYPOINT = """apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: waypoint
  namespace: default
  labels: {istio.io/waypoint-for: service}
spec:
  gatewayClassName: istio-waypoint
  listeners:
  - {name: mesh, port: 15008, protocol: HBONE}
"""

# The seed's canary-deployment.yaml routes to subsets stable/canary/premium; no seed file defines
# them, so the demo does (stable = v1, canary and premium = v2), next to destination-rule.yaml's v1/v2.
CANARY_SUBSETS = """apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: myapp, namespace: default}
spec:
  host: myapp
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  - {name: stable, labels: {version: v1}}
  - {name: canary, labels: {version: v2}}
  - {name: premium, labels: {version: v2}}
"""

# The seed's policy uses `selector`, which binds it to ztunnels (L4): its methods/paths cannot be
# checked there. Bound to the Service with `targetRefs`, the waypoint enforces the same rules.
AUTHZ_TARGETREFS = """apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: myapp-auth, namespace: default}
spec:
  targetRefs:
  - {kind: Service, group: "", name: myapp}
  rules:
  - from:
    - source: {principals: ["cluster.local/ns/default/sa/frontend"]}
    to:
    - operation: {methods: ["GET"], paths: ["/api/*"]}
"""

_state = {"ready": False, "why": ""}


def _ambit(*args: str, stdin: str | None = None, shown: str = "") -> subprocess.CompletedProcess[str]:
    print(f"{DIM}$ {shown or 'ambit ' + ' '.join(args)}{RESET}", flush=True)
    p = subprocess.run([sys.executable, "-m", "ambitctl.cli", *args], input=stdin, capture_output=True, text=True,
                       timeout=60, cwd=REPO)
    for ln in (p.stdout + p.stderr).strip().splitlines():
        print(f"  {ln}")
    return p


def _apply_example(name: str, wait: bool = False) -> subprocess.CompletedProcess[str]:
    """`wait`: return once every proxy holds it (`--wait`); it also covers every write before it."""
    w = ("--wait",) if wait else ()
    return _ambit("apply", "-f", str(EXAMPLES / name), *w, shown=f"ambit apply -f {SHOWN_EXAMPLES}/{name}{' --wait' * wait}")


def _apply_stdin(doc: str, what: str, wait: bool = False) -> subprocess.CompletedProcess[str]:
    print(DIM + "\n".join("  " + ln for ln in doc.splitlines()) + RESET)
    w = ("--wait",) if wait else ()
    return _ambit("apply", "-f", "-", *w, stdin=doc, shown=f"ambit apply -f -{' --wait' * wait}   # {what}")


def _delete_stdin(doc: str) -> None:
    subprocess.run([sys.executable, "-m", "ambitctl.cli", "delete", "-f", "-", "--ignore-not-found"], input=doc,
                   capture_output=True, text=True, timeout=60, cwd=REPO)


def waypoint_binary() -> tuple[bool, str]:
    """Whether `python -m waypoint` exists on this branch (it answers --help)."""
    try:
        p = subprocess.run([sys.executable, "-m", "waypoint", "--help"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, str(e)
    if p.returncode != 0:
        return False, (p.stderr.strip().splitlines() or [f"exit {p.returncode}"])[-1]
    return True, ""


def _skip(title: str) -> bool:
    if _state["ready"]:
        return False
    step(title)
    print(f"  {BOLD}waypoint not available: skipped{RESET} ({_state['why']})")
    return True


def _requests(pod: str, n: int, *headers: str, method: str = "GET", path: str = "") -> list[dict | int]:
    """n requests from `pod`, in one shell loop inside it (one `lab exec`, not n): each reply's JSON,
    or its HTTP status when it was not JSON (a 403 from the waypoint)."""
    hs = " ".join(f"-H {shlex.quote(h)}" for h in headers)
    loop = (f"for i in $(seq {n}); do curl -s -m 5 -X {method} {hs} -w '\\n%{{http_code}}\\n' {URL}{path}; done")
    print(f"{DIM}$ ambit lab exec {pod} -- sh -c \"{loop}\"{RESET}", flush=True)
    p = subprocess.run([sys.executable, "-m", "ambitctl.cli", "lab", "exec", pod, "--", "sh", "-c", loop],
                       capture_output=True, text=True, timeout=60 + n)
    out: list[dict | int] = []
    body: dict | None = None
    for ln in p.stdout.splitlines():
        if ln.startswith("{"):
            try:
                body = json.loads(ln)
            except json.JSONDecodeError:
                body = None
        elif ln.strip().isdigit():
            out.append(body if body is not None and ln.strip() == "200" else int(ln.strip()))
            body = None
    return out


def _versions(replies: list[dict | int]) -> Counter[str]:
    return Counter(r.get("version", "?") if isinstance(r, dict) else f"HTTP {r}" for r in replies)


def _show_counts(label: str, c: Counter[str]) -> None:
    n = sum(c.values())
    parts = ", ".join(f"{k}: {v} ({100 * v / n:.0f}%)" for k, v in sorted(c.items())) if n else "no replies"
    print(f"  {label:<34} {GREEN}{parts}{RESET}")


def waypoint_for_default() -> None:
    step("10. L7: a waypoint for default/ (a Gateway of class istio-waypoint), and myapp uses it")
    _state.update(ready=False, why="")
    ok, why = waypoint_binary()
    if not ok:
        _state["why"] = f"`python -m waypoint --help` failed: {why}"
        print(f"  {BOLD}waypoint not available: skipped{RESET} ({_state['why']})")
        return
    if not EXAMPLES.is_dir():
        _state["why"] = f"the seed examples are not at {SHOWN_EXAMPLES}"
        print(f"  {BOLD}waypoint not available: skipped{RESET} ({_state['why']})")
        return
    if _apply_stdin(WAYPOINT, "Gateway default/waypoint").returncode != 0:
        _state["why"] = "the waypoint Gateway was not accepted"
        print(f"  {RED}{_state['why']}{RESET}")
        return
    _ambit("label", "namespace", "default", "istio.io/use-waypoint=waypoint")
    deadline = time.monotonic() + WAYPOINT_READY_S
    while time.monotonic() < deadline:
        p = run_in("default/frontend", f"curl -s -m 3 {URL}", show=False)
        try:
            seen = json.loads(p.stdout.splitlines()[0])
        except (json.JSONDecodeError, IndexError):
            seen = {}
        if "x-request-id" in seen.get("headers", {}):
            _state["ready"] = True
            print(f"  {GREEN}requests to myapp now cross the waypoint{RESET} (the echo app sees "
                  f"x-request-id {seen['headers']['x-request-id']}; ztunnel adds none)")
            return
        time.sleep(1.0)
    _state["why"] = f"the waypoint took no traffic within {WAYPOINT_READY_S:.0f}s"
    print(f"  {RED}{_state['why']}{RESET}")


def header_routing() -> None:
    title = "11. L7: the seed's virtual-service.yaml: x-canary: true → v2, everything else → v1"
    if _skip(title):
        return
    step(title)
    _apply_example("destination-rule.yaml")
    _apply_example("virtual-service.yaml", wait=True)
    _show_counts("20 requests without x-canary:", _versions(_requests("default/frontend", 20)))
    _show_counts("20 requests with x-canary: true:", _versions(_requests("default/frontend", 20, "x-canary: true")))


def cookie_canary() -> None:
    title = f"12. L7: the seed's canary-deployment.yaml: premium cookie → premium, else 90/10 over {SPLIT_N} requests"
    if _skip(title):
        return
    step(title)
    _ambit("delete", "virtualservice", "myapp", "-n", "default")
    print("  (the seed names host myapp.example.com; in the mesh a VirtualService binds to a Service's\n"
          "   host, so the demo applies it for host myapp)")
    _apply_stdin(CANARY_SUBSETS, "DestinationRule: the stable/canary/premium subsets it routes to")
    doc = (EXAMPLES / "canary-deployment.yaml").read_text().replace("myapp.example.com", "myapp")
    _ambit("apply", "-f", "-", "--wait", stdin=doc,
           shown=f"sed s/myapp.example.com/myapp/ {SHOWN_EXAMPLES}/canary-deployment.yaml | ambit apply -f - --wait")
    c = _versions(_requests("default/frontend", SPLIT_N))
    _show_counts(f"{SPLIT_N} requests, no cookie (90/10):", c)
    _show_counts("20 requests, Cookie: user=premium:",
                 _versions(_requests("default/frontend", 20, "Cookie: user=premium")))
    _ambit("delete", "virtualservice", "myapp-canary", "-n", "default")


def _verdicts(pod: str, method: str, path: str) -> None:
    (r,) = _requests(pod, 1, method=method, path=path) or [0]
    code = 200 if isinstance(r, dict) else r
    colour = GREEN if code == 200 else RED
    print(f"  {pod:<18} {method:<5} /{path:<12} → {colour}HTTP {code}{RESET}")


def l7_authorization() -> None:
    title = "13. L7: the seed's authorization-policy.yaml: frontend may GET /api/* and nothing else"
    if _skip(title):
        return
    step(title)
    _apply_example("authorization-policy.yaml")
    print("  (a `selector` policy binds to ztunnels, which cannot see methods or paths: Ambit says so above.\n"
          "   Bound to the Service with `targetRefs`, the waypoint enforces the same rules:)")
    _apply_stdin(AUTHZ_TARGETREFS, "the same rules, targetRefs: Service myapp", wait=True)
    try:
        for pod, method, path in (("default/frontend", "GET", "api/users"), ("default/frontend", "POST", "api/users"),
                                  ("default/frontend", "GET", "admin"), ("demo/client", "GET", "api/users")):
            _verdicts(pod, method, path)
    finally:
        _delete_stdin(AUTHZ_TARGETREFS)


def l7_cleanup() -> None:
    if not _state["ready"] and not waypoint_binary()[0]:
        return
    step("14. L7: clean up (policies, routes, the waypoint; default/ leaves it)")
    _ambit("label", "namespace", "default", "istio.io/use-waypoint-")
    for doc in (AUTHZ_TARGETREFS, CANARY_SUBSETS, WAYPOINT):
        _delete_stdin(doc)
    for name in ("virtual-service.yaml", "canary-deployment.yaml"):
        if EXAMPLES.is_dir():
            _delete_stdin((EXAMPLES / name).read_text().replace("myapp.example.com", "myapp"))
    print("  done")


STEPS = [waypoint_for_default, header_routing, cookie_canary, l7_authorization, l7_cleanup]
