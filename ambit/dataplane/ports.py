"""Every mesh port and socket mark, in one place.

These numbers are the contract between the capture layer (agent/, bpf/) and the proxies (ztunnel/,
waypoint/): the eBPF programs redirect to these ports, ztunnel listens on them, and the agent's
routing rule matches the mark. bpf/ambit_maps.h carries the same values for the C side; a unit
test keeps the two in step.
"""

from __future__ import annotations

# ztunnel's listeners inside every enrolled pod's netns.
PORT_OUTBOUND = 15001   # 127.0.0.1: redirected outbound connect()s
PORT_INBOUND = 15006    # 0.0.0.0: captured plaintext inbound
PORT_HBONE = 15008      # 0.0.0.0: mTLS HBONE, never captured
PORT_DNS = 15053        # 127.0.0.1, UDP and TCP: the DNS proxy; captured queries to port 53 (Istio's port)
# ztunnel's node-level endpoints (node netns).
PORT_ADMIN = 15000      # 127.0.0.1: config dump, certificates, workloads
PORT_METRICS = 15020
PORT_READY = 15021
ZTUNNEL_PORTS = (PORT_OUTBOUND, PORT_INBOUND, PORT_HBONE, PORT_METRICS, PORT_READY)
# What an ingress gateway pod binds for itself (controller/waypoints/render.py), by port: a Gateway
# listener or Istio Gateway server there could never bind (0.0.0.0:P clashes with 127.0.0.1:P too),
# so validation refuses it (controller/kinds/common.py, `check_ingress_port`). Its HBONE port is
# not among them: an ingress pod serves its listeners only.
INGRESS_POD_PORTS = {
    PORT_ADMIN: "the admin endpoint (127.0.0.1:15000, the pod's loopback)",
    PORT_METRICS: "the Prometheus metrics endpoint",
    PORT_READY: "the status port (/healthz/ready, the kubelet's readiness probe)",
}

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

# Every listener's accept backlog (the kernel caps it at net.core.somaxconn). asyncio's create_server and
# start_server would otherwise re-listen() with their default of 100, and a burst of connections gets resets.
LISTEN_BACKLOG = 4096
