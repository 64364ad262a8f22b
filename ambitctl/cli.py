"""`ambit`: the command line for the lab, configuration and diagnostics.

Each command group lives in its own module under ambitctl/commands and registers itself here.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# Modules under ambitctl.commands that provide register(subparsers); a missing one is skipped so a
# partial install still gives a working CLI for what it has.
COMMAND_MODULES = ["lab", "check", "config", "waypoint", "mesh", "install", "bench", "analyze", "authz",
                   "proxystatus", "wait", "version", "describe", "dashboard", "tap", "top", "bugreport"]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="ambit", description="Ambit: a sidecar-free service mesh.")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    for mod in COMMAND_MODULES:
        try:
            m = importlib.import_module(f"ambitctl.commands.{mod}")
        except ModuleNotFoundError as e:
            if e.name == f"ambitctl.commands.{mod}":
                continue
            raise
        m.register(sub)
    _intermix_leaves(ap)
    return ap


def _intermix_leaves(parser: argparse.ArgumentParser) -> None:
    """kubectl habit: positional arguments anywhere among the flags, in every command that can
    take them so (argparse cannot intermix parsers with sub-commands or REMAINDER arguments)."""
    from ambitctl.term import intermixed
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for a in subs:
        for child in set(a.choices.values()):
            _intermix_leaves(child)
    if not subs and not any(a.nargs in (argparse.REMAINDER, argparse.PARSER) for a in parser._actions):
        intermixed(parser)


def main(argv: list[str] | None = None) -> None:
    ap = build_parser()
    args = ap.parse_args(argv)
    if not getattr(args, "func", None):
        ap.print_help()
        sys.exit(2)
    try:
        rc = args.func(args)
        sys.stdout.flush()
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:
        _closed_pipe()
    except Exception as e:  # every command's expected failures are one-line errors, not tracebacks
        from ambitctl.errors import is_user_error
        if not is_user_error(e):
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    sys.exit(rc or 0)


def _closed_pipe() -> None:
    """The reader went away (`ambit get ... -o yaml | head`): stop quietly, as a tool killed by
    SIGPIPE does (exit 141), with no traceback and no second error when Python flushes stdout."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    sys.exit(141)


if __name__ == "__main__":
    main()
