"""How ztunnel learns where a captured connection was going (one call for every capture mode).

* outbound, eBPF mode: getsockopt(SOL_IP, SO_ORIGINAL_DST) is answered by ambit_origdst from the
  destination ambit_connect4 saved;
* outbound and inbound, iptables mode: the same call is answered by conntrack (REDIRECT);
* inbound, eBPF mode: bpf_sk_assign kept the original 4-tuple, so getsockname() *is* the original
  destination; SO_ORIGINAL_DST fails (ENOENT: no NAT happened) and we fall back to it.
"""

from __future__ import annotations

import socket
import struct

from ambit.dataplane.ports import SO_ORIGINAL_DST


def original_dst(sock: socket.socket) -> tuple[str, int]:
    """(ip, port) the client originally connected to, for a socket ztunnel accepted.

    If the answer equals the listener's own address (127.0.0.1:15001), the original destination
    is unknown (e.g. ztunnel was not in its own cgroup when it opened the listener): close the
    connection rather than connect to yourself.
    """
    try:
        raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    except OSError:
        ip, port = sock.getsockname()[:2]
        return ip, port
    port, packed = struct.unpack_from("!2xH4s", raw)
    return socket.inet_ntoa(packed), port
