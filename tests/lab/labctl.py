"""Drive a real lab from tests through the real CLI, as a user would."""

from __future__ import annotations

import atexit
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.lab.cliserver import CliServer
from tests.support.wait import wait_for

REPO = Path(__file__).resolve().parents[2]
AMBIT = [sys.executable, "-m", "ambitctl.cli"]
# Test labs carry the pytest process id in their name, so two runs on one machine never tear down
# each other's labs; `sweep_stale()` removes labs whose run died without cleaning up.
RUN_ID = os.getpid()
# `ambit lab exec POD -- ARGV...` as a short python -c for Popen (see Lab.exec_argv); its errors
# exit 1 with the message, as the CLI's do.
EXEC_IN_POD = ("import sys\nfrom ambitctl.lab.lab import LabError, exec_in_pod\n"
               "try:\n    exec_in_pod(sys.argv[1], sys.argv[2:])\n"
               "except LabError as e:\n    sys.exit(f'error: {e}')\n")
TEST_LAB_RE = re.compile(r"^(ambit-[a-z]+(\d+))[.-]")   # every test lab: ambit-<kind><pid>


def lab_name_for(kind: str) -> str:
    # `sweep_stale` reads the pid back as the name's trailing digits: a kind ending in a digit
    # ("zp2") would be read as another pid, found dead, and the lab torn down mid-run
    if not re.fullmatch(r"[a-z]+", kind):
        raise ValueError(f"test lab kind {kind!r}: lower-case letters only (the pid follows it)")
    return f"ambit-{kind}{RUN_ID}"


def sweep_stale() -> list[str]:
    """Tear down test labs (netns, cgroups, pins) left by pytest runs that are no longer alive."""
    from ambit import cgroups
    from ambitctl.lab import lab as labmod
    seen: set[tuple[str, int]] = set()
    names = os.listdir("/var/run/netns") if os.path.isdir("/var/run/netns") else []
    names += os.listdir(cgroups.find_cgroup2_mount())
    for n in names:
        m = TEST_LAB_RE.match(n)
        if m:
            seen.add((m.group(1), int(m.group(2))))
    swept = []
    for name, pid in sorted(seen):
        if pid != RUN_ID and not Path(f"/proc/{pid}").exists():
            labmod.down(name, base=Path("/nonexistent-ambit-lab-dir"), quiet=True)
            swept.append(name)
    return swept


_CLI_SERVER: CliServer | None = None


def _cli_server() -> CliServer:
    """The test process's `ambit` fork server (tests/lab/cliserver.py): the real CLI, imported once."""
    global _CLI_SERVER
    if _CLI_SERVER is None:
        _CLI_SERVER = CliServer()
        atexit.register(_CLI_SERVER.close)
    return _CLI_SERVER


class Lab:
    def __init__(self, lab_dir: Path, name: str = "ambit-t"):
        self.dir = lab_dir
        self.name = name
        self.env = {**os.environ, "AMBIT_LAB_DIR": str(lab_dir), "AMBIT_LAB_NAME": name}

    def ambit(self, *args: str, check: bool = True, timeout: float = 120,
              input: str | None = None) -> subprocess.CompletedProcess[str]:
        """`ambit ARGS...` as subprocess.run would run it (a process of its own, this lab's env),
        forked from a server that imported the CLI once (tests/lab/cliserver.py)."""
        p = _cli_server().run(list(args), self.env, REPO, input, timeout)
        if check and p.returncode != 0:
            raise AssertionError(f"ambit {' '.join(args)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
        return p

    def up(self, *extra: str) -> None:
        self.ambit("lab", "up", "--name", self.name, *extra)

    def down(self) -> None:
        self.ambit("lab", "down", check=False)

    def status(self) -> dict[str, Any]:
        return json.loads(self.ambit("lab", "status", "--json").stdout)

    def exec_argv(self, pod: str, *argv: str) -> list[str]:
        """A command line (for Popen, with `env=self.env`) that runs `argv` in `pod`, its cgroup and
        netns, through `exec_in_pod`, the function `ambit lab exec` runs, without the CLI's start-up
        (~0.6 s a process; `ambit lab exec` itself is tested in test_lab.py)."""
        return [sys.executable, "-c", EXEC_IN_POD, pod, *argv]

    def exec(self, pod: str, *argv: str, check: bool = False, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return self.ambit("lab", "exec", pod, "--", *argv, check=check, timeout=timeout)

    def curl(self, pod: str, url: str, *opts: str, timeout: float = 5) -> dict[str, Any]:
        p = self.exec(pod, "curl", "-sS", "--fail", "-m", str(timeout), *opts, url, timeout=timeout + 30)
        if p.returncode != 0:
            raise AssertionError(f"curl from {pod} to {url} failed ({p.returncode}): {p.stderr.strip()}")
        return json.loads(p.stdout.splitlines()[0])

    def curl_rc(self, pod: str, url: str, timeout: float = 3) -> int:
        return self.exec(pod, "curl", "-sS", "-o", "/dev/null", "-m", str(timeout), url, timeout=timeout + 30).returncode

    def log(self, component: str, node: str | None = None) -> str:
        args = ["lab", "logs", component] + (["--node", node] if node else [])
        return self.ambit(*args, check=False).stdout

    def wait_for(self, fn, timeout: float = 10.0, interval: float = 0.1, what: str = "condition") -> Any:
        return wait_for(fn, what, timeout, interval)

    def access_log(self, node: str) -> list[dict[str, Any]]:
        """ztunnel's access-log records on a node, oldest first."""
        out = []
        for line in self.log("ztunnel", node).splitlines():
            if line.startswith("access "):
                out.append(json.loads(line[len("access "):]))
        return out

    def controller_channel(self) -> Any:
        """A grpclib channel to the controller's socket over TLS, pinned to the lab's root, as the
        lab's own agents and ztunnels reach it (ambit.configclient.tls)."""
        from ambit.configclient import tls
        from ambitctl.lab import components
        return tls.channel(f"unix:{self.dir / 'controller.sock'}", components.controller_trust(self.dir))

    def pod(self, key: str) -> dict[str, Any]:
        ns, name = key.split("/")
        return next(p for p in self.status()["pods"] if p["namespace"] == ns and p["name"] == name)

    def proc_pid(self, proc_id: str) -> int | None:
        return self.status()["processes"].get(proc_id, {}).get("pid")

    def save_logs(self, dest: Path) -> None:
        src = self.dir / "logs"
        if src.exists():
            shutil.copytree(src, dest, dirs_exist_ok=True)


def artifacts(name: str) -> Path:
    """Where a lab's logs are kept after the run ($AMBIT_TEST_ARTIFACTS/<name>), for CI to collect."""
    base = os.environ.get("AMBIT_TEST_ARTIFACTS")
    # Without a place given, one directory per run: concurrent runs must not overwrite each other's.
    d = (Path(base) if base else Path("/tmp/ambit-test-artifacts") / str(RUN_ID)) / name
    d.mkdir(parents=True, exist_ok=True)
    return d


@contextmanager
def running_lab(base: Path, prefix: str, spec: Path, logs: str, *up_args: str,
                env: Mapping[str, str] | None = None) -> Iterator[Lab]:
    """A lab of a test module's own, named `ambit-<prefix><pid>` (so `sweep_stale` finds it) and brought up from `spec`. It is torn
    down whatever happens, also when `up` fails half-way, and its logs are kept under `logs`."""
    lab = Lab(base / "state", name=lab_name_for(prefix))
    lab.env.update(env or {})
    try:
        lab.up("--spec", str(spec), *up_args)
        yield lab
    finally:
        lab.save_logs(artifacts(logs))
        lab.down()


def gone(pid: int) -> bool:
    """Exited: no such process, or a zombie not yet reaped whose threads have all exited (a
    process's files, its sockets among them, are closed only when its last thread exits; the
    leader shows as a zombie before that)."""
    try:
        zombie = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
        return zombie and len(os.listdir(f"/proc/{pid}/task")) <= 1
    except OSError:
        return True


@contextmanager
def scratch_netns(prefix: str) -> Iterator[str]:
    """A netns of a test's own, `<prefix>-<random>`, with lo up; deleted afterwards whatever
    happened (also when the test deleted it already)."""
    import uuid

    from ambit.netns import entered
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        with entered(name):
            subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)
