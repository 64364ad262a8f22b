"""What only the cyclic garbage collector could free, left by a piece of work on this thread.

The no-cycles tests (tests/unit/ztunnel/test_no_cycles.py, tests/unit/waypoint/test_no_cycles.py)
run their work with the collector off and `DEBUG_SAVEALL`, then count what one collection finds.
A collection finds every thread's garbage: a kube emulator (tests/support/kube_emulator.py) left
serving a watch by an earlier test can drop its own cycles in the window. So the garbage is split
into connected groups (objects linked by references), and a group that holds an object of another
thread's machinery (the emulator, an HTTP server's handler, a thread) is not counted: nothing the
proxies under test make refers to those.
"""

from __future__ import annotations

import gc
from collections import Counter
from collections.abc import Callable

# Modules whose objects mark a garbage group as another thread's, never the proxies'.
FOREIGN = ("tests.support.", "socketserver", "http.server", "threading")


def _groups(objs: list[object]) -> list[list[object]]:
    index = {id(o): i for i, o in enumerate(objs)}
    parent = list(range(len(objs)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, o in enumerate(objs):
        for r in gc.get_referents(o):
            j = index.get(id(r))
            if j is not None:
                a, b = find(i), find(j)
                if a != b:
                    parent[a] = b
    groups: dict[int, list[object]] = {}
    for i, o in enumerate(objs):
        groups.setdefault(find(i), []).append(o)
    return list(groups.values())


def _name(o: object, qualified: bool) -> str:
    t = type(o)
    return f"{t.__module__}.{t.__qualname__}" if qualified else t.__qualname__


def garbage_of(work: Callable[[], None], qualified: bool = True) -> Counter[str]:
    """Types of the objects only the cyclic collector could free, left by `work()` (see above)."""
    for _ in range(10):     # to a fixed point: finalizers run by one collection (an earlier test's
        if not gc.collect():    # loop, transports) can leave new garbage for the next
            break
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        work()
        gc.collect()
        found = list(gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    out: Counter[str] = Counter()
    for group in _groups(found):
        if not any(type(o).__module__.startswith(FOREIGN) for o in group):
            out.update(_name(o, qualified) for o in group)
    return out
