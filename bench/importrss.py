"""What each import costs a process: RSS and anonymous memory, in a component's own import order.

    python -m bench.importrss ztunnel.__main__ ztunnel.serve            # by top-level package
    python -m bench.importrss --by module --top 40 waypoint.__main__    # by module

Imports the named modules, in order, into this fresh interpreter with a `builtins.__import__`
wrapper that reads /proc/self/smaps_rollup before and after every first import, and charges each
import its own growth: what its nested first imports added is charged to them. So a package's row is
what it costs beyond what was already loaded, in the order the component loads things; the same
package imported into a bare interpreter would cost more (it would also pay for what it shares).
A shared library's file-backed pages count at the import that maps them (RSS minus anonymous).

Why a tool: rounds 5, 7, 17 and 22 of docs/performance.md each measured this by hand. Differences
below about 0.05 MB are page granularity, not modules. Run the real process for the whole figure
(`/memory` on the admin socket): imports are most of an idle ztunnel, not all of it.
"""

from __future__ import annotations

import argparse
import builtins
import sys
from collections.abc import Callable, Sequence
from typing import Any

FIELDS = {"Rss": 0, "Anonymous": 1}


def parse_rollup(text: str) -> tuple[int, int]:
    """(RSS, anonymous) in kB from /proc/<pid>/smaps_rollup."""
    out = [0, 0]
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in FIELDS:
            out[FIELDS[key]] = int(rest.split()[0])
    return out[0], out[1]


def read_self() -> tuple[int, int]:
    with open("/proc/self/smaps_rollup") as f:
        return parse_rollup(f.read())


def _absolute(name: str, globals_: Any, level: int) -> str:
    if not level:
        return name
    package = (globals_ or {}).get("__package__") or ""
    base = package.rsplit(".", level - 1)[0] if level > 1 else package
    return f"{base}.{name}" if name else base


def attribute(modules: Sequence[str], by: str = "top",
              read: Callable[[], tuple[int, int]] = read_self) -> dict[str, list[int]]:
    """Import `modules` in order; {key: [rss_kb, anon_kb, modules]} charged per first import, keyed
    by top-level package (`by="top"`) or by module (`by="module"`)."""
    original = builtins.__import__
    charged: dict[str, list[int]] = {}
    nested: list[list[int]] = []

    def charge(key: str, load: Callable[[], Any]) -> None:
        before, count = read(), len(sys.modules)
        nested.append([0, 0, 0])
        try:
            load()
        finally:
            after, inner = read(), nested.pop()
            grew = [after[0] - before[0], after[1] - before[1], len(sys.modules) - count]
            row = charged.setdefault(key if by == "module" else key.partition(".")[0], [0, 0, 0])
            for i in range(3):
                row[i] += grew[i] - inner[i]
                if nested:
                    nested[-1][i] += grew[i]

    def wrapper(name: str, globals: Any = None, locals: Any = None, fromlist: Any = (), level: int = 0) -> Any:
        full = _absolute(name, globals, level)
        if full not in sys.modules:
            charge(full, lambda: original(full, None, None, (), 0))
        parent = sys.modules.get(full)
        # `from pkg import sub` loads sub through importlib, not through __import__: charge it here
        for item in fromlist or ():
            sub = f"{full}.{item}"
            if item != "*" and parent is not None and not hasattr(parent, item) and sub not in sys.modules:
                try:
                    charge(sub, lambda sub=sub: original(sub, None, None, (), 0))
                except ModuleNotFoundError as e:
                    if e.name != sub:
                        raise
        return original(name, globals, locals, fromlist, level)

    builtins.__import__ = wrapper
    try:
        for m in modules:
            __import__(m)
    finally:
        builtins.__import__ = original
    return charged


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.importrss", description=__doc__.split("\n\n")[0])
    ap.add_argument("modules", nargs="+", help="modules to import, in this order")
    ap.add_argument("--by", choices=("top", "module"), default="top", help="charge to top-level packages or modules")
    ap.add_argument("--top", type=int, default=30, help="rows to print (largest RSS first)")
    args = ap.parse_args(argv)
    start, count = read_self(), len(sys.modules)
    rows = attribute(args.modules, args.by)
    end = read_self()
    print(f"before: RSS {start[0] / 1024:.1f} MB, anonymous {start[1] / 1024:.1f} MB, {count} modules; "
          f"after: RSS {end[0] / 1024:.1f} MB, anonymous {end[1] / 1024:.1f} MB, {len(sys.modules)} modules")
    print(f"{'':44} {'RSS MB':>7} {'anon MB':>8} {'modules':>8}")
    for key, (rss, anon, n) in sorted(rows.items(), key=lambda kv: -kv[1][0])[:args.top]:
        print(f"{key:44} {rss / 1024:7.2f} {anon / 1024:8.2f} {n:8d}")


if __name__ == "__main__":
    main()
