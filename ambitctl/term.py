"""Terminal conventions every command follows.

- Colour only when the stream is a terminal, never when `NO_COLOR` is set (https://no-color.org:
  any non-empty value) or `TERM=dumb`; `ambit check > file`, `ambit lab up | cat` write plain text.
- Positional arguments anywhere among the flags, as kubectl takes them (`ambit get po -n demo
  echo-v1`): `intermixed(parser)`.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, TextIO

_CODES = {"bold": "1", "dim": "2", "red": "31", "green": "32", "yellow": "33", "bold-green": "1;32"}


def colour_enabled(stream: TextIO | None = None) -> bool:
    stream = stream if stream is not None else sys.stdout
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except (ValueError, OSError):        # a closed stream
        return False


def paint(text: str, style: str, stream: TextIO | None = None) -> str:
    """`text` in `style` (bold, dim, red, green, yellow, bold-green) when colour is enabled."""
    if not colour_enabled(stream):
        return text
    return f"\033[{_CODES[style]}m{text}\033[0m"


def codes(stream: TextIO | None = None) -> tuple[str, str, str, str, str]:
    """(BOLD, DIM, GREEN, RED, RESET) escape codes, or five empty strings when colour is off."""
    if not colour_enabled(stream):
        return "", "", "", "", ""
    return "\033[1m", "\033[2m", "\033[32m", "\033[31m", "\033[0m"


class _Intermixed(argparse.ArgumentParser):
    """Parses flags and positionals in any order (argparse's intermixed mode), as kubectl does."""

    _intermixing = False

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        if self._intermixing:
            return super().parse_known_args(args, namespace)
        self._intermixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False


def intermixed(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Make a (sub)command's parser accept positional arguments anywhere among its flags. Not for
    parsers with sub-commands or REMAINDER arguments (argparse cannot intermix those)."""
    if not isinstance(parser, _Intermixed):
        parser.__class__ = type(f"Intermixed{type(parser).__name__}", (_Intermixed, type(parser)), {})
    return parser


def at_least_zero(convert: Any) -> Any:
    """An argparse type for a count or a number of seconds where 0 means "no limit": a negative
    value is refused by name rather than taken as a limit already reached (the command would
    stop at once and exit 0)."""
    def parse(text: str) -> Any:
        try:
            v = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {convert.__name__} value: {text!r}") from None
        if v < 0:
            raise argparse.ArgumentTypeError(f"must be >= 0 (0: no limit), got {text}")
        return v
    return parse
