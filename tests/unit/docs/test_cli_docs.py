"""docs/cli.md names every `ambit` command and every flag of each: the page promises "every command",
and a flag nobody can find is a flag nobody uses correctly. The commands and flags come from the
real parser (`ambitctl.cli.build_parser`, which every command module registers into), so a new
sub-command or flag without a mention fails here, with all of them listed.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator

from ambitctl.cli import build_parser
from tests.unit.docs.mdtext import code_names, flags_in, read


def commands(ap: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[
        tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """(path, parser) of every command and sub-command, each once (an alias shares its parser)."""
    yield path, ap
    for action in ap._actions:
        if isinstance(action, argparse._SubParsersAction):
            seen: set[int] = set()
            for name, child in action.choices.items():
                if id(child) not in seen:
                    seen.add(id(child))
                    yield from commands(child, (*path, name))


def _short_flags(doc: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])-([A-Za-z])(?![\w-])", doc))


def missing(doc: str) -> list[str]:
    names, longs, shorts = code_names(doc), flags_in(doc), _short_flags(doc)
    out = []
    for path, ap in commands(build_parser()):
        cmd = " ".join(("ambit", *path))
        if path and path[-1] not in names:
            out.append(f"command: {cmd}")
        for action in ap._actions:
            opts = [o for o in action.option_strings if o not in ("-h", "--help")]
            # A flag counts as named when any of its spellings is (`-n` or `--namespace`).
            if opts and not any(o[2:] in longs if o.startswith("--") else o[1:] in shorts for o in opts):
                out.append(f"flag: {cmd} {'/'.join(opts)}")
    return out


def test_every_command_and_flag_is_documented() -> None:
    gaps = missing(read("cli.md"))
    assert not gaps, "docs/cli.md does not name these:\n  " + "\n  ".join(gaps)


def test_the_check_sees_a_missing_flag() -> None:
    """Not vacuous: the parser has commands, and dropping a flag's only mention is reported."""
    assert len(list(commands(build_parser()))) > 20
    doc = read("cli.md").replace("--purge-crds", "the purge flag")
    assert "flag: ambit uninstall --purge-crds" in missing(doc)
