"""What a py-spy profile shows, in one line for the summary (sans-IO).

`py-spy record --format raw` writes collapsed stacks ("frame;frame;...;leaf COUNT" per line; the
format flame-graph tools and speedscope read). The summary names where the samples end: the leaf
functions with the largest share of samples (self time), which is where to look first.

With `--native`, py-spy also samples threads waiting in C (the loop's `epoll_pwait`, grpc's
pollers, a lock): those samples are time off the CPU and are left out of the shares.
"""

from __future__ import annotations

import re
from collections import Counter

_FRAME = re.compile(r"^(?P<func>.+?) \((?P<file>[^():]+)(?::\d+)?\)$")


def _short(frame: str) -> str:
    """'read (/usr/lib/python3.11/ssl.py:1134)' -> 'ssl.py:read'."""
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    return f"{m.group('file').rsplit('/', 1)[-1]}:{m.group('func')}"


# C functions a thread sleeps in: a native sample under one of them is off-CPU.
IDLE_WAITS = frozenset({
    "epoll_wait", "epoll_pwait", "epoll_pwait2", "poll", "ppoll", "select", "pselect",
    "PyThread_acquire_lock_timed", "pthread_cond_wait", "pthread_cond_timedwait", "sem_wait",
    "sem_timedwait", "sem_clockwait", "nanosleep", "clock_nanosleep", "accept", "accept4",
})


# Blocking reads a helper thread sleeps in (ztunnel's zds thread in recvmsg); on the event loop's
# thread the same calls run only once epoll said the socket is ready, so they are work.
THREAD_WAITS = frozenset({"recvmsg", "recv", "recvfrom", "read", "readv"})
_LOOP_FRAMES = ("uv_run", "Runner.run", "run_forever")


def is_idle(frames: list[str]) -> bool:
    """Whether a sample's stack is waiting in C: a native frame named in IDLE_WAITS, or a blocking
    read (THREAD_WAITS) on a thread that is not running an event loop."""
    natives = []
    for frame in frames:
        m = _FRAME.match(frame.strip())
        if m and not m.group("file").endswith(".py"):
            natives.append(m.group("func"))
    if any(f in IDLE_WAITS for f in natives):
        return True
    if natives and natives[-1] in THREAD_WAITS:
        return not any(f.strip().startswith(_LOOP_FRAMES) for f in frames)
    return False


def self_time(folded: str) -> tuple[Counter[str], int]:
    """Samples per leaf function, and the total number of on-CPU samples (idle waits left out)."""
    leaves: Counter[str] = Counter()
    total = 0
    for line in folded.splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        if is_idle(frames):
            continue
        n = int(count)
        total += n
        leaves[_short(frames[-1])] += n
    return leaves, total


def top_frames(folded: str, n: int = 5) -> str:
    """'ssl.py:read 31%, relay.py:pump 12%, ...' or '' for an empty profile."""
    leaves, total = self_time(folded)
    if not total:
        return ""
    return ", ".join(f"{name} {count / total:.0%}" for name, count in leaves.most_common(n))
