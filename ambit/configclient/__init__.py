"""The config stream client library used by the agent, ztunnel and waypoints.

    client = ConfigClient("controller:15010", NodeInfo("ztunnel", "node-1"),
                          [Workload.TYPE, Service.TYPE], on_change=apply)
    await client.start()
    await client.wait_synced(timeout=10)

See docs/config-stream.md for the protocol.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ambit.backoff import Backoff
    from ambit.configclient.client import ApplyCallback, ConfigClient
    from ambit.configclient.codec import DecodeError, Encoded, decode, encode
    from ambit.configclient.node import KINDS, NodeInfo
    from ambit.configclient.state import ConfigUpdate
    from ambit.configclient.status import fetch_status, format_status

# Loaded on first use (PEP 562): `ambit.configclient.tls` alone, which every proxy's settings
# import, must not pull the client and grpc into a process that only parses settings.
_WHERE = {"Backoff": "ambit.backoff", "ApplyCallback": "ambit.configclient.client",
          "ConfigClient": "ambit.configclient.client", "DecodeError": "ambit.configclient.codec",
          "Encoded": "ambit.configclient.codec", "decode": "ambit.configclient.codec",
          "encode": "ambit.configclient.codec", "KINDS": "ambit.configclient.node",
          "NodeInfo": "ambit.configclient.node", "ConfigUpdate": "ambit.configclient.state",
          "fetch_status": "ambit.configclient.status", "format_status": "ambit.configclient.status"}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "KINDS",
    "ApplyCallback",
    "Backoff",
    "ConfigClient",
    "ConfigUpdate",
    "DecodeError",
    "Encoded",
    "NodeInfo",
    "decode",
    "encode",
    "fetch_status",
    "format_status",
]
