"""The waypoint's HBONE listener on `HOST:PORT`: opened by a single waypoint process, or by its
workers' supervisor, which then hands the accepted connections out (ambit/dataplane/handoff.py)."""

from __future__ import annotations

import socket

from ambit.dataplane.ports import LISTEN_BACKLOG


def tcp_listener(address: str) -> socket.socket:
    """A non-blocking listening socket bound to `address` (`HOST:PORT`, IPv6 hosts unbracketed)."""
    host, _, port = address.rpartition(":")
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, int(port)))
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock
