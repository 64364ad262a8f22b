"""An optional on-disk copy of the last good config, so a restarted component can serve at once.

Without it, an agent or ztunnel that restarts while the controller is down would come up empty and
break traffic that was flowing a moment earlier. The file holds the wire form (name, version,
body) so that on reconnect the client can tell the server exactly which versions it holds.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ambit.configclient.codec import Encoded

FORMAT = 1

CachedType = tuple[str, list[Encoded]]  # (system_version, resources)


def save(path: Path, node_key: str, types: dict[str, CachedType]) -> None:
    """Write atomically (temp file + rename) so a crash never leaves a half-written cache."""
    doc = {
        "format": FORMAT,
        "node": node_key,
        "types": {
            t: {"system_version": sv, "resources": {e.name: {"version": e.version, "body": e.body.decode()}
                                                    for e in res}}
            for t, (sv, res) in types.items()
        },
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")   # per process: ztunnel workers share the path
    tmp.write_text(json.dumps(doc, sort_keys=True))
    os.replace(tmp, path)


def load(path: Path, node_key: str) -> dict[str, CachedType]:
    """Read the cache; raise ValueError naming the file and the reason if it is unusable."""
    try:
        doc = json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"config cache {path}: not JSON: {e}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError(f"config cache {path}: format is {doc.get('format') if isinstance(doc, dict) else doc!r}, "
                         f"expected {FORMAT}")
    if doc.get("node") != node_key:
        # Config is scoped per node: another node's cache would make this one serve wrong state.
        raise ValueError(f"config cache {path}: written for {doc.get('node')!r}, this is {node_key!r}")
    types = doc.get("types") or {}
    if not isinstance(types, dict):
        # Any shape but this version's is refused here, as a ValueError: an AttributeError from a
        # list where a mapping was ("types": [...]) escaped the component's start, on every restart.
        raise ValueError(f"config cache {path}: types: not a mapping")
    out: dict[str, CachedType] = {}
    for t, entry in types.items():
        try:
            res = [Encoded(name, _str(r["version"]), _str(r["body"]).encode())
                   for name, r in entry["resources"].items()]
            out[t] = (_str(entry["system_version"]), res)
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"config cache {path}: type {t}: malformed entry ({e!r})") from None
    return out


def _str(v: object) -> str:
    if not isinstance(v, str):
        raise TypeError(f"{v!r} is not a string")
    return v
