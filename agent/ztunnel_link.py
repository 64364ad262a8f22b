"""The agent's connection to its node's ztunnel (protocol in ambit/zds.py).

Reconnects whenever ztunnel restarts and replays every enrolled pod as a snapshot, so ztunnel's
view converges without either side keeping a journal.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path

from ambit import zds
from ambit.zds import PodInfo

log = logging.getLogger("ambit.agent.zds")


class ZtunnelError(RuntimeError):
    """The link to ztunnel is down (or ztunnel refused a request: see ZtunnelRefused)."""


class ZtunnelRefused(ZtunnelError):
    """ztunnel answered, but refused this request (e.g. one pod's listeners could not be opened).
    The link itself is fine: the agent keeps it and retries that pod later."""


class ZtunnelLink:
    def __init__(self, path: Path, timeout: float = 10.0):
        self.path = path
        self.timeout = timeout
        self.sock: socket.socket | None = None

    def connected(self) -> bool:
        return self.sock is not None

    def connect(self, deadline: float) -> None:
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            try:
                s.connect(str(self.path))
                s.settimeout(self.timeout)
                self.sock = s
                log.info("connected to ztunnel at %s", self.path)
                return
            except OSError as e:
                s.close()
                if time.monotonic() > deadline:
                    raise ZtunnelError(f"cannot reach ztunnel at {self.path}: {e}") from e
                time.sleep(0.1)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def _request(self, msg: dict, fds: list[int] | None = None) -> None:
        if self.sock is None:
            raise ZtunnelError("not connected to ztunnel")
        try:
            zds.send(self.sock, msg, fds)
            reply, extra = zds.recv(self.sock)
        except OSError as e:
            self.close()
            raise ZtunnelError(f"ztunnel connection lost: {e}") from e
        for fd in extra:
            os.close(fd)
        if reply is None:
            self.close()
            raise ZtunnelError("ztunnel closed the connection")
        if reply.get("type") != "ack":
            raise ZtunnelRefused(f"ztunnel refused {msg.get('type')}: {reply.get('reason')}")

    def add(self, pod: PodInfo, netns_path: str) -> None:
        fd = os.open(netns_path, os.O_RDONLY)
        try:
            self._request({"type": "add", "pod": pod.to_dict()}, [fd])
        finally:
            os.close(fd)

    def ping(self) -> None:
        self._request({"type": "ping"})

    def delete(self, uid: str, drain: float) -> None:
        self._request({"type": "del", "uid": uid, "drain": drain})

    def snapshot(self, pods: list[tuple[PodInfo, str]]) -> list[tuple[str, str]]:
        """Replay every pod; returns (uid, error) for pods ztunnel refused."""
        errors = []
        self._request({"type": "snapshot_start"})
        for info, netns_path in pods:
            try:
                self.add(info, netns_path)
            except ZtunnelRefused as e:
                errors.append((info.uid, str(e)))
            except OSError as e:    # the netns is gone (pod deleted meanwhile): that pod's problem
                errors.append((info.uid, f"cannot open {netns_path}: {e}"))
        self._request({"type": "snapshot_end"})
        return errors
