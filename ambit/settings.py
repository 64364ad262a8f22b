"""Typed settings for the binaries: one frozen dataclass per binary, built once from its command
line and environment, then passed down.

Why not argparse fields read wherever they are needed: a proxy has dozens of knobs (timeouts,
windows, limits), and scattering them over module constants makes them untestable and invisible.
Here each knob is a dataclass field that carries its own help, flag and environment variable; a
nested dataclass becomes a group of flags with a common prefix (`--tunnel-…`), or with none when
the field says `metadata={"prefix": ""}`. Precedence: flag,
then environment (`<PREFIX>_<NAME>`), then the default. Values are checked when built, and a bad
one names the flag, the environment variable and the reason.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class SettingsError(ValueError):
    pass


def option(default: Any = dataclasses.MISSING, help: str = "", *, check: Callable[[Any], str | None] | None = None,
           required: bool = False, both_switches: bool = False) -> Any:
    """A settings field. `check(value)` returns a reason when the value is unacceptable.
    `both_switches`: a boolean that is on by default also takes `--name` (not only `--no-name`),
    so a rendered manifest can say "on" explicitly."""
    meta = {"help": help, "check": check, "required": required, "both_switches": both_switches}
    if default is dataclasses.MISSING:
        return dataclasses.field(default=None, metadata=meta)
    if isinstance(default, list | dict | set):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def positive(v: float) -> str | None:
    return None if v > 0 else "must be > 0"


def non_negative(v: float) -> str | None:
    return None if v >= 0 else "must be >= 0"


def one_of(*choices: str) -> Callable[[str], str | None]:
    def check(v: str) -> str | None:
        return None if v in choices else f"must be one of {', '.join(choices)}"
    return check


def parsed_by(parse: Callable[[str], Any]) -> Callable[[str], str | None]:
    """A check that refuses what `parse` raises ValueError on, with its message: the setting is
    checked by the very function that will read it."""
    def check(v: str) -> str | None:
        try:
            parse(v)
        except ValueError as e:
            return str(e)
        return None
    return check


def _flag(prefix: str, name: str) -> str:
    return "--" + (prefix + name).replace("_", "-")


def _env(env_prefix: str, prefix: str, name: str) -> str:
    return f"{env_prefix}_{prefix}{name}".upper()


def _base_type(tp: Any) -> Any:
    """int | None -> int; Path | None -> Path."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if args and typing.get_origin(tp) in (typing.Union, types.UnionType) else tp


def _convert(tp: Any, raw: str) -> Any:
    tp = _base_type(tp)
    if tp is bool:
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off", ""):
            return False
        raise ValueError(f"{raw!r} is not a boolean")
    if typing.get_origin(tp) is tuple:
        return tuple(x.strip() for x in raw.split(",") if x.strip())
    if tp in (int, float, str, Path):
        return tp(raw)
    raise TypeError(f"unsupported settings type {tp}")


def _fields(cls: type, prefix: str = "") -> list[tuple[str, str, dataclasses.Field[Any], Any]]:
    """(prefix, name, field, type) for every leaf field, nested dataclasses flattened."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out.extend(_fields(tp, prefix + f.metadata.get("prefix", f"{f.name}_")))
        else:
            out.append((prefix, f.name, f, tp))
    return out


def parser(cls: type, prog: str, description: str = "", env_prefix: str = "AMBIT",
           environ: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    environ = os.environ if environ is None else environ
    ap = argparse.ArgumentParser(prog=prog, description=description)
    for prefix, name, f, tp in _fields(cls):
        env = _env(env_prefix, prefix, name)
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)  # type: ignore[misc]
        help_ = f"{f.metadata.get('help', '')} [env {env}; default {default!r}]"
        if _base_type(tp) is bool:
            # A switch that is off by default is `--name`; one that is on by default is `--no-name`.
            on = not default
            flag = _flag(prefix, name) if on else "--no-" + (prefix + name).replace("_", "-")
            ap.add_argument(flag, dest=prefix + name, action="store_const", const=on, default=None, help=help_)
            if default is True and f.metadata.get("both_switches"):
                ap.add_argument(_flag(prefix, name), dest=prefix + name, action="store_const", const=True,
                                default=None, help=f"turn {flag} off again [default {default!r}]")
        elif typing.get_origin(_base_type(tp)) is tuple:
            # Repeatable flag (--x a --x b); the environment variable takes a comma-separated list.
            ap.add_argument(_flag(prefix, name), dest=prefix + name, action="append", default=None,
                            help=help_ + " (repeatable)", metavar=name.upper())
        else:
            # Required only when the environment does not provide it, so `--help` shows what is missing.
            required = bool(f.metadata.get("required")) and env not in environ
            ap.add_argument(_flag(prefix, name), dest=prefix + name, default=None, help=help_, metavar=name.upper(),
                            required=required)
    return ap


def load(cls: type[T], argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None, *,
         prog: str = "", env_prefix: str = "AMBIT") -> T:
    """Build `cls` from flags, then environment, then defaults; check every value."""
    environ = os.environ if environ is None else environ
    ap = parser(cls, prog or cls.__name__.lower(), env_prefix=env_prefix, environ=environ)
    ns = vars(ap.parse_args(argv))

    def build(c: type, prefix: str) -> Any:
        hints = typing.get_type_hints(c)
        kwargs = {}
        for f in dataclasses.fields(c):
            tp = hints[f.name]
            if dataclasses.is_dataclass(tp):
                kwargs[f.name] = build(tp, prefix + f.metadata.get("prefix", f"{f.name}_"))
                continue
            flag, env = _flag(prefix, f.name), _env(env_prefix, prefix, f.name)
            raw, source = ns.get(prefix + f.name), flag
            if raw is None and env in environ:
                raw, source = environ[env], env
            if raw is None:
                if f.metadata.get("required"):
                    ap.error(f"{flag} (or {env}) is required")
                continue
            try:
                if isinstance(raw, bool):
                    value = raw
                elif isinstance(raw, list):
                    value = tuple(v for r in raw for v in _convert(tp, r))
                else:
                    value = _convert(tp, raw)
            except (TypeError, ValueError) as e:
                raise SettingsError(f"{source}: {raw!r}: {e}") from None
            check = f.metadata.get("check")
            reason = check(value) if check is not None and value is not None else None
            if reason:
                raise SettingsError(f"{source}: {raw!r}: {reason}")
            kwargs[f.name] = value
        obj = c(**kwargs)
        # Checks across fields (e.g. "exactly one source"): a `check()` method returning the reason.
        reason = obj.check() if hasattr(obj, "check") else None
        if reason:
            raise SettingsError(reason)
        return obj

    return build(cls, "")
