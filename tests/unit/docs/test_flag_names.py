"""Every `--flag` the docs write is a flag something accepts: an operator who copies a flag from the
docs and gets "unrecognized arguments" (or, through an environment variable, nothing at all) was
told a falsehood. Renamed flags leave such lines behind: the waypoint's `--buffer-bytes` had been
`--http-buffer-bytes` for a long time when two pages still named it.

What accepts a flag: the four binaries' settings (`ambit.settings.parser`), and every
`add_argument("--x")` in the repository's own programs (the `ambit` CLI, the lab's apps, bench
scripts, `python -m` tools). Flags of other programs the docs show (curl, iptables, kubectl...) are
listed in EXTERNAL with their program. docs/performance.md is a log of rounds, where a flag of its
time may stay as it was, so it is not read.
"""

from __future__ import annotations

import ast
import functools

from ambit.settings import parser
from tests.unit.docs.mdtext import DOCS, flags_in
from tests.unit.docs.test_operations_docs import BINARIES, flags_of

REPO = DOCS.parent
PROGRAMS = ("ambit", "ambitctl", "agent", "ztunnel", "waypoint", "controller", "bench", "tests")
SKIP = {"performance.md"}

EXTERNAL = {
    "curl": {"cacert", "resolve", "data-urlencode", "unix-socket"},
    "iptables": {"dport", "mark", "to-ports", "noflush", "socket-exists"},
    "nsenter": {"net"},
    "kubectl": {"server-side", "prune", "field-selector", "limits", "replicas", "from-file"},
    "etcd (a restore)": {"bump-revision", "mark-compacted"},
    "istioctl": {"purge"},
    "linkerd": {"pre"},
    "h2load": {"h1"},
    "python3 -m http.server": {"directory", "bind"},
    "(a diagram: an app's connect())": {"connect"},
}


@functools.cache
def accepted() -> frozenset[str]:
    names = {"help"} | {f for b, cls in BINARIES.items() for f in flags_of(parser(cls, b, environ={}))}
    for pkg in PROGRAMS:
        for path in (REPO / pkg).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument":
                    names |= {a.value[2:] for a in node.args
                              if isinstance(a, ast.Constant) and isinstance(a.value, str) and a.value.startswith("--")}
    return frozenset(names | set().union(*EXTERNAL.values()))


def unknown(pages: dict[str, str]) -> list[str]:
    known = accepted()
    out = []
    for name, text in sorted(pages.items()):
        for flag in sorted(flags_in(text)):
            # `--tunnel-*` names a group: some flag must start with it
            ok = any(k.startswith(flag) for k in known) if flag.endswith("-") else flag in known
            if not ok:
                out.append(f"{name}: --{flag}")
    return out


def pages() -> dict[str, str]:
    files = [*DOCS.glob("*.md"), *DOCS.glob("resilience/*.md"), REPO / "README.md"]
    return {str(p.relative_to(REPO)): p.read_text(encoding="utf-8") for p in files if p.name not in SKIP}


def test_every_flag_in_the_docs_exists() -> None:
    bad = unknown(pages())
    assert not bad, "the docs name flags nothing accepts:\n  " + "\n  ".join(bad)


def test_the_check_sees_a_renamed_flag() -> None:
    """Not vacuous: the binaries' and the CLI's flags are found, and a flag of no program is reported."""
    known = accepted()
    assert {"http-buffer-bytes", "max-connections", "purge-crds", "repair-pods", "lab-store"} <= known
    assert unknown({"x.md": "the waypoint's `--buffer-bytes`, `--tunnel-*`, `--http-buffer-bytes`"}) == [
        "x.md: --buffer-bytes"]
