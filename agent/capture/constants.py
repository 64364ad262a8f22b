"""Values the capture layer shares with ztunnel and the agent.

Import-light on purpose (no bcc, no cffi): ztunnel imports AMBIT_MARK and the ports from here.
"""

from __future__ import annotations

import os
from pathlib import Path

# ztunnel's listeners inside every enrolled pod's netns.
PORT_OUTBOUND = 15001   # 127.0.0.1: redirected outbound connect()s
PORT_INBOUND = 15006    # 0.0.0.0: captured plaintext inbound
PORT_HBONE = 15008      # 0.0.0.0: mTLS HBONE, never captured
PORT_METRICS = 15020
PORT_READY = 15021
ZTUNNEL_PORTS = (PORT_OUTBOUND, PORT_INBOUND, PORT_HBONE, PORT_METRICS, PORT_READY)

# The socket mark ztunnel sets (SO_MARK) on its *source-preserving delivery* sockets in a pod
# netns: bound to the client's IP with IP_TRANSPARENT and connected to the app. With
# net.ipv4.tcp_fwmark_accept=1 the app's accepted socket inherits the mark, and the rule
# `fwmark AMBIT_MARK/AMBIT_MARK_MASK lookup AMBIT_ROUTE_TABLE` (table: local 0.0.0.0/0 dev lo)
# routes the app's replies back over lo to ztunnel instead of out of eth0 to the real client.
# Do not set it on ztunnel's other sockets: they would be routed to lo too.
AMBIT_MARK = 0x539
AMBIT_MARK_MASK = 0xFFF
AMBIT_ROUTE_TABLE = 133
AMBIT_RULE_PRIORITY = 32700   # before the main table (32766)

# The socket mark ztunnel sets on its own 0.0.0.0:15006 and 0.0.0.0:15008 listeners in a pod
# netns. ambit_tc_in hands traffic only to a listener that carries it: setting SO_MARK needs
# CAP_NET_ADMIN, so a pod that binds ztunnel's ports itself (squatting them while ztunnel
# restarts) never receives captured or HBONE-port traffic. Mirrors AMBIT_LISTENER_MARK in
# bpf/ambit_maps.h; its low 12 bits differ from AMBIT_MARK's, so accepted sockets (which inherit
# the listener's mark) are not routed by the delivery rule.
AMBIT_LISTENER_MARK = 0x53A

SO_ORIGINAL_DST = 80          # SOL_IP; answered by ambit_origdst (ebpf) or conntrack (iptables)

DEFAULT_PIN_BASE = Path("/sys/fs/bpf/ambit")


def bpf_dir() -> Path:
    """Where the C sources live: $AMBIT_BPF_DIR, else the repository's bpf/ directory."""
    env = os.environ.get("AMBIT_BPF_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "bpf"
