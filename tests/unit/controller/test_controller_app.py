"""The controller's flow (lab store -> translation -> config server) and its Status RPC."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from prometheus_client import CollectorRegistry

from ambit.configclient import fetch_status
from ambit.labstore import LabStore
from ambit.model import Workload
from controller.app import Controller, StatusServer, content_version
from controller.ca import BootstrapTokens
from controller.ca_setup import ensure_node_tokens, token_file
from controller.sources.lab import LabSource
from tests.unit.configstream.helpers import eventually, workload

NS = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop", "labels": {}}}


def pod(name: str, ip: str, node: str = "n1") -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "shop", "uid": f"uid-{name}"},
            "spec": {"nodeName": node, "serviceAccountName": "web", "containers": [{"name": "c"}]},
            "status": {"phase": "Running", "podIP": ip}}


def test_content_version_names_content_not_order() -> None:
    a, b = workload("a", "n1"), workload("b", "n1", ip="10.0.0.2")
    assert content_version({Workload.TYPE: [a, b]}) == content_version({Workload.TYPE: [b, a]})
    assert content_version({Workload.TYPE: [a]}) != content_version({Workload.TYPE: [a, b]})


def test_store_changes_flow_to_the_server_and_errors_to_status(tmp_path: Path) -> None:
    store = LabStore(tmp_path / "store.json")
    store.apply([NS, pod("p1", "10.1.0.1")])

    async def main() -> None:
        holder: list[Controller] = []
        server = StatusServer(lambda: holder[0].errors(), debounce=0.0, registry=CollectorRegistry())
        ctl = Controller(LabSource(store, interval=0.01), server)
        holder.append(ctl)
        port = await server.start("127.0.0.1:0")
        stop = threading.Event()
        ctl.run_source(stop)
        try:
            await eventually(ctl.first_snapshot.is_set, what="the first snapshot")
            v1 = ctl.version
            assert [w.name for w in ctl.translation.workloads] == ["p1"]
            assert ctl.pods_on_node("n1") == [("shop", "web")] and ctl.pods_on_node("n2") == []

            # A label nothing selects on changes no model: same content, same version, no push.
            pushes = server.pushes
            store.patch_labels("Namespace", "", "shop", {"team": "blue"}, [])
            await eventually(lambda: ctl.snapshots >= 2, what="the relabel snapshot")
            assert ctl.version == v1 and server.pushes == pushes

            store.patch_labels("Namespace", "", "shop", {"ambit.io/dataplane-mode": "ambient"}, [])
            await eventually(lambda: ctl.version != v1, what="enrolment to change the model")
            assert ctl.translation.workloads[0].enrolled

            # Another writer stores a broken object: it is reported, and nothing else changes.
            v2 = ctl.version
            bad = {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                   "metadata": {"name": "deny", "namespace": "shop"}, "spec": {"action": "MAYBE"}}
            store.apply([bad])
            await eventually(lambda: bool(ctl.errors()), what="the rejection")
            resp = await fetch_status(f"127.0.0.1:{port}")
            assert [(e.ref, e.path) for e in resp.config_errors] == [("AuthorizationPolicy/shop/deny", "spec.action")]
            assert "MAYBE" in resp.config_errors[0].reason
            assert ctl.version == v2 and resp.version == v2
        finally:
            stop.set()
            await server.stop()
    asyncio.run(main())


def test_lab_node_tokens_are_issued_once_and_verify(tmp_path: Path) -> None:
    tokens = BootstrapTokens(tmp_path / "ca" / "digests.json")
    assert ensure_node_tokens(tokens, ["n1", "n2"], tmp_path) == ["n1", "n2"]
    assert ensure_node_tokens(tokens, ["n1", "n2"], tmp_path) == [], "valid tokens are kept"
    f = token_file(tmp_path, "n1")
    assert f.stat().st_mode & 0o777 == 0o600
    # A restarted controller reads the digests back and still accepts the node's token.
    again = BootstrapTokens(tmp_path / "ca" / "digests.json")
    assert again.check(f.read_text(), "n1") == "n1"
    f.write_text("tampered")
    assert ensure_node_tokens(again, ["n1"], tmp_path) == ["n1"], "an invalid token file is replaced"
