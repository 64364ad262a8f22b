"""ztunnel's side of the agent hand-off (see ambit/zds.py).

A blocking thread serves the agent's unix socket and hands each request to the event loop, waiting
for the result so that the agent's ack means "listeners are open" (or "closed", for a delete).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
from pathlib import Path

from ambit import zds
from ambit.zds import PodInfo
from ztunnel.pods import PodRegistry

log = logging.getLogger("ambit.ztunnel.zds")


class ZdsServer:
    def __init__(self, path: Path, registry: PodRegistry, loop: asyncio.AbstractEventLoop):
        self.path = path
        self.registry = registry
        self.loop = loop
        self.sock: socket.socket | None = None

    def start(self) -> None:
        self.sock = zds.listen(self.path)
        threading.Thread(target=self._accept_loop, name="zds", daemon=True).start()

    def stop(self) -> None:
        """Stop taking agents (ztunnel is shutting down); the socket file is left alone, since the
        new ztunnel of a surge roll may have bound that path already."""
        zds.close_listener(self.sock)

    def _accept_loop(self) -> None:
        assert self.sock is not None
        zds.accept_loop(self.sock, self._serve, log,
                        lambda: log.info("agent disconnected; keeping %d pods", len(self.registry.pods)))

    def _call(self, coro) -> None:  # noqa: ANN001
        asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    def _serve(self, conn: socket.socket) -> None:
        snapshot: set[str] | None = None
        while True:
            msg, fds = zds.recv(conn)
            if msg is None:
                return
            kind, ref = msg.get("type"), msg.get("uid") or msg.get("pod", {}).get("uid", "")
            try:
                if kind == "add":
                    if len(fds) != 1:
                        raise ValueError(f"add needs exactly one netns fd, got {len(fds)}")
                    pod = PodInfo.from_dict(msg["pod"])
                    fd = fds.pop()
                    if snapshot is not None:   # wanted even if its listeners fail (the agent retries)
                        snapshot.add(pod.uid)
                    self._call(self.registry.add(pod, fd))
                elif kind == "del":
                    self._call(self.registry.remove(msg["uid"], float(msg.get("drain", 5.0)), wait=False))
                elif kind == "ping":
                    pass
                elif kind == "snapshot_start":
                    snapshot = set()
                elif kind == "snapshot_end":
                    stale = (set(self.registry.pods) | set(self.registry.failed)) - (snapshot or set())
                    for uid in stale:
                        self._call(self.registry.remove(uid, 5.0, wait=False))
                    snapshot = None
                else:
                    raise ValueError(f"unknown message type {kind!r}")
                zds.send(conn, {"type": "ack", "ref": ref or kind})
            except Exception as e:
                log.warning("zds %s %s failed: %s", kind, ref, e)
                zds.send(conn, {"type": "error", "ref": ref or kind, "reason": str(e)})
            finally:
                for fd in fds:
                    os.close(fd)
