"""A proxy process's memory: where it is (`memory_report`, the admin `/memory` page), handing freed
heap back to the OS (`heap_trimmer`, `trim_heap_periodically`) and capping glibc's malloc arenas
(`limit_arenas`). Shared by ztunnel and the waypoint; each calls these at its process edge.

Why here and not in each binary: both are long-running asyncio processes whose memory after a
burst is glibc's and CPython's allocators keeping what the burst freed. The measurements behind each
tool are in docs/performance.md (round 5 for ztunnel, round 6 for the waypoint).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

SMAPS_FIELDS = {"Rss": "rss_kb", "Pss": "pss_kb", "Pss_Anon": "pss_anon_kb", "Pss_File": "pss_file_kb",
                "Anonymous": "anon_kb", "Shared_Clean": "shared_clean_kb", "Private_Dirty": "private_dirty_kb"}
M_ARENA_MAX = -8        # glibc's mallopt parameter number (malloc.h)


def parse_smaps_rollup(text: str) -> dict[str, int]:
    """The fields of /proc/<pid>/smaps_rollup that tell memory apart (kB): RSS counts shared
    library pages in full, PSS divides them among the processes mapping them, anonymous memory is
    this process's own heap, stacks and arenas."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in SMAPS_FIELDS:
            out[SMAPS_FIELDS[key]] = int(rest.split()[0])
    return out


def memory_report(top: int = 25, gc_stats: Any = None) -> dict[str, Any]:
    """RSS/PSS split, threads and GC state; with tracing on (PYTHONTRACEMALLOC=N in the process's
    environment) also the `top` source lines holding the most Python memory. This is how the
    memory budgets in docs/performance.md were found, and how a regression is found again.
    `gc_stats` (ambit.dataplane.gctune.GCStats) adds the collections and their pauses."""
    import gc
    import threading
    import tracemalloc

    out: dict[str, Any] = {}
    with contextlib.suppress(OSError):
        out.update(parse_smaps_rollup(Path("/proc/self/smaps_rollup").read_text()))
    out["threads"] = sorted(t.name for t in threading.enumerate())
    with contextlib.suppress(OSError):
        out["os_threads"] = len(list(Path("/proc/self/task").iterdir()))
    out["gc"] = {"counts": gc.get_count(), "frozen": gc.get_freeze_count(), "tracked": len(gc.get_objects()),
                 "threshold": gc.get_threshold()}
    if gc_stats is not None:
        out["gc"].update(gc_stats.report())
    malloc = malloc_stats()
    if malloc is not None:
        out["malloc"] = malloc
    if tracemalloc.is_tracing():
        snap = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
        traced, peak = tracemalloc.get_traced_memory()
        out["tracemalloc"] = {
            "traced_kb": traced // 1024, "peak_kb": peak // 1024,
            "top": [{"where": f"{s.traceback[0].filename}:{s.traceback[0].lineno}", "kb": s.size // 1024,
                     "blocks": s.count} for s in snap.statistics("lineno")[:top]]}
    return out


def _glibc(name: str) -> Any:
    """The C library's function `name`, or None where it has none (musl, macOS, old glibc)."""
    try:
        return getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):
        return None


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def malloc_stats() -> dict[str, int] | None:
    """glibc's view of the C heap (mallinfo2, all arenas), kB: what malloc holds from the OS in
    arenas and in separate mmaps, and how much of the arenas is in use. None without glibc 2.33+.

    Why: memory that Python no longer traces can still be live in C (OpenSSL's buffers, uvloop's,
    nghttp2's) or free but kept by glibc; `in_use_kb` against `arena_kb` tells the two apart."""
    fn = _glibc("mallinfo2")
    if fn is None:
        return None
    fn.restype = _MallInfo2
    m = fn()
    return {"arena_kb": m.arena // 1024, "in_use_kb": m.uordblks // 1024, "free_kb": m.fordblks // 1024,
            "mmap_kb": m.hblkhd // 1024, "mmap_chunks": m.hblks}


def heap_trimmer() -> Callable[[], int] | None:
    """glibc's malloc_trim(0), or None where there is none (musl, macOS).

    Why: a burst (a throughput test, a thousand connections closing) frees megabytes that glibc
    keeps in its heaps and arenas for reuse, so RSS stays at the high-water mark long after the
    burst. malloc_trim hands whole free pages back (MADV_DONTNEED), also from the middle of the
    heap, which glibc's own trim threshold never does. It costs well under a millisecond on an
    idle proxy's heap."""
    fn = _glibc("malloc_trim")
    if fn is None:
        return None
    fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return lambda: int(fn(0))


async def trim_heap_periodically(interval: float, trim: Callable[[], int]) -> None:
    """Trim every `interval` seconds, in a thread of its own, never on the event loop.

    Why a thread: after a burst (1000 connections closing) the heap is fragmented and one
    malloc_trim walks and madvises it for milliseconds (measured: 12-21 ms of CPU after a
    fragmenting churn), which on the loop is a stall in every connection's latency. ctypes
    releases the GIL for the call, so the loop keeps serving; it only waits where it mallocs
    from the arena being trimmed."""
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(1, thread_name_prefix="malloc-trim") as pool:
        while True:
            await asyncio.sleep(interval)
            await loop.run_in_executor(pool, trim)


def limit_arenas(n: int) -> bool:
    """Cap glibc's malloc arenas at `n` (mallopt M_ARENA_MAX), from inside the process, so a lab
    process and a DaemonSet pod get the same cap without an environment variable. 0 keeps glibc's
    default (8 per core). True when applied; False where there is no glibc mallopt.

    Why: every thread that mallocs while another holds the main arena gets an arena of its own, a
    64 MB reservation whose touched pages stay resident; grpc's, the tracer's and the trimmer's
    threads each can. Call it before those threads start."""
    if n <= 0:
        return False
    fn = _glibc("mallopt")
    if fn is None:
        return False
    fn.argtypes, fn.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return fn(M_ARENA_MAX, n) == 1


def start_trimming(interval: float) -> asyncio.Task[None] | None:
    """The periodic trim as a task (None when `interval` is 0 or there is no malloc_trim); cancel it
    with `stop_trimming` at shutdown."""
    trim = heap_trimmer() if interval > 0 else None
    return asyncio.ensure_future(trim_heap_periodically(interval, trim)) if trim else None


async def stop_trimming(task: asyncio.Task[None] | None) -> None:
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
