"""The agent hands freed heap back to the OS: once when its eBPF programs are loaded (their
compilation frees tens of MB that glibc would keep resident) and then periodically, in a thread of
its own (docs/operations.md, "Memory over time")."""

from __future__ import annotations

import threading

from agent.__main__ import trim_heap
from agent.settings import load
from ambit.dataplane.memory import heap_trimmer

REQUIRED = ["--node", "n1", "--zds-socket", "/tmp/z.sock", "--ztunnel-cgroup", "/sys/fs/cgroup/x", "--node-ip", "10.0.0.1"]


def test_the_agent_trims_by_default_and_the_flag_turns_it_off() -> None:
    assert load(REQUIRED).memory_trim_interval > 0
    assert load([*REQUIRED, "--memory-trim-interval", "0"]).memory_trim_interval == 0


def test_trims_at_once_then_every_interval_until_stopped() -> None:
    stop = threading.Event()
    calls: list[int] = []

    def trim() -> int:
        calls.append(1)
        if len(calls) == 3:
            stop.set()
        return 1

    t = threading.Thread(target=trim_heap, args=(stop, 0.01, trim))
    t.start()
    t.join(timeout=10)
    assert not t.is_alive() and len(calls) == 3


def test_zero_disables_and_the_real_trimmer_runs() -> None:
    calls: list[int] = []
    trim_heap(threading.Event(), 0, lambda: calls.append(1) or 1)
    assert calls == []
    trim = heap_trimmer()
    if trim is not None:        # glibc: malloc_trim answers 0 or 1
        assert trim() in (0, 1)
