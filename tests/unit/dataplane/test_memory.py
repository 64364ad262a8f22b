"""A proxy process's memory tools (ambit/dataplane/memory.py): the /memory report, the heap
trimmer, the arena cap."""

from __future__ import annotations

import asyncio
import threading
import tracemalloc

from ambit.dataplane.memory import (
    heap_trimmer,
    limit_arenas,
    malloc_stats,
    memory_report,
    parse_smaps_rollup,
    trim_heap_periodically,
)

ROLLUP = """00400000-7ffd1e1f0000 ---p 00000000 00:00 0                          [rollup]
Rss:               62092 kB
Pss:               32435 kB
Pss_Anon:          29668 kB
Pss_File:           2767 kB
Shared_Clean:      32396 kB
Private_Dirty:     29676 kB
Anonymous:         29668 kB
"""


def test_smaps_rollup_fields():
    assert parse_smaps_rollup(ROLLUP) == {
        "rss_kb": 62092, "pss_kb": 32435, "pss_anon_kb": 29668, "pss_file_kb": 2767,
        "shared_clean_kb": 32396, "private_dirty_kb": 29676, "anon_kb": 29668}


def test_memory_endpoint_names_the_lines_holding_memory_when_tracing():
    tracemalloc.start()
    try:
        hoard = [bytearray(4096) for _ in range(256)]   # 1 MiB allocated on one line of this file
        report = memory_report(top=10)
    finally:
        tracemalloc.stop()
    top = report["tracemalloc"]["top"]
    here = [t for t in top if t["where"].startswith(__file__)]
    assert here and here[0]["kb"] >= 1024 and here[0]["blocks"] >= 256
    assert len(top) <= 10 and len(hoard) == 256


def test_heap_trimmer_returns_freed_memory_on_glibc():
    trim = heap_trimmer()
    assert trim is not None                      # Debian: glibc
    junk = [bytearray(100_000) for _ in range(100)]
    del junk
    assert trim() in (0, 1)                      # 1: memory was released, 0: none to release


def test_periodic_trim_runs_until_cancelled():
    calls: list[int] = []

    async def go() -> None:
        task = asyncio.ensure_future(trim_heap_periodically(0.01, lambda: calls.append(1) or 0))
        while len(calls) < 3:
            await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        n = len(calls)
        await asyncio.sleep(0.05)
        assert len(calls) == n                   # cancelled: no more trims

    asyncio.run(go())


def test_periodic_trim_runs_off_the_event_loop_thread():
    threads: list[int] = []

    async def go() -> None:
        task = asyncio.ensure_future(trim_heap_periodically(0.01, lambda: threads.append(threading.get_ident()) or 0))
        while not threads:
            await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(go())
    assert threads[0] != threading.get_ident()     # asyncio.run's loop runs in this thread


def test_arena_cap_is_applied_on_glibc_and_zero_keeps_the_default():
    assert limit_arenas(0) is False              # 0: glibc's default, nothing called
    assert limit_arenas(8) is True               # Debian: glibc's mallopt accepts it (a cap of 8 is harmless here)


def test_malloc_stats_see_c_allocations_come_and_go():
    """What Python's tracer cannot see: a 4 MiB C allocation shows in glibc's counters (in an arena
    or as its own mmap), and is gone from them once freed."""
    def held() -> int:
        m = malloc_stats()
        return m["in_use_kb"] + m["mmap_kb"]

    before = held()
    block = bytearray(4 * 1024 * 1024)
    assert held() - before >= 4000
    del block
    assert held() - before < 1000
    report = memory_report()
    assert set(report["malloc"]) == {"arena_kb", "in_use_kb", "free_kb", "mmap_kb", "mmap_chunks"}
