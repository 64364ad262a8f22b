"""Build RunResults the way a run fills them."""

from __future__ import annotations

from bench.results import RunResults


def results_with(reps: int, table: dict[str, dict[str, list[float | None]]]) -> RunResults:
    res = RunResults(reps=reps)
    for sc, metrics in table.items():
        for key, row in metrics.items():
            for rep, v in enumerate(row):
                if v is not None:
                    res.record(sc, key, rep, v)
    return res
