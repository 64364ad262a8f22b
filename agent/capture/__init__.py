"""Ambit's capture layer: the kernel side of the node agent (eBPF, or iptables as a baseline).

The agent calls CaptureEngine (load / enrol / unenrol / enrolled / uninstall / stats); `ambit lab
down` calls purge(). The ports and marks it shares with ztunnel are in ambit.dataplane.ports.
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
from agent.capture.exclusions import annotations_to_exclusions

_LAZY = {"CaptureEngine", "PodCapture", "purge"}


def __getattr__(name: str):  # noqa: ANN202
    """The engine (bcc, pyroute2, cffi) loads only when asked for, so that `ambit lab down` and the
    agent's --help do not pay for compiling or importing the kernel side."""
    if name in _LAZY:
        from agent.capture import engine
        return getattr(engine, name)
    raise AttributeError(name)

__all__ = [
    "AMBIT_MARK", "AMBIT_MARK_MASK", "AMBIT_ROUTE_TABLE", "DEFAULT_PIN_BASE", "PORT_HBONE", "PORT_INBOUND",
    "PORT_OUTBOUND", "ZTUNNEL_PORTS", "CaptureEngine", "PodCapture", "annotations_to_exclusions",
    "purge",
]
