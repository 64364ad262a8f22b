"""The agent ↔ ztunnel hand-off protocol ("zds", after Istio's ztunnel discovery service).

The agent tells its node's ztunnel which pods to serve. Each `add` carries the pod's metadata and
its network namespace as a file descriptor (SCM_RIGHTS), so ztunnel can open its listeners *inside*
the pod netns without needing the netns path to exist in its own mount namespace. Messages are JSON
over a SOCK_SEQPACKET unix socket, which keeps message boundaries and carries fds natively.

Conversation:
    agent -> ztunnel   {"type": "snapshot_start"}                 after every (re)connect
    agent -> ztunnel   {"type": "add", "pod": {...}} + [netns fd] ztunnel opens 15001/15006/15008
    agent -> ztunnel   {"type": "snapshot_end"}                   ztunnel drops pods not re-added
    agent -> ztunnel   {"type": "del", "uid": ..., "drain": secs} stop accepting; finish within bound
    ztunnel -> agent   {"type": "ack", "ref": ...} | {"type": "error", "ref": ..., "reason": ...}
"""

from __future__ import annotations

import array
import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from ambit.accept import ACCEPT_RETRY_DELAY, BACKOFFS, out_of_resources

MAX_MSG = 64 * 1024


@dataclass
class PodInfo:
    uid: str
    name: str
    namespace: str
    ip: str
    node: str
    service_account: str
    labels: dict[str, str] = field(default_factory=dict)
    node_ip: str = ""

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PodInfo:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def send(sock: socket.socket, msg: dict[str, Any], fds: list[int] | None = None) -> None:
    data = json.dumps(msg).encode()
    if len(data) > MAX_MSG:
        raise ValueError(f"zds message too large ({len(data)} bytes)")
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds else []
    sock.sendmsg([data], anc)


def recv(sock: socket.socket) -> tuple[dict[str, Any] | None, list[int]]:
    """One message and the fds it carried; (None, []) on EOF. The caller owns (closes) the fds."""
    fds = array.array("i")
    data, anc, _flags, _addr = sock.recvmsg(MAX_MSG, socket.CMSG_SPACE(16 * fds.itemsize))
    for level, type_, cdata in anc:
        if level == socket.SOL_SOCKET and type_ == socket.SCM_RIGHTS:
            fds.frombytes(cdata[: len(cdata) - (len(cdata) % fds.itemsize)])
    if not data:
        for fd in fds:
            import os
            os.close(fd)
        return None, []
    return json.loads(data), list(fds)


def listen(path: Any) -> socket.socket:
    """Bind the zds socket at `path` (a pathlib.Path), private to root (0600); a stale file from an
    earlier process is replaced."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.bind(str(path))
    os.chmod(path, 0o600)
    sock.listen(4)
    return sock


def close_listener(sock: socket.socket | None) -> None:
    """Stop accepting (wakes a thread blocked in accept()); the socket file is left in place."""
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()


def accept_loop(sock: socket.socket, serve: Callable[[socket.socket], None], log: logging.Logger,
                disconnected: Callable[[], None] = lambda: None) -> None:
    """Serve agents one at a time (there is one per node) until `close_listener(sock)`.

    Out of descriptors (EMFILE and friends) accept() fails while the listener is still open: that
    is waited out, not taken for `close_listener`. It used to end the loop for good, and the
    agent, which reconnects, never reached ztunnel again: no pod was captured or released until
    ztunnel restarted."""
    BACKOFFS.setdefault("zds", 0)
    while True:
        try:
            conn, _ = sock.accept()
        except OSError as e:
            if out_of_resources(e) and sock.fileno() != -1:
                BACKOFFS["zds"] += 1
                log.warning("accepting the agent failed: %s; retrying in %.0fs", e, ACCEPT_RETRY_DELAY)
                time.sleep(ACCEPT_RETRY_DELAY)
                continue
            return          # close_listener()
        log.info("agent connected")
        try:
            serve(conn)
        except Exception:
            log.exception("agent connection failed")
        finally:
            conn.close()
            disconnected()
