"""`ambit ...` for the lab tests without paying the CLI's imports on every call.

A lab test runs hundreds of `ambit apply`/`delete`/`get` commands, and each new `python -m
ambitctl.cli` spends ~0.6 s importing every command before it does anything (seconds on a loaded
CI box). This server imports the CLI once and forks a fresh process per command, which runs
`ambitctl.cli.main(argv)` with the caller's environment, working directory, stdin, stdout and
stderr: the same code and arguments as the command line, its own process, its own exit status.
Nothing the CLI reads from the environment is read at import time, so a forked copy sees what a
new process would.

Protocol (unix socket): the client sends one JSON line {argv, env, cwd} with its stdin, stdout and
stderr as SCM_RIGHTS descriptors; the server answers {"pid": N} once the command runs, then
{"status": wait-status} when it ends.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import IO

CLI_MAIN = Path(__file__).resolve().parents[2] / "ambitctl" / "cli.py"


def _run_command(conn: socket.socket) -> None:
    """In a forked child of the server: run one command and report its pid and status."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    msg, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
    req = json.loads(msg)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            conn.close()
            for i, fd in enumerate(fds):
                os.dup2(fd, i)
                os.close(fd)
            os.environ.clear()
            os.environ.update(req["env"])
            os.chdir(req["cwd"])
            sys.argv = [str(CLI_MAIN), *req["argv"]]
            from ambitctl.cli import main
            try:
                main(req["argv"])
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
                if not isinstance(e.code, (int, type(None))):
                    print(e.code, file=sys.stderr)
        except BaseException:  # noqa: BLE001 - a traceback, as an uncaught exception prints it
            import traceback
            traceback.print_exc()
        finally:
            for f in (sys.stdout, sys.stderr):
                try:
                    f.flush()
                except Exception:  # noqa: BLE001, S110 - the reader may be gone
                    pass
            os._exit(code)
    for fd in fds:
        os.close(fd)
    conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
    _, status = os.waitpid(pid, 0)
    conn.sendall(json.dumps({"status": status}).encode() + b"\n")


def serve(path: str, parent: int) -> None:
    """Import the CLI, then fork a handler per connection until the parent (pytest) is gone."""
    from ambitctl.cli import build_parser
    build_parser()          # imports every command's module: the 0.6 s a new CLI process spends
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)      # handlers are reaped by the kernel
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(64)
    srv.settimeout(1.0)
    print("ready", flush=True)
    try:
        while os.getppid() == parent:
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            if os.fork() == 0:
                srv.close()
                try:
                    _run_command(conn)
                finally:
                    os._exit(0)
            conn.close()
    finally:                # the parent is gone, also when it was killed: leave nothing behind
        os.unlink(path)
        os.rmdir(os.path.dirname(path))


class CliServer:
    """The client side, one server per test process, started on first use."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[str] | None = None
        self._dir = tempfile.mkdtemp(prefix="ambit-cli-")
        self._path = os.path.join(self._dir, "s")

    def _ensure(self, env: dict[str, str], cwd: Path) -> None:
        with self._lock:
            if self._proc is not None and self._proc.poll() is None:
                return
            self._proc = subprocess.Popen(
                [sys.executable, "-c", "import sys\nfrom tests.lab.cliserver import serve\n"
                 "serve(sys.argv[1], int(sys.argv[2]))", self._path, str(os.getpid())],
                env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
            assert self._proc.stdout is not None
            if self._proc.stdout.readline().strip() != "ready":
                raise RuntimeError("the test CLI server did not start")

    def close(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
        for p in (self._path, self._dir):
            try:
                os.unlink(p) if p == self._path else os.rmdir(p)
            except OSError:
                pass

    def run(self, argv: list[str], env: dict[str, str], cwd: Path, input: str | None,
            timeout: float) -> subprocess.CompletedProcess[str]:
        """As subprocess.run([ambit, *argv], capture_output=True, text=True, ...)."""
        self._ensure(env, cwd)
        with tempfile.TemporaryFile("w+") as fin, tempfile.TemporaryFile("w+") as fout, \
                tempfile.TemporaryFile("w+") as ferr:
            if input is not None:
                fin.write(input)
                fin.flush()
                fin.seek(0)
            stdin_fd = fin.fileno() if input is not None else 0     # inherited, as subprocess.run's
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.connect(self._path)
                socket.send_fds(s, [json.dumps({"argv": argv, "env": env, "cwd": str(cwd)}).encode()],
                                [stdin_fd, fout.fileno(), ferr.fileno()])
                s.settimeout(timeout)
                rd: IO[bytes] = s.makefile("rb")
                pid = json.loads(rd.readline())["pid"]
                try:
                    line = rd.readline()
                except TimeoutError:
                    os.kill(pid, signal.SIGKILL)
                    raise subprocess.TimeoutExpired(["ambit", *argv], timeout) from None
                status = json.loads(line)["status"]
            fout.seek(0)
            ferr.seek(0)
            rc = os.waitstatus_to_exitcode(status)
            return subprocess.CompletedProcess(["ambit", *argv], rc, fout.read(), ferr.read())
