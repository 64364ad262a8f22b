"""docs/observability.md names every metric family the components export: it is the page an operator
writes alerts and dashboards from, and a family it does not name is one nobody alerts on (the
waypoint's ext_authz and mirror counters were documented only beside their features).

The families are found in the source: every `ambit_*` / `istio_*` string handed to a call (a
`CounterMetricFamily`, prometheus_client's `Counter`, the proxies' `Family`, a collector's helper).
The few calls that take such a string and are no metric (eBPF program and map names, a prefix test)
are listed in NOT_METRICS (and the one name that is no family, NOT_FAMILIES); any other new call with such a name counts as a family, so a new metric
is never missed because it was built through a new helper.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.unit.docs.mdtext import read

REPO = Path(__file__).resolve().parents[3]
PACKAGES = ("ambit", "ztunnel", "waypoint", "controller", "agent")
NOT_METRICS = {"Program", "MapSpec", "startswith"}    # eBPF programs and maps; the dashboard's prefix tests
# names such a call takes that are no family: the Telemetry overrides' internal label, stripped before exposition
NOT_FAMILIES = {"ambit_added_tags"}
_NAME = re.compile(r"^(ambit|istio)_[a-z0-9_]+$")


def families() -> dict[str, str]:
    """family name -> the first file that builds it."""
    found: dict[str, str] = {}
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            # a module's named constants (`FAILURES = "ambit_metrics_merge_failures"`) handed to a call count too
            consts = {t.id: n.value.value for n in tree.body if isinstance(n, ast.Assign)
                      and isinstance(n.value, ast.Constant) for t in n.targets if isinstance(t, ast.Name)}
            for node in ast.walk(tree):
                if not isinstance(node, ast.Call):
                    continue
                callee = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                if callee in NOT_METRICS:
                    continue
                for arg in node.args:
                    value = consts.get(arg.id) if isinstance(arg, ast.Name) else getattr(arg, "value", None)
                    if isinstance(value, str) and _NAME.match(value) and value not in NOT_FAMILIES:
                        found.setdefault(value, str(path.relative_to(REPO)))
    return found


def undocumented(doc: str) -> list[str]:
    # A counter is written with its `_total` (a histogram with `_bucket`...); `\b` after the name keeps
    # `ambit_config_connected` from being found inside `ambit_config_connected_subscribers`.
    return [f"{name} ({where})" for name, where in sorted(families().items())
            if not re.search(rf"\b{name}(_total|_bucket|_sum|_count)?\b", doc)]


def test_every_metric_family_is_documented() -> None:
    missing = undocumented(read("observability.md"))
    assert not missing, "docs/observability.md does not name these metric families:\n  " + "\n  ".join(missing)


def test_the_check_sees_a_missing_family() -> None:
    """Not vacuous: the families of every component are found, and dropping one's mention is reported."""
    names = families()
    assert {"ambit_config_connected", "ambit_controller_limited", "ambit_agent_uncaptured_pods",
            "ambit_waypoint_mirror_active", "istio_tcp_sent_bytes", "istio_requests",
            "ambit_metrics_merge_failures"} <= set(names)
    assert not any(n.startswith(("ambit_connect4", "ambit_pods")) for n in names)      # eBPF names are not metrics
    doc = read("observability.md").replace("ambit_waypoint_mirror_active", "the mirror gauge")
    assert undocumented(doc) == ["ambit_waypoint_mirror_active (waypoint/telemetry/mirrors.py)"]
