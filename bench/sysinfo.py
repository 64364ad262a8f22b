"""Machine, kernel and tool versions for the results file (read-only look-ups)."""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

# tool -> (argv, regex picking the version out of stdout+stderr)
TOOLS: dict[str, tuple[list[str], str]] = {
    "iperf3": (["iperf3", "--version"], r"iperf ([\d.]+)"),
    "h2load": (["h2load", "--version"], r"nghttp2/([\d.]+)"),
    "wrk": (["wrk", "-v"], r"wrk (?:debian/)?([\w.+~-]+)"),
    "nginx": (["nginx", "-v"], r"nginx/([\d.]+)"),
    "stunnel": (["stunnel", "-version"], r"stunnel ([\d.]+)"),
    "haproxy": (["haproxy", "-v"], r"HAProxy version ([\d.]+)"),
    "openssl": (["openssl", "version"], r"OpenSSL ([\w.]+)"),
    "py-spy": (["py-spy", "--version"], r"py-spy ([\d.]+)"),
}


def tool_version(name: str) -> str | None:
    argv, pattern = TOOLS[name]
    beside = Path(sys.executable).parent / argv[0]      # tools pip installed in this venv (py-spy)
    exe = shutil.which(argv[0]) or (str(beside) if beside.exists() else None)
    if exe is None:
        return None
    argv = [exe, *argv[1:]]
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(pattern, p.stdout + p.stderr)
    return m.group(1) if m else None


def tool_versions() -> dict[str, str]:
    return {k: v for k in TOOLS if (v := tool_version(k))}


def missing_tools(required: list[str]) -> list[str]:
    return [t for t in required if not shutil.which(t)]


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = None
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem_gb = round(kb / 1024 / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gb": mem_gb, "kernel": platform.release(),
            "python": platform.python_version(), "os": _os_release()}


def _os_release() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.system()


def git_commit(repo: Path) -> str | None:
    try:
        p = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                           timeout=10)
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if p.returncode != 0:
        return None
    return p.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
