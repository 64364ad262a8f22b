"""The machine's load at the start of each rep, and which reps ran on a busy machine.

Other work on the machine (another build, another bench) inflates latency and CPU figures without
any error; the 1-minute load average at each rep's start, against the core count, says which reps
to distrust. Recorded in the run's details (`details.<scenario>.load[rep]`); `sample` is the only
function that reads the machine, the rest is sans-IO. The bench's own previous measure counts in
that average too (a saturating max-rate run keeps 2–4 tasks runnable), so a flag on one rep is a
hint; a flag on most reps of a run means the machine was not quiet.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from bench.results import RunResults

DETAIL = "load"


def sample() -> dict[str, Any]:
    """The 1/5/15-minute load averages and the core count, now."""
    one, five, fifteen = os.getloadavg()
    return {"load1": one, "load5": five, "load15": fifteen, "cores": os.cpu_count() or 1}


def is_busy(s: dict[str, Any]) -> bool:
    """Busy: more runnable tasks, on average over the last minute, than cores."""
    return float(s["load1"]) > float(s["cores"])


@dataclass(frozen=True)
class Busy:
    scenario: str
    rep: int
    load1: float
    cores: int


def busy_reps(results: RunResults) -> list[Busy]:
    """Every rep whose start was on a busy machine, in scenario then rep order."""
    out = []
    for sc, details in results.details.items():
        for rep, s in enumerate(details.get(DETAIL) or []):
            if s and is_busy(s):
                out.append(Busy(sc, rep, float(s["load1"]), int(s["cores"])))
    return out


def sampled_reps(results: RunResults) -> int:
    return sum(1 for d in results.details.values() for s in (d.get(DETAIL) or []) if s)
