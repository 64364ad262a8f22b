"""`ambit bug-report`: one tar.gz with what a maintainer asks for first, as `istioctl bug-report`.

    ambit bug-report                       # ./ambit-bug-report-<UTC time>.tar.gz
    ambit bug-report -o /tmp/report.tgz --log-tail 5000000

What goes in a cluster (with --context/--kubeconfig, or a kubeconfig and no lab): see
bugreport_cluster.py. What goes in (lab):
- `versions.json`: the CLI's version, Python, kernel, and each component's readiness answer
  (its config version and identity);
- `config/store.json` (the applied resources; Secret data removed), `config/<component>.json`
  (each ztunnel's and waypoint's translated config dump), `config/waypoint-*.routes.json`;
- `status/lab-state.json`, `status/<component>.*.json` (ready, certs metadata, clusters, stats);
- `logs/*`: the lab's component logs (the last `--log-tail` bytes of each);
- `check.txt` (`ambit check`) and `analyze.json` (`ambit analyze -A -o json`).

What never goes in: files are picked one by one (never the lab dir wholesale: its CA key,
node bootstrap tokens and certificate caches stay out), and every member is passed through
`redact` before it is written, which removes PEM private keys, JWTs (service-account and
bootstrap tokens), bearer tokens, and the values of keys named like secrets (token, key,
password, secret, private). tests/unit/ambitctl/test_bugreport.py plants each of those and
asserts none survives.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import re
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REDACTED = "<redacted>"
_PEM_KEY = re.compile(r"-----BEGIN ([A-Z0-9 ]*)PRIVATE KEY-----.*?(?:-----END \1PRIVATE KEY-----|\Z)", re.S)
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*")
_BEARER = re.compile(r"(?i)\b(bearer|authorization:)\s+[A-Za-z0-9._~+/=-]{8,}")
# "token": "...", token=..., api_key: ... : the value of any key whose name says secret.
_SECRET_KEY = r"[A-Za-z0-9_.-]*(?:token|secret|password|passwd|private[_-]?key|api[_-]?key|credential)[A-Za-z0-9_.-]*"
_KV_JSON = re.compile(r'("' + _SECRET_KEY + r'"\s*:\s*)"(?:[^"\\]|\\.)*"', re.I)
_KV_TEXT = re.compile(r"(?<![\w-])(" + _SECRET_KEY + r")(\s*[=:]\s*)(?!<redacted>)([^\s,;\"'}]{4,})", re.I)


def redact(text: str, known: tuple[str, ...] = ()) -> str:
    """`text` without key or token material (see the module docstring); `known` are secrets read
    from the lab itself (node bootstrap tokens: random strings no pattern recognises)."""
    for secret in known:
        text = text.replace(secret, REDACTED)
    text = _PEM_KEY.sub(f"-----{REDACTED} PRIVATE KEY-----", text)
    text = _JWT.sub(REDACTED, text)
    text = _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    text = _KV_JSON.sub(lambda m: f'{m.group(1)}"{REDACTED}"', text)
    return _KV_TEXT.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)


def known_secrets(base: Path) -> tuple[str, ...]:
    """The lab's own credentials, to be removed wherever they show up: node bootstrap tokens and
    every key file (the CA's, the certificate caches')."""
    out = []
    if base.is_dir():
        for f in base.rglob("*"):
            if f.is_file() and (f.name.endswith((".key", "-token", ".token")) or "key" in f.name.split(".")[0]):
                with contextlib.suppress(OSError, UnicodeDecodeError):
                    v = f.read_text().strip()
                    if len(v) >= 8:
                        out.append(v)
    return tuple(sorted(set(out), key=len, reverse=True))


def scrub_store(doc: Any) -> Any:
    """The lab store without Secret data (kept: that the Secret exists, and its keys' names)."""
    objs = doc.get("objects") if isinstance(doc, dict) else doc
    for o in objs if isinstance(objs, list) else []:
        if isinstance(o, dict) and o.get("kind") == "Secret":
            for field in ("data", "stringData"):
                if isinstance(o.get(field), dict):
                    o[field] = {k: REDACTED for k in o[field]}
    return doc


class Archive:
    """A tar.gz being written; every member redacted on the way in, and listed in MANIFEST."""

    def __init__(self, path: Path, root: str, known: tuple[str, ...] = ()) -> None:
        self.tar = tarfile.open(path, "w:gz")
        self.root = root
        self.known = known
        self.members: list[str] = []
        self.errors: list[str] = []

    def add(self, name: str, text: str) -> None:
        data = redact(text, self.known).encode()
        info = tarfile.TarInfo(f"{self.root}/{name}")
        info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
        self.tar.addfile(info, io.BytesIO(data))
        self.members.append(name)

    def add_json(self, name: str, obj: Any) -> None:
        self.add(name, json.dumps(obj, indent=1, sort_keys=True, default=str) + "\n")

    def collect(self, name: str, produce: Callable[[], str]) -> None:
        """Add what `produce` returns; a failure is recorded in ERRORS, never the end of the report."""
        try:
            self.add(name, produce())
        except Exception as e:  # noqa: BLE001 - a bug report gathers what it can
            self.errors.append(f"{name}: {type(e).__name__}: {e}")

    def close(self) -> None:
        self.add("MANIFEST", "".join(m + "\n" for m in [*self.members, "MANIFEST", "ERRORS"]))
        self.add("ERRORS", "".join(e + "\n" for e in self.errors))
        self.tar.close()


def _version() -> str:
    from ambit.version import VERSION
    return VERSION


def _get(sock: Path, path: str) -> str:
    from ambit.dataplane import endpoint
    status, body = endpoint.fetch(sock, path, timeout=3.0)
    return body.decode(errors="replace") if status < 500 else f'{{"http_status": {status}}}\n'


def _cli(argv: list[str], timeout: float = 60.0) -> str:
    p = subprocess.run([sys.executable, "-m", "ambitctl.cli", *argv], capture_output=True, text=True,
                       timeout=timeout, env={**os.environ, "NO_COLOR": "1"})
    return f"$ ambit {' '.join(argv)}  (exit {p.returncode})\n{p.stdout}{p.stderr}"


def _tail(path: Path, limit: int) -> str:
    with path.open("rb") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(max(0, size - limit))
        data = f.read()
    head = f"[... {size - limit} earlier bytes left out ...]\n" if size > limit else ""
    return head + data.decode(errors="replace")


def components(base: Path) -> dict[str, Path]:
    """component name -> admin socket, for every ztunnel and waypoint of the lab."""
    from ambitctl.lab import components as comp
    from ambitctl.lab import state, waypoints
    st = state.load(base)
    if st is None:
        return {}
    out = {f"ztunnel-{n['name']}": comp.ztunnel_admin_socket(base, n["name"]) for n in st.spec["nodes"]}
    for w in st.waypoints:
        out[f"waypoint-{w['namespace']}.{w['name']}"] = waypoints.admin_socket(base, w["namespace"], w["name"])
    return out


def build(base: Path, out: Path, log_tail: int = 2_000_000, run_cli: Callable[[list[str]], str] = _cli) -> Archive:
    """Write the report for the lab in `base` to `out`."""
    from ambitctl.lab import paths
    root = out.name.removesuffix(".tar.gz").removesuffix(".tgz")
    a = Archive(out, root, known_secrets(base))
    comps = components(base)
    ready = {}
    for name, sock in comps.items():
        try:
            ready[name] = json.loads(_get(sock, "/healthz/ready"))
        except (OSError, ValueError) as e:
            ready[name] = {"unreachable": str(e)}
    a.add_json("versions.json", {"cli": _version(), "python": sys.version, "platform": platform.platform(),
                                 "kernel": platform.release(), "components": ready})
    store = paths.store_path(base)
    if store.exists():
        a.collect("config/store.json", lambda: json.dumps(scrub_store(json.loads(store.read_text())), indent=1))
    st = paths.state_path(base)
    if st.exists():
        a.collect("status/lab-state.json", st.read_text)
    for name, sock in comps.items():
        a.collect(f"config/{name}.json", lambda s=sock: _get(s, "/config_dump"))   # type: ignore[misc]
        a.collect(f"status/{name}.certs.json", lambda s=sock: _get(s, "/certs"))  # type: ignore[misc]
        paths_ = ("/routes", "/clusters", "/stats") if name.startswith("waypoint") else ("/pods", "/connections")
        for p in paths_:
            a.collect(f"status/{name}.{p.strip('/')}.json", lambda s=sock, p=p: _get(s, p))  # type: ignore[misc]
    logs = paths.log_dir(base)
    if logs.is_dir():
        for f in sorted(logs.rglob("*")):
            if f.is_file():
                a.collect(f"logs/{f.relative_to(logs)}", lambda f=f: _tail(f, log_tail))  # type: ignore[misc]
    a.collect("check.txt", lambda: run_cli(["check"]))
    a.collect("analyze.json", lambda: run_cli(["analyze", "-A", "-o", "json"]))
    a.close()
    return a


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("bug-report", help="one archive with versions, config, status, logs, check and analyze "
                                          "output; secrets excluded (like istioctl bug-report)")
    p.add_argument("-o", "--output", default="", help="the archive (default ./ambit-bug-report-<UTC time>.tar.gz)")
    p.add_argument("--log-tail", type=int, default=2_000_000, help="bytes kept from the end of each log")
    p.add_argument("--system-namespace", default="ambit-system",
                   help="in a cluster: the control plane's namespace, whose pods' logs are collected")
    from ambitctl import cluster
    cluster.add_arguments(p)
    p.set_defaults(func=cmd_bug_report)


def cmd_bug_report(args: argparse.Namespace) -> int:
    from ambitctl.lab.paths import lab_dir
    name = f"ambit-bug-report-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.tar.gz"
    out = Path(args.output or name)
    if out.is_dir():            # -o DIR: the report goes into it, under its usual name
        out = out / name
    from ambitctl import cluster
    if args.log_tail <= 0:
        print("error: --log-tail must be > 0 bytes", file=sys.stderr)
        return 2
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        print(f"error: cannot write {out}: {parent} is not a directory this user can write to", file=sys.stderr)
        return 1
    if cluster.in_cluster(args):
        from ambitctl.commands import bugreport_cluster
        try:
            a = bugreport_cluster.build(args, out, args.log_tail, _cli)
        except cluster.TargetError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    else:
        base = lab_dir()
        if not (base / "state.json").exists():
            print(f"warning: no lab is up in {base}: the report has versions, check and analyze only",
                  file=sys.stderr)
        a = build(base, out, args.log_tail)
    with contextlib.suppress(OSError):
        out.chmod(0o600)
    print(f"wrote {out} ({out.stat().st_size} bytes, {len(a.members)} files"
          + (f", {len(a.errors)} could not be collected: see ERRORS" if a.errors else "") + ")")
    return 0
