"""The agent's end of the plugin's socket: one thread accepting, one short-lived thread per request.

The socket is created 0600 in a directory only root can write: whoever can talk to it can have a
netns captured, which is the container runtime's privilege, not a pod's. Requests are answered by
the `handler` (the Agent), which serialises them with its own reconciling.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from pathlib import Path
from typing import Any, Protocol

from agent.cni import wire

log = logging.getLogger("ambit.agent.cni")


class Handler(Protocol):
    def cni_add(self, pod: dict[str, Any]) -> str | None: ...     # None: captured; else why not
    def cni_del(self, uid: str, key: str) -> None: ...
    def cni_check(self, uid: str) -> str | None: ...


class CniServer:
    def __init__(self, path: Path, handler: Handler):
        self.path = path
        self.handler = handler
        self.sock: socket.socket | None = None
        self.inode = 0

    def start(self, stop: threading.Event) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path.unlink(missing_ok=True)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            s.bind(str(self.path))
        finally:
            os.umask(old)
        s.listen(64)
        s.settimeout(0.2)
        self.sock = s
        self.inode = self.path.stat().st_ino
        threading.Thread(target=self._accept, args=(stop,), name="cni-server", daemon=True).start()
        log.info("CNI plugin socket on %s", self.path)

    def _accept(self, stop: threading.Event) -> None:
        assert self.sock is not None
        try:
            while not stop.is_set():
                try:
                    conn, _ = self.sock.accept()
                except TimeoutError:
                    continue
                except OSError:
                    break
                threading.Thread(target=self._serve, args=(conn,), name="cni-request", daemon=True).start()
        finally:
            self.sock.close()
            # During a surge rollout the new agent has bound the path already: leave its socket.
            try:
                if self.path.stat().st_ino == self.inode:
                    self.path.unlink()
            except FileNotFoundError:
                pass

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(60)
            try:
                msg = wire.read_line(conn)
                if msg is None:
                    return
                wire.write_line(conn, self.answer(msg))
            except (OSError, ValueError) as e:
                log.warning("CNI request: %s", e)

    def answer(self, msg: dict[str, Any]) -> dict[str, Any]:
        cmd = msg.get("cmd")
        try:
            if cmd == "add":
                pod = msg.get("pod")
                if not isinstance(pod, dict):
                    return {"ok": False, "error": "add: no pod"}
                err = self.handler.cni_add(pod)
            elif cmd == "del":
                self.handler.cni_del(str(msg.get("uid") or ""), f"{msg.get('namespace')}/{msg.get('name')}")
                err = None
            elif cmd == "check":
                err = self.handler.cni_check(str(msg.get("uid") or ""))
            else:
                err = f"unknown command {cmd!r}"
        except Exception as e:  # noqa: BLE001 - the plugin must get an answer, not a closed socket
            log.exception("CNI %s", cmd)
            err = f"{type(e).__name__}: {e}"
        return {"ok": True} if err is None else {"ok": False, "error": err}
