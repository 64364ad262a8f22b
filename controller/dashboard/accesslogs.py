"""A node's recent access-log lines, for the topology view's side panel.

The proxies write their access logs to stdout (ztunnel: `access {json}` per connection; the
waypoint: one JSON object per request on the `ambit.waypoint.access` logger). Where stdout ends up
is the platform's business: in the lab it is `<labdir>/logs/{ztunnel-NODE,waypoint-NS-NAME}.log`,
which the controller reads when given `--dashboard-access-logs DIR`; in a cluster it is the
container runtime's log, which the controller does not read (the panel says so).

`matches` is pure; `recent` reads the tail of each file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

TAIL_BYTES = 256 * 1024


def record_of(line: str) -> dict[str, Any] | None:
    """The JSON record of an access-log line, or None for any other log line."""
    if line.startswith("access {"):
        text = line[len("access "):]
    elif "ambit.waypoint.access:" in line:
        text = line.split("ambit.waypoint.access:", 1)[1].strip()
    else:
        return None
    try:
        rec = json.loads(text)
    except json.JSONDecodeError:
        return None
    return rec if isinstance(rec, dict) else None


def matches(rec: dict[str, Any], node_id: str, file_stem: str = "") -> bool:
    """Does this record involve the node (`wl:NS/NAME`, `svc:NS/NAME`, `wp:NS/NAME`)?"""
    kind, _, rest = node_id.partition(":")
    ns, _, name = rest.partition("/")
    if kind == "wp":
        return file_stem == f"waypoint-{ns}-{name}"
    if kind == "wl":
        return ((rec.get("src.workload"), rec.get("src.namespace")) == (name, ns)
                or (rec.get("dst.workload"), rec.get("dst.namespace")) == (name, ns)
                or (rec.get("source_workload"), rec.get("source_namespace")) == (name, ns)
                or (rec.get("destination_workload"), rec.get("destination_namespace")) == (name, ns))
    if kind == "svc":
        host = str(rec.get("dst.service") or rec.get("destination_service") or "")
        authority = str(rec.get("authority") or "").split(":")[0]
        return host.startswith(f"{name}.{ns}.") or host == f"{ns}/{name}" or authority in (
            name, f"{name}.{ns}", f"{name}.{ns}.svc") or authority.startswith(f"{name}.{ns}.svc.")
    return False


def _tail(path: Path, limit: int = TAIL_BYTES) -> list[str]:
    with path.open("rb") as f:
        f.seek(0, 2)
        size = f.tell()
        f.seek(max(0, size - limit))
        data = f.read().decode(errors="replace")
    lines = data.splitlines()
    return lines[1:] if size > limit else lines


def recent(log_dir: Path, node_id: str, limit: int = 20) -> list[dict[str, Any]]:
    """The node's last `limit` access-log records across the proxies' logs, newest last, each with
    the component that wrote it."""
    out: list[tuple[str, int, dict[str, Any]]] = []
    for f in sorted(log_dir.glob("ztunnel-*.log")) + sorted(log_dir.glob("waypoint-*.log")):
        try:
            lines = _tail(f)
        except OSError:
            continue
        for i, line in enumerate(lines):
            rec = record_of(line)
            if rec is not None and matches(rec, node_id, f.stem):
                when = str(rec.get("time") or rec.get("start_time") or "")
                out.append((when, i, {"component": f.stem, "line": json.dumps(rec, separators=(",", ":")),
                                      "time": when}))
    out.sort(key=lambda t: (t[0], t[1]))
    return [r for _, _, r in out[-limit:]]
