"""LabSource: snapshots from a real LabStore file, with the last-good-version rule."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from ambit.labstore import LabStore
from controller.sources.lab import LabSource
from tests.support.wait import wait_for


def vs(weight: Any) -> dict[str, Any]:
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "reviews", "namespace": "demo"},
            "spec": {"hosts": ["reviews"], "http": [{"route": [
                {"destination": {"host": "reviews", "subset": "v1"}, "weight": weight},
                {"destination": {"host": "reviews", "subset": "v2"}, "weight": 100 - weight if isinstance(weight, int) else 0},
            ]}]}}


def test_lab_source_snapshots_and_keeps_last_good(tmp_path: Path) -> None:
    store = LabStore(tmp_path / "store.json")
    source = LabSource(store, interval=0.01)
    snaps: list[list[dict[str, Any]]] = []
    stop = threading.Event()
    th = threading.Thread(target=source.run, args=(snaps.append, stop), daemon=True)
    th.start()
    try:
        wait_for(lambda: snaps, "the initial (empty) snapshot")
        assert snaps[0] == []
        store.apply([vs(90), {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "ignored"}}])
        wait_for(lambda: len(snaps) >= 2, "a snapshot after apply")
        assert [o["kind"] for o in snaps[-1]] == ["VirtualService"]

        # another writer bypasses validation: the bad version is rejected, the good one stays
        store.apply([vs("ninety")])
        wait_for(source.errors, "the validation error")
        assert [str(e) for e in source.errors()] == [
            'VirtualService/demo/reviews: spec.http[0].route[0].weight: must be an integer 0..2147483647, got "ninety"']
        assert snaps[-1][0]["spec"]["http"][0]["route"][0]["weight"] == 90

        store.apply([vs(50)])
        wait_for(lambda: snaps[-1] and snaps[-1][0]["spec"]["http"][0]["route"][0]["weight"] == 50, "the fix")
        assert source.errors() == []
        store.delete([("VirtualService", "demo", "reviews")])
        wait_for(lambda: snaps[-1] == [], "the deletion")
    finally:
        stop.set()
        th.join(timeout=5)
    assert not th.is_alive()
