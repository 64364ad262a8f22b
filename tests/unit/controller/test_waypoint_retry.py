"""A failed waypoint write heals on a quiet cluster: KubeWaypointReconciler against the API-server
emulator (real HTTP, the official client), with the API server failing the writes for a while.

The reconciler runs after each snapshot; before, a write that failed waited for the next one,
which on a quiet cluster never comes (nothing else changes), so the waypoint stayed without its
Deployment, or its Gateway without status, until something unrelated changed. Each reconciler
here is given one snapshot and no other.
"""

from __future__ import annotations

from typing import Any

from controller.sources.kube import make_api_client
from controller.waypoints.reconcile import KubeWaypointReconciler
from controller.waypoints.render import WaypointDeploySettings
from tests.support.kube_emulator import Fault, KubeEmulator
from tests.support.wait import wait_for
from tests.unit.controller.test_waypoint_deploy import GW_V1, gateway


def setup(emu: KubeEmulator) -> dict[str, Any]:
    emu.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo"}})
    return emu.create(gateway())


def test_a_deployment_the_api_server_failed_to_create_is_created_without_another_snapshot() -> None:
    with KubeEmulator() as emu:
        gw = setup(emu)
        fault = emu.inject(Fault(path="/deployments", method="POST", status=500, times=2))
        rec = KubeWaypointReconciler(make_api_client(emu.url), WaypointDeploySettings(image="i", controller_address="c"),
                                     write_status=False)
        try:
            rec.reconcile([gw])                     # the only snapshot
            assert emu.get("apps/v1", "Deployment", "waypoint", "demo") is None
            wait_for(lambda: emu.get("apps/v1", "Deployment", "waypoint", "demo"), timeout=15,
                     what="the Deployment, created by a retry")
            assert fault.hits == 2
            assert emu.get("v1", "Service", "waypoint", "demo") is not None
        finally:
            rec.close()


def test_a_gateway_status_the_api_server_failed_to_write_is_written_without_another_snapshot() -> None:
    with KubeEmulator() as emu:
        gw = setup(emu)
        fault = emu.inject(Fault(path="/gateways/waypoint/status", method="PATCH", status=503, times=2))
        rec = KubeWaypointReconciler(make_api_client(emu.url), None)
        try:
            rec.reconcile([gw])
            assert rec.errors and "HTTP 503" in rec.errors[0]

            def accepted() -> bool:
                st = (emu.get(GW_V1, "Gateway", "waypoint", "demo") or {}).get("status") or {}
                return any(c["type"] == "Accepted" for c in st.get("conditions") or [])
            wait_for(accepted, timeout=15, what="the Gateway's status, written by a retry")
            assert fault.hits == 2
        finally:
            rec.close()


def test_a_newer_snapshot_replaces_the_writes_waiting_for_a_retry() -> None:
    """The retry writes what the newest pass wants: a Gateway gone from the snapshot is not
    redeployed by a retry of an older pass."""
    with KubeEmulator() as emu:
        gw = setup(emu)
        fault = emu.inject(Fault(path="/deployments", method="POST", status=500))
        rec = KubeWaypointReconciler(make_api_client(emu.url), WaypointDeploySettings(image="i", controller_address="c"),
                                     write_status=False)
        try:
            rec.reconcile([gw])
            assert rec.retrying() == {"objects of waypoint demo/waypoint"}
            rec.reconcile([])                        # the Gateway was deleted
            assert rec.retrying() == set()
            assert fault.hits == 1
        finally:
            rec.close()
