"""The waypoint's status port (`--status-address`, 15021 in a cluster) serves readiness and nothing
else. It listens on the pod IP, so every pod of the cluster reaches it (and, through the waypoint's
Service, its ClusterIP): the admin endpoint's config dump, certificates and live request taps must
stay on loopback."""

from __future__ import annotations

import asyncio
import socket

from ambit.dataplane.tap import TapHub
from waypoint import admin


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _get(port: int, path: str, method: str = "GET") -> tuple[int, bytes]:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    data = await asyncio.wait_for(r.read(), 5)
    w.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def test_the_status_port_answers_readiness_and_refuses_the_admin_paths() -> None:
    handlers = {"/healthz/ready": lambda: (503, {"ready": False, "synced": False}),
                "/config_dump": lambda: (200, {"secret": "every policy"}),
                "/certs": lambda: (200, [{"identity": "spiffe://td/ns/a/sa/b"}])}

    async def main() -> None:
        adm = admin.AdminServer(handlers, tap=TapHub("waypoint/demo/wp"))
        port = _free_port()
        status = await admin.start_status(adm, f"127.0.0.1:{port}")
        assert status is not None
        try:
            code, body = await _get(port, "/healthz/ready")
            assert code == 503 and b'"ready": false' in body       # the admin endpoint's own verdict
            for path in ("/config_dump", "/certs", "/tap", "/memory", "/healthz/ready/../../config_dump", "/"):
                code, body = await _get(port, path)
                assert code == 404 and b"secret" not in body and b"spiffe" not in body, path
        finally:
            await status.close()
            await adm.close()
    asyncio.run(main())


def test_no_status_address_no_listener() -> None:
    async def main() -> None:
        assert await admin.start_status(admin.AdminServer({}), "") is None
    asyncio.run(main())
