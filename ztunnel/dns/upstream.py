"""An upstream resolver's address: what `--dns-upstream` and resolv.conf name.

Its own module so that the settings and ztunnel's start-up load no dnspython: the DNS proxy's
query path imports it (about 4 MB of modules in every ztunnel process) on a node's first query,
not before (docs/performance.md, "The DNS proxy's cost").
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

TCP_MAX = 65535         # a DNS message's largest size: TCP's 2-byte length prefix


@dataclass(frozen=True, slots=True)
class Upstream:
    ip: str
    port: int = 53

    @property
    def family(self) -> int:
        return socket.AF_INET6 if ":" in self.ip else socket.AF_INET

    def __str__(self) -> str:
        return f"[{self.ip}]:{self.port}" if ":" in self.ip else f"{self.ip}:{self.port}"
