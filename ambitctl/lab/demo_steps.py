"""The demo's walk-through steps, in order. Each prints what it shows; see ambitctl/lab/demo.py."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from ambitctl.lab import lab
from ambitctl.lab.demo import BOLD, DIM, GREEN, RED, RESET, run_in, show_echo, step


def _ambit(*args: str) -> subprocess.CompletedProcess[str]:
    print(f"{DIM}$ ambit {' '.join(args)}{RESET}", flush=True)
    return subprocess.run([sys.executable, "-m", "ambitctl.cli", *args], capture_output=True, text=True, timeout=60)


def _access(node: str) -> list[dict]:
    p = subprocess.run([sys.executable, "-m", "ambitctl.cli", "lab", "logs", "ztunnel", "--node", node],
                       capture_output=True, text=True, timeout=30)
    return [json.loads(ln[7:]) for ln in p.stdout.splitlines() if ln.startswith("access ")]


def _show_access(rec: dict) -> None:
    keys = ("direction", "route", "src.addr", "src.workload", "dst.addr", "dst.workload", "bytes_sent", "bytes_recv")
    print("  " + GREEN + "ztunnel access log: " + RESET + " ".join(f"{k}={rec[k]}" for k in keys if k in rec))


def plain_routing() -> None:
    step("3. A request from demo/client to the echo service, by name, across nodes")
    for _ in range(3):
        show_echo(run_in("demo/client", "curl -s -m 5 http://echo.demo.svc.cluster.local:8080/"))
    print("\n  The name: the pod's resolver asks the cluster DNS, but the eBPF hooks hand an enrolled pod's")
    print("  DNS query to ztunnel's DNS proxy in the pod's netns, which answers mesh names itself (TTL 30)")
    for pod in ("demo/client", "legacy/client"):
        p = run_in(pod, "dig +time=2 +tries=1 +noall +answer echo.demo.svc.cluster.local")
        answer = " ".join(p.stdout.split()) or p.stderr.strip() or "(no answer)"
        who = "ztunnel's DNS proxy" if pod.startswith("demo/") else "the cluster DNS (not enrolled)"
        print(f"  {GREEN}{answer}{RESET}  <- {who}")


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


def _ztunnel_log_lines(pattern: str) -> list[str]:
    out = []
    for node in ("node1", "node2"):
        p = subprocess.run([sys.executable, "-m", "ambitctl.cli", "lab", "logs", "ztunnel", "--node", node],
                           capture_output=True, text=True, timeout=30)
        out += [ln for ln in p.stdout.splitlines() if pattern in ln and not ln.startswith("access ")]
    return sorted(out)      # lines start with their timestamp


def _curl_verdict(pod: str, url: str) -> None:
    p = run_in(pod, f"curl -sS -o /dev/null -w %{{http_code}} -m 5 {url}")
    if p.returncode == 0:
        print(f"  {GREEN}allowed{RESET}: HTTP {p.stdout.strip()}")
    else:
        print(f"  {RED}refused{RESET} at once (curl exit {p.returncode}: {p.stderr.strip()[:80]})")


def encrypted_on_the_wire() -> None:
    step("6. On the wire: mesh traffic is mTLS (TLS 1.3) HBONE to port 15008, the payload is not visible")
    s = lab.status()
    ul = s["underlay"]["netns"]
    v1 = next(p for p in s["pods"] if p["name"] == "echo-v1")
    marker = f"secret-{uuid.uuid4().hex[:12]}"
    with tempfile.TemporaryDirectory() as d:
        pcap = Path(d) / "underlay.pcap"
        print(f"{DIM}$ ip netns exec {ul} tcpdump --immediate-mode -i any -w {pcap.name}{RESET}", flush=True)
        td = subprocess.Popen(["ip", "netns", "exec", ul, "tcpdump", "--immediate-mode", "-i", "any", "-U", "-Z",
                               "root", "-w", str(pcap)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            assert td.stderr is not None
            while "listening on" not in (td.stderr.readline() or "listening on"):
                pass
            time.sleep(1.0)
            # demo/iperf (node2) has not talked to echo-v1 (node1) yet: a fresh HBONE connection, handshake included
            show_echo(run_in("demo/iperf", f"curl -s -m 5 -H 'x-marker: {marker}' --data {marker} "
                                           f"http://{v1['ip']}:8080/"))
            time.sleep(1.0)
        finally:
            td.send_signal(signal.SIGINT)
            td.wait(10)
        print(f"{DIM}$ tshark -r {pcap.name} -d tcp.port==15008,tls -Y 'tls.handshake.type <= 2'{RESET}")
        t = subprocess.run(["tshark", "-r", str(pcap), "-d", "tcp.port==15008,tls", "-Y",
                            "tls.handshake.type == 1 || tls.handshake.type == 2", "-T", "fields", "-e", "ip.src",
                            "-e", "ip.dst", "-e", "tcp.dstport", "-e", "_ws.col.Info",
                            "-e", "tls.handshake.extensions.supported_version"],
                           capture_output=True, text=True, timeout=60)
        seen = set()
        for line in t.stdout.splitlines():
            src, dst, port, info, version = (line.split("\t") + [""] * 5)[:5]
            if (src, dst, info) in seen:      # -i any sees each frame on both bridge ports
                continue
            seen.add((src, dst, info))
            tls13 = " (TLS 1.3)" if "0x0304" in version else ""
            print(f"  {src} -> {dst}:{port}  {info}{tls13}")
        n = subprocess.run(["tshark", "-r", str(pcap), "-Y", "tcp.port == 15008"], capture_output=True, text=True,
                           timeout=60).stdout.count("\n")
        found = marker.encode() in pcap.read_bytes()
        print(f"  {n} packets to/from port 15008; the marker {marker!r} in the raw capture: "
              f"{(RED + 'FOUND') if found else (GREEN + 'not found')}{RESET}")


def spiffe_identities() -> None:
    step("7. Identities: each pod's service account, as a SPIFFE certificate from the controller's CA")
    p = _ambit("ztunnel-config", "certs")
    print("\n".join("  " + ln for ln in (p.stdout or p.stderr).splitlines()))


DENY_CLIENT = """apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-client, namespace: demo}
spec:
  selector: {matchLabels: {app: echo}}
  action: DENY
  rules:
  - from: [{source: {principals: [cluster.local/ns/demo/sa/client]}}]
"""


def denied_by_policy() -> None:
    step("8. L4 authorization at the destination: DENY demo/client's identity, then remove the policy")
    print(DIM + "\n".join("  " + ln for ln in DENY_CLIENT.splitlines()) + RESET)
    print(f"{DIM}$ ambit apply -f -{RESET}", flush=True)
    subprocess.run([sys.executable, "-m", "ambitctl.cli", "apply", "-f", "-"], input=DENY_CLIENT, text=True,
                   capture_output=True, timeout=60)
    try:
        time.sleep(1.0)
        _curl_verdict("demo/client", "http://echo.demo.svc.cluster.local:8080/")
        time.sleep(0.3)
        for ln in _ztunnel_log_lines("denied HBONE")[-1:]:
            print(f"  ztunnel log: {ln[ln.index('denied'):][:300]}")
    finally:
        subprocess.run([sys.executable, "-m", "ambitctl.cli", "delete", "-f", "-", "--ignore-not-found"],
                       input=DENY_CLIENT, text=True, capture_output=True, timeout=60)
    time.sleep(1.0)
    print("  policy deleted:")
    _curl_verdict("demo/client", "http://echo.demo.svc.cluster.local:8080/")


STRICT = """apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: demo}
spec: {mtls: {mode: STRICT}}
"""


def strict_mtls() -> None:
    step("9. PeerAuthentication STRICT in demo/: plaintext from legacy/client is refused, mesh clients are not")
    print(f"{DIM}$ ambit apply -f - (PeerAuthentication demo/strict, mode STRICT){RESET}", flush=True)
    subprocess.run([sys.executable, "-m", "ambitctl.cli", "apply", "-f", "-"], input=STRICT, text=True,
                   capture_output=True, timeout=60)
    try:
        time.sleep(1.0)
        print("  legacy/client (plaintext):")
        _curl_verdict("legacy/client", "http://echo.demo.svc.cluster.local:8080/")
        print("  demo/client (mTLS):")
        _curl_verdict("demo/client", "http://echo.demo.svc.cluster.local:8080/")
        time.sleep(0.3)
        for ln in _ztunnel_log_lines("plaintext refused")[-1:]:
            print(f"  ztunnel log: {ln[ln.index('denied'):][:300]}")
    finally:
        subprocess.run([sys.executable, "-m", "ambitctl.cli", "delete", "-f", "-", "--ignore-not-found"],
                       input=STRICT, text=True, capture_output=True, timeout=60)
    print("  (PeerAuthentication removed: PERMISSIVE again)")


def _l7_steps() -> list:
    from ambitctl.lab import demo_l7
    return demo_l7.STEPS


STEPS = [plain_routing, captured_next_to_uncaptured, enrol_at_runtime, encrypted_on_the_wire, spiffe_identities,
         denied_by_policy, strict_mtls, *_l7_steps()]
