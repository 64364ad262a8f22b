"""Starting a child process with a resource limit set, without `preexec_fn`.

Why: `preexec_fn` makes `subprocess` fork() the test process and run Python in the child before
exec. A pytest worker that has loaded grpc (any earlier test in the same worker) then runs grpc's
fork handlers in that child, and grpc's poller aborted it ("epoll_wait error: Bad file
descriptor", SIGABRT) before it could exec: a failure of the harness, seen as the test's. A small
exec wrapper sets the limit in the child instead, and `subprocess` spawns without forking Python.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

_EXEC_WITH_LIMIT = ("import os, resource, sys; "
                    "resource.setrlimit(getattr(resource, sys.argv[1]), (int(sys.argv[2]), int(sys.argv[3]))); "
                    "os.execv(sys.argv[4], sys.argv[4:])")


def with_rlimit(argv: Sequence[str], limit: str, soft: int, hard: int) -> list[str]:
    """`argv` (its first item an absolute path) run with `resource.<limit>` set to (soft, hard)."""
    return [sys.executable, "-c", _EXEC_WITH_LIMIT, limit, str(soft), str(hard), *argv]


def without_core(argv: Sequence[str]) -> list[str]:
    """`argv` run with no core file on abort, whatever the shell's `ulimit -c`."""
    return with_rlimit(argv, "RLIMIT_CORE", 0, 0)
