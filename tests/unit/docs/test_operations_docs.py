"""docs/operations.md names every flag of every binary (controller, ztunnel, waypoint, agent): an
operator reads the flags there, and a flag added without a line is a knob nobody knows of. The
flags are taken from the same argparse parser the binaries build (`ambit.settings.parser`), so a
renamed or new `option(...)` field fails here with every undocumented flag listed.
"""

from __future__ import annotations

import argparse
import re

from agent.settings import AgentSettings
from ambit.settings import parser
from ambitctl.commands.install import SET_KEYS
from controller.settings import ControllerSettings
from tests.unit.docs.mdtext import code_names, flags_in, read, section
from waypoint.settings import WaypointSettings
from ztunnel.settings import ZtunnelSettings

BINARIES = {"controller": ControllerSettings, "ztunnel": ZtunnelSettings, "waypoint": WaypointSettings,
            "agent": AgentSettings}


def flags_of(ap: argparse.ArgumentParser) -> list[str]:
    return [o[2:] for a in ap._actions for o in a.option_strings if o.startswith("--") and o != "--help"]


def missing_flags(doc: str) -> list[str]:
    documented = flags_in(doc)
    return [f"{binary}: --{flag}" for binary, cls in BINARIES.items()
            for flag in flags_of(parser(cls, binary, environ={})) if flag not in documented]


def test_every_flag_of_every_binary_is_documented() -> None:
    missing = missing_flags(read("operations.md"))
    assert not missing, "docs/operations.md does not name these flags:\n  " + "\n  ".join(missing)


def test_the_check_sees_a_missing_flag() -> None:
    """Not vacuous: every binary has flags, and dropping one flag's mention is reported."""
    assert all(flags_of(parser(cls, b, environ={})) for b, cls in BINARIES.items())
    doc = read("operations.md")
    assert "waypoint: --http-h2-codec" not in missing_flags(doc)
    assert "waypoint: --http-h2-codec" in missing_flags(doc.replace("--http-h2-codec", "the codec flag"))


# The sections whose `| Flag | Default | ...` tables give each flag's default, and the binaries whose
# flags they list (the memory section's tables serve both proxies).
DEFAULT_TABLES = {
    "ztunnel settings": ("ztunnel",),
    "ztunnel limits against hostile or noisy peers": ("ztunnel",),
    "ztunnel and waypoint memory, and the garbage collector": ("ztunnel", "waypoint"),
    "Waypoints": ("waypoint",),
    "Agent settings": ("agent",),
}
_NONE = {"none", "''", "(required)"}


def code_defaults(binary: str) -> dict[str, str]:
    """flag -> its default as `--help` prints it (`[env X; default 10.0]`), canonical (`canon`)."""
    out = {}
    for a in parser(BINARIES[binary], binary, environ={})._actions:
        m = re.search(r"; default (.*)\]", a.help or "")
        if m and a.option_strings:
            raw = m.group(1)
            if isinstance(a.const, bool):   # a switch: `--x` is off by default, `--no-x` on
                value = "off" if a.const else "on"
            elif raw in ("None", "''", "()"):
                value = "none"
            elif raw.startswith("('"):      # a repeatable flag's tuple: ('group:system:masters',)
                value = ",".join(re.findall(r"'([^']*)'", raw))
            else:
                value = canon(raw.removeprefix("PosixPath(").removesuffix(")").strip("'"))
            out[a.option_strings[0]] = value
    return out


def canon(text: str) -> str:
    """One spelling of a default: `10 s`, `10.0` and `10` are 10; backticks, a parenthesised aside
    (`0 (never; the lab: 30 s)`) and `each` dropped; `none`, `''` and `(required)` are none; a default
    described by what it resolves to (`the --controller target`, `Python's 700,10,10`, `$POD_NAME`,
    `system:serviceaccount:<root-ns>:ztunnel`) is none."""
    text = text.strip()
    if text in _NONE:
        return "none"
    text = re.sub(r"\s*\(.*\)", "", text).replace("`", "").strip()
    text = re.sub(r"\s+(s|each)$", "", text)
    if text in _NONE or text.startswith(("the ", "Python's ", "$")) or "<" in text:
        return "none"
    if re.fullmatch(r"\d{1,3}(,\d{3})+", text):     # 10,000
        text = text.replace(",", "")
    try:
        return format(float(text), "g")
    except ValueError:
        return text


def _split(cell: str) -> list[str]:
    """`180 s, 180 s, 9; on` -> four values; commas and semicolons inside backticks or parentheses
    (`Python's 700,10,10`, `0 (off; ...)`) do not split."""
    out, cur, depth, code = [], "", 0, False
    for ch in cell:
        code ^= ch == "`"
        depth += (ch == "(") - (ch == ")")
        if ch in ",;" and not depth and not code:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    return [c.strip() for c in [*out, cur]]


def default_mismatches(doc: str) -> list[str]:
    out = []
    for heading, binaries in DEFAULT_TABLES.items():
        table = False
        for line in section(doc, heading).splitlines():
            if not line.startswith("|"):
                table = False
                continue
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if cells[:2] == ["Flag", "Default"]:
                table = True
                continue
            flags = re.findall(r"`(--[a-z0-9-]+)", cells[0])
            if not table or not flags:
                continue
            values = _split(cells[1])
            if len(values) == 1:
                values *= len(flags)
            if len(values) != len(flags):
                out.append(f"{heading}: {cells[0]}: {len(flags)} flags but {len(values)} defaults: {cells[1]}")
                continue
            for flag, value in zip(flags, values, strict=True):
                known = [(b, code_defaults(b)[flag]) for b in binaries if flag in code_defaults(b)]
                if not known:
                    out.append(f"{heading}: {flag} is no flag of {' or '.join(binaries)}")
                out += [f"{heading}: {b} {flag}: documented {value!r}, the code's default is {truth!r}"
                        for b, truth in known if canon(value) != truth]
    return out


def controller_default_mismatches(doc: str) -> list[str]:
    """The controller's table gives a default in prose, `(default X...)`: checked for rows of one flag."""
    truth, out = code_defaults("controller"), []
    for line in section(doc, "Running the controller").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        flags = re.findall(r"`(--[a-z0-9-]+)", cells[0]) if line.startswith("| `--") else []
        m = re.search(r"\(default (`[^`]+`|[\d.,]+)", cells[-1])
        if len(flags) == 1 and m and canon(m.group(1).rstrip(",")) != truth[flags[0]]:
            out.append(f"controller {flags[0]}: documented {m.group(1)!r}, the code's default is {truth[flags[0]]!r}")
    return out


def test_every_documented_default_is_the_codes() -> None:
    """The `Default` column of the proxies' and the agent's flag tables is what `--help` says: an
    operator sizing a node from the table must not be reading last year's value."""
    doc = read("operations.md")
    wrong = default_mismatches(doc) + controller_default_mismatches(doc)
    assert not wrong, "docs/operations.md gives wrong defaults:\n  " + "\n  ".join(wrong)


def test_the_default_check_sees_a_wrong_default() -> None:
    """Not vacuous: most flags' defaults are read, and a changed one is reported."""
    doc = read("operations.md")
    rows = [line for h in DEFAULT_TABLES for line in section(doc, h).splitlines() if line.startswith("| `--")]
    assert len(rows) > 60
    wrong = default_mismatches(doc.replace("| `--max-inbound-per-pod` | 16384 |", "| `--max-inbound-per-pod` | 8192 |"))
    assert wrong == ["ztunnel limits against hostile or noisy peers: ztunnel --max-inbound-per-pod: "
                     "documented '8192', the code's default is '16384'"]
    assert controller_default_mismatches(doc.replace("(default 0.03 s)", "(default 0.05 s)")) == [
        "controller --debounce: documented '0.05', the code's default is '0.03'"]


def set_keys_paragraph(doc: str) -> str:
    """The paragraph of "Installing in a cluster" that lists the `--set` keys."""
    body = section(doc, "Installing in a cluster")
    start = body.index("`--set KEY=VALUE` (repeatable)")
    return body[start:body.index("\n\n", start)]


def test_every_set_key_of_install_is_documented() -> None:
    """`ambit install --set K=V` refuses an unknown key, so the list an operator reads must hold every
    key it accepts (`ambitctl.commands.install.SET_KEYS`)."""
    named = code_names(set_keys_paragraph(read("operations.md")))
    missing = [k for k in SET_KEYS if k not in named and not set(k.split(".")) <= named]
    assert not missing, "docs/operations.md's --set list does not name: " + ", ".join(missing)
