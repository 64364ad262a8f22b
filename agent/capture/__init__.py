"""Ambit's capture layer: the kernel side of the node agent (eBPF, or iptables as a baseline).

The agent calls CaptureEngine (load / enrol / unenrol / enrolled / uninstall / stats); `ambit lab
down` calls purge(); ztunnel imports the constants (AMBIT_MARK, ports) and original_dst().
See docs/ebpf.md for the programs, maps and lifetimes.
"""

from agent.capture.constants import (
    AMBIT_MARK,
    AMBIT_MARK_MASK,
    AMBIT_ROUTE_TABLE,
    DEFAULT_PIN_BASE,
    PORT_HBONE,
    PORT_INBOUND,
    PORT_OUTBOUND,
    ZTUNNEL_PORTS,
)
from agent.capture.engine import CaptureEngine, PodCapture, purge
from agent.capture.exclusions import annotations_to_exclusions
from agent.capture.origdst import original_dst

__all__ = [
    "AMBIT_MARK", "AMBIT_MARK_MASK", "AMBIT_ROUTE_TABLE", "DEFAULT_PIN_BASE", "PORT_HBONE", "PORT_INBOUND",
    "PORT_OUTBOUND", "ZTUNNEL_PORTS", "CaptureEngine", "PodCapture", "annotations_to_exclusions",
    "original_dst", "purge",
]
