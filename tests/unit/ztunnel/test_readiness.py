"""ztunnel's /healthz/ready, the endpoint the kubelet's probe and the lab ask: ready only when it
can serve the pods handed to it (config synced, their certificates held) and not while stopping."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

from ambit.dataplane.identity import IdentityManager
from tests.unit.conftest import LocalCAFetcher, sid
from tests.unit.ztunnel.test_meshstate import full
from ztunnel import admin
from ztunnel.meshstate import MeshState
from ztunnel.pods import PodRegistry


def ready(cfg: MeshState, proxy: object) -> tuple[int, dict]:
    status, body = admin.respond(admin.routes(cfg, None, proxy), "GET", "/healthz/ready")
    return status, json.loads(body)


def test_not_ready_until_the_served_pods_certificates_arrive_nor_once_stopping(ca) -> None:  # noqa: ANN001
    async def main() -> None:
        cfg = MeshState()
        full(cfg, "v1", [])
        fetcher = LocalCAFetcher(ca)
        fetcher.fail_next = 10**6            # the CA does not answer yet
        ids = IdentityManager(fetcher)
        registry = PodRegistry(on_outbound=None, on_inbound=None)  # type: ignore[arg-type]
        proxy = SimpleNamespace(identities=ids, registry=registry)
        assert ready(cfg, proxy)[0] == 200, "no pod yet: nothing to wait for"
        ident = sid("shop", "web")
        ids.prefetch([ident])                # a pod of that identity was handed over
        status, body = ready(cfg, proxy)
        assert status == 503 and body["certificates_missing"] == [ident], body
        fetcher.fail_next = 0
        ids.retry_failed()
        await ids.get(ident, 5)
        assert ready(cfg, proxy)[0] == 200
        await registry.shutdown(0)           # SIGTERM: the listeners close
        status, body = ready(cfg, proxy)
        assert status == 503 and body["stopping"] is True
        await ids.close()
    asyncio.run(main())
