"""The run's results: per-rep samples per scenario and metric, details and errors (sans-IO).

Samples are kept by repetition index (None where a rep failed), so ratios can pair rep i of one
scenario with rep i of another: reps are interleaved across scenarios, so rep i of each ran at
nearly the same time and slow drift of the machine cancels out of the ratio.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bench import stats
from bench.metrics import metric


@dataclass
class RunResults:
    reps: int
    samples: dict[str, dict[str, list[float | None]]] = field(default_factory=dict)
    details: dict[str, dict[str, list[Any]]] = field(default_factory=dict)
    errors: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def record(self, scenario: str, key: str, rep: int, value: float) -> None:
        metric(key)  # unknown keys are a programming error; fail at once, naming the key
        if not 0 <= rep < self.reps:
            raise IndexError(f"RunResults.record({scenario}, {key}): rep {rep} is outside 0..{self.reps - 1}")
        row = self.samples.setdefault(scenario, {}).setdefault(key, [None] * self.reps)
        row[rep] = float(value)

    def detail(self, scenario: str, what: str, rep: int, value: Any) -> None:
        row = self.details.setdefault(scenario, {}).setdefault(what, [None] * self.reps)
        row[rep] = value

    def error(self, scenario: str, measure: str, rep: int | None, message: str) -> None:
        self.errors.append({"scenario": scenario, "measure": measure, "rep": rep, "error": message})

    def values(self, scenario: str, key: str) -> list[float]:
        """The reps that produced a value, in rep order."""
        return [v for v in self.samples.get(scenario, {}).get(key, []) if v is not None]

    def per_rep(self, scenario: str, key: str) -> list[float | None]:
        return list(self.samples.get(scenario, {}).get(key, [None] * self.reps))

    def median(self, scenario: str, key: str) -> float | None:
        v = self.values(scenario, key)
        return stats.median(v) if v else None

    def scenarios(self) -> list[str]:
        return list(self.samples)

    def summary(self) -> dict[str, dict[str, dict[str, Any]]]:
        """scenario -> metric -> {unit, samples, median, min, max, n}: the JSON's main table."""
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for sc, metrics in self.samples.items():
            for key, row in metrics.items():
                vals = [v for v in row if v is not None]
                cell: dict[str, Any] = {"unit": metric(key).unit, "samples": row}
                if vals:
                    cell.update(stats.spread(vals))
                out.setdefault(sc, {})[key] = cell
        return out

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> RunResults:
        """Rebuild from a results file (to re-render its summary and charts)."""
        res = cls(reps=int(doc["plan"]["reps"]))
        for sc, metrics in doc.get("results", {}).items():
            for key, cell in metrics.items():
                row = list(cell["samples"])
                if len(row) != res.reps:
                    raise ValueError(f"results file: {sc}.{key}.samples has {len(row)} reps, plan says {res.reps}")
                metric(key)
                res.samples.setdefault(sc, {})[key] = [None if v is None else float(v) for v in row]
        res.details = doc.get("details", {})
        res.errors = list(doc.get("errors", []))
        res.notes = list(doc.get("notes", []))
        return res
