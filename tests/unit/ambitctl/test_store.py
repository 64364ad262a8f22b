from __future__ import annotations

import threading
from pathlib import Path

import pytest

from ambit.labstore import LabStore, StoreError


def ns(name: str, **labels: str) -> dict:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def test_apply_stamps_versions_and_keeps_uid(tmp_path: Path) -> None:
    s = LabStore(tmp_path / "store.json")
    r1 = s.apply([ns("demo")])
    o1 = s.get("Namespace", "", "demo")
    assert o1 and o1["metadata"]["resourceVersion"] == str(r1)
    r2 = s.apply([ns("demo", team="a")])
    o2 = s.get("Namespace", "", "demo")
    assert r2 == r1 + 1 and o2["metadata"]["uid"] == o1["metadata"]["uid"]
    assert s.apply([ns("demo", team="a")]) == r2, "an unchanged apply is a no-op"


def test_failed_batch_changes_nothing(tmp_path: Path) -> None:
    s = LabStore(tmp_path / "store.json")
    s.apply([ns("demo")])
    rev = s.revision()
    with pytest.raises(StoreError):
        s.apply([ns("other"), {"kind": "Namespace", "metadata": {}}])
    assert s.revision() == rev and s.get("Namespace", "", "other") is None


def test_labels_patch_and_delete(tmp_path: Path) -> None:
    s = LabStore(tmp_path / "store.json")
    s.apply([ns("legacy", keep="1")])
    s.patch_labels("Namespace", "", "legacy", {"ambit.io/dataplane-mode": "ambient"}, ["keep"])
    assert s.get("Namespace", "", "legacy")["metadata"]["labels"] == {"ambit.io/dataplane-mode": "ambient"}
    with pytest.raises(StoreError, match="not found"):
        s.patch_labels("Namespace", "", "nope", {"a": "b"}, [])
    s.delete([("Namespace", "", "legacy")])
    assert s.list("Namespace") == []


def test_watch_sees_every_change_from_another_writer(tmp_path: Path) -> None:
    s = LabStore(tmp_path / "store.json")
    s.apply([ns("a")])
    seen: list[int] = []
    stop = threading.Event()

    def watcher() -> None:
        for snap in LabStore(tmp_path / "store.json").watch(interval=0.01, stop=stop.is_set):
            seen.append(len(snap.list("Namespace")))
            if len(seen) >= 3:
                stop.set()

    t = threading.Thread(target=watcher)
    t.start()
    while not seen:
        pass
    s.apply([ns("b")])
    while len(seen) < 2 and t.is_alive():
        pass
    s.apply([ns("c")])
    t.join(10)
    assert seen == [1, 2, 3]
