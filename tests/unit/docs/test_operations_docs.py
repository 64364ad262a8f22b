"""docs/operations.md names every flag of every binary (controller, ztunnel, waypoint, agent): an
operator reads the flags there, and a flag added without a line is a knob nobody knows of. The
flags are taken from the same argparse parser the binaries build (`ambit.settings.parser`), so a
renamed or new `option(...)` field fails here with every undocumented flag listed.
"""

from __future__ import annotations

import argparse

from agent.settings import AgentSettings
from ambit.settings import parser
from controller.settings import ControllerSettings
from tests.unit.docs.mdtext import flags_in, read
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
