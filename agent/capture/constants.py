"""The capture layer's constants. The ports and marks it shares with the proxies live in
ambit.dataplane.ports; this module adds what only the agent needs (pin base, sources)."""

from __future__ import annotations

import os
from pathlib import Path

from ambit.dataplane.ports import (  # noqa: F401  (re-exported: the capture layer's view of the contract)
    AMBIT_LISTENER_MARK,
    AMBIT_MARK,
    AMBIT_MARK_MASK,
    AMBIT_ROUTE_TABLE,
    AMBIT_RULE_PRIORITY,
    PORT_DNS,
    PORT_HBONE,
    PORT_INBOUND,
    PORT_METRICS,
    PORT_OUTBOUND,
    PORT_READY,
    SO_ORIGINAL_DST,
    ZTUNNEL_PORTS,
)

DEFAULT_PIN_BASE = Path("/sys/fs/bpf/ambit")


def bpf_dir() -> Path:
    """Where the C sources live: $AMBIT_BPF_DIR, else the repository's bpf/ directory."""
    env = os.environ.get("AMBIT_BPF_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "bpf"
