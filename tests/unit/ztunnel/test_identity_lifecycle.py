"""ztunnel manages a certificate for an identity exactly while a pod it serves has that identity.

A pod's identity follows its Workload (its service account), which the controller may change
while the pod is served. The old identity must then stop being managed: otherwise its certificate
keeps renewing against the CA for ever, it stays in /certs, and if the CA refuses it (no pod of
this node has it any more) readiness lists it in `certificates_missing`: ztunnel NotReady for an
identity nobody uses. Driven through the real path: `PodRegistry.add`/`remove` (listeners stubbed,
no netns needed) notifying `Proxy`, and Workload updates applied to the real `MeshState`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json

import pytest

from ambit.configclient import ConfigUpdate
from ambit.dataplane.identity import IdentityManager
from ambit.model import Workload
from ambit.zds import PodInfo
from tests.unit.conftest import LocalCAFetcher
from tests.unit.ztunnel.meshcfg import config, wl
from ztunnel import admin
from ztunnel import pods as pods_mod
from ztunnel.meshstate import MeshState
from ztunnel.proxy import Proxy


class RefusingFetcher(LocalCAFetcher):
    """A CA that signs only identities of `allowed` (as the real CA authorizes a node only for the
    identities of pods the controller sees there)."""

    def __init__(self, ca, allowed: set[str]) -> None:  # noqa: ANN001
        super().__init__(ca)
        self.allowed = allowed

    async def fetch(self, identity: str, csr_pem: bytes, ttl_seconds: int):  # noqa: ANN201
        if identity not in self.allowed:
            self.calls += 1
            raise PermissionError(f"node not authorized for {identity}")
        return await super().fetch(identity, csr_pem, ttl_seconds)


@pytest.fixture
def no_netns(monkeypatch: pytest.MonkeyPatch) -> None:
    """`PodRegistry.add` without entering a netns or opening listeners (root-only): the rest of the
    hand-off, and the pod events it sends, are the real ones."""
    monkeypatch.setattr(pods_mod, "entered", lambda _fd: contextlib.nullcontext())
    monkeypatch.setattr(pods_mod, "open_listeners", lambda with_hbone, reuseport=False: {})


def info(w: Workload) -> PodInfo:
    return PodInfo(w.uid, w.name, w.namespace, w.ips[0], "node1", w.service_account)


def update_workloads(cfg: MeshState, version: str, *workloads: Workload) -> None:
    state = {w.uid: w for w in workloads}
    cfg.apply(ConfigUpdate(Workload.TYPE, version, state, frozenset(), state))


def resa(w: Workload, sa: str) -> Workload:
    return dataclasses.replace(w, service_account=sa, identity=w.identity.rsplit("/", 1)[0] + "/" + sa)


def missing(cfg: MeshState, proxy: Proxy) -> list[str]:
    _status, body = admin.respond(admin.routes(cfg, None, proxy), "GET", "/healthz/ready")
    return json.loads(body).get("certificates_missing", [])


def test_an_identity_left_behind_by_a_service_account_change_is_forgotten(ca, no_netns) -> None:  # noqa: ANN001
    async def main() -> None:
        web, api = wl("web", "10.1.0.5", sa="old"), wl("api", "10.1.0.6", sa="old")
        cfg = config([web, api])
        fetcher = RefusingFetcher(ca, {web.identity})
        ids = IdentityManager(fetcher)
        proxy = Proxy(config=cfg, identities=ids)
        old, new = web.identity, resa(web, "new").identity
        await proxy.registry.add(info(web), -1)
        await proxy.registry.add(info(api), -1)
        assert ids.identities() == [old]

        # web's service account changes: the new identity is managed at once (its first
        # connection finds a certificate); the old one still is, for api
        fetcher.allowed = {old, new}
        update_workloads(cfg, "v2", resa(web, "new"), api)
        assert ids.identities() == sorted([old, new])
        await ids.get(new, 5)

        # api changes too: nobody has the old identity any more, and the CA now refuses it
        fetcher.allowed = {new}
        update_workloads(cfg, "v3", resa(web, "new"), resa(api, "new"))
        assert ids.identities() == [new]
        assert missing(cfg, proxy) == [], "NotReady for an identity no served pod has"

        # both leave: nothing is managed, nothing renews against the CA
        await proxy.registry.remove(web.uid, drain=0)
        assert ids.identities() == [new]
        await proxy.registry.remove(api.uid, drain=0)
        assert ids.identities() == []
        await proxy.close()
        await ids.close()
    asyncio.run(main())


def test_a_pod_leaving_after_its_identity_changed_takes_the_old_identity_with_it(ca, no_netns) -> None:  # noqa: ANN001
    """The defect as it showed: prefetched under the old identity, forgotten under the new one."""
    async def main() -> None:
        web = wl("web", "10.1.0.5", sa="old")
        cfg = config([web])
        ids = IdentityManager(LocalCAFetcher(ca))
        proxy = Proxy(config=cfg, identities=ids)
        await proxy.registry.add(info(web), -1)
        await ids.get(web.identity, 5)
        update_workloads(cfg, "v2", resa(web, "new"))
        await proxy.registry.remove(web.uid, drain=0)
        assert ids.identities() == [], "an identity stays managed after its last pod left"
        await proxy.close()
        await ids.close()
    asyncio.run(main())


def test_a_workload_update_while_stopping_keeps_the_draining_pods_identities(ca, no_netns) -> None:  # noqa: ANN001
    """SIGTERM closes every pod's listeners at once (no pod is served any more) while their open
    connections drain: a Workload update meanwhile must not drop the certificates they use."""
    async def main() -> None:
        web = wl("web", "10.1.0.5")
        cfg = config([web])
        ids = IdentityManager(LocalCAFetcher(ca))
        proxy = Proxy(config=cfg, identities=ids)
        await proxy.registry.add(info(web), -1)
        await proxy.registry.shutdown(0)
        update_workloads(cfg, "v2", web, wl("api", "10.1.0.6"))
        assert ids.identities() == [web.identity]
        await proxy.close()
        await ids.close()
    asyncio.run(main())
