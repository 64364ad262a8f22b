"""Before any config (no cache, no answer from the controller) ztunnel's view is empty, and an
empty view admits anything: no PeerAuthentication, no AuthorizationPolicy. So ztunnel takes no pod
until every type holds a state, from the cache or the controller (`MeshState.populated`,
ztunnel/serve.py; the lab test is tests/lab/test_ztunnel_probe2.py)."""

from __future__ import annotations

import asyncio

from ambit.configclient.state import TypeState
from ambit.model import Authorization, MeshSettings, PeerAuthn, Workload
from ambit.zds import PodInfo
from tests.unit.configstream.helpers import peerauthn, workload
from tests.unit.ztunnel.test_meshstate import full, push
from ztunnel import admission
from ztunnel.meshstate import MeshState


def test_an_empty_view_would_admit_plaintext_to_any_pod_which_is_why_it_gates_the_pods() -> None:
    cfg = MeshState()
    echo = workload("echo", "n1", ip="10.1.0.10")
    pod = PodInfo(uid=echo.uid, name=echo.name, namespace=echo.namespace, ip="10.1.0.10", node="n1",
                  service_account=echo.service_account, labels=dict(echo.labels))
    assert admission.admit_plaintext(cfg, pod, echo, "10.2.0.12", 8080).allowed     # nothing to say no
    assert not cfg.populated
    full(cfg, "v1", [echo], pas=[peerauthn("strict")])
    assert cfg.populated and not admission.admit_plaintext(cfg, pod, echo, "10.2.0.12", 8080).allowed


def test_a_cache_populates_but_only_with_every_type() -> None:
    cfg = MeshState()
    states = {t: TypeState(t) for t in (MeshSettings.TYPE, PeerAuthn.TYPE, Authorization.TYPE, Workload.TYPE)}
    push(cfg, states[Workload.TYPE], "v1", [workload("a", "n1")], from_cache=True)
    push(cfg, states[MeshSettings.TYPE], "v1", [MeshSettings("cluster.local")], from_cache=True)
    assert not cfg.populated, "policy types not there yet: the pods would meet no policy"
    full(cfg, "v1", [workload("a", "n1")])
    assert cfg.populated


def test_wait_populated_returns_once_the_last_type_arrives() -> None:
    async def main() -> None:
        cfg = MeshState()
        waiting = asyncio.ensure_future(cfg.wait_populated())
        await asyncio.sleep(0)
        assert not waiting.done()
        full(cfg, "v1", [workload("a", "n1")])
        await asyncio.wait_for(waiting, 5)
        await cfg.wait_populated()      # at once when already there
    asyncio.run(main())

