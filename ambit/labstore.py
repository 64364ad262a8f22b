"""The lab store: the lab's stand-in for the Kubernetes API server.

It holds Kubernetes-shaped objects (Namespace, Pod, Service, Node, and the mesh kinds) in one JSON
file, guarded by flock so that the CLI, the controller and the agents can share it. Every write
bumps a store-wide revision and stamps the written objects with it as their resourceVersion, so
readers can watch by polling the revision and diffing snapshots. Writes are all-or-nothing: a batch
that fails validation leaves the file untouched.
"""

from __future__ import annotations

import copy
import fcntl
import json
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Obj = dict[str, Any]
Key = tuple[str, str, str]  # (kind, namespace, name); namespace is "" for cluster-scoped kinds

CLUSTER_SCOPED = {"Namespace", "Node", "ClusterRole", "CustomResourceDefinition", "GatewayClass"}


def key_of(obj: Obj) -> Key:
    md = obj.get("metadata") or {}
    kind = obj.get("kind", "")
    ns = "" if kind in CLUSTER_SCOPED else (md.get("namespace") or "default")
    return (kind, ns, md.get("name", ""))


def ref(obj: Obj) -> str:
    kind, ns, name = key_of(obj)
    return f"{kind}/{ns}/{name}" if ns else f"{kind}/{name}"


class StoreError(ValueError):
    pass


@dataclass
class Snapshot:
    revision: int
    objects: dict[Key, Obj]

    def list(self, kind: str | None = None, namespace: str | None = None) -> list[Obj]:
        out = [o for (k, ns, _), o in self.objects.items()
               if (kind is None or k == kind) and (namespace is None or ns == namespace)]
        return sorted(out, key=key_of)


class LabStore:
    def __init__(self, path: Path | str):
        self.path = Path(path)
        self._lock_path = self.path.with_suffix(".lock")

    # -- low level ---------------------------------------------------------------------------
    @contextmanager
    def _locked(self, exclusive: bool) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _read(self) -> tuple[int, list[Obj]]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return 0, []
        return int(data.get("revision", 0)), list(data.get("objects", []))

    def _write(self, revision: int, objects: list[Obj]) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"revision": revision, "objects": objects}, sort_keys=True))
        os.replace(tmp, self.path)

    # -- reads -------------------------------------------------------------------------------
    def revision(self) -> int:
        with self._locked(False):
            return self._read()[0]

    def snapshot(self) -> Snapshot:
        with self._locked(False):
            rev, objs = self._read()
        return Snapshot(rev, {key_of(o): o for o in objs})

    def list(self, kind: str | None = None, namespace: str | None = None) -> list[Obj]:
        return self.snapshot().list(kind, namespace)

    def get(self, kind: str, namespace: str, name: str) -> Obj | None:
        ns = "" if kind in CLUSTER_SCOPED else namespace
        return self.snapshot().objects.get((kind, ns, name))

    # -- writes ------------------------------------------------------------------------------
    def mutate(self, fn: Callable[[dict[Key, Obj]], Iterable[Key]]) -> int:
        """Apply `fn` to a copy of all objects; commit only if it returns without raising.

        `fn` returns the keys it changed, which get the new resourceVersion.
        """
        with self._locked(True):
            rev, objs = self._read()
            current = {key_of(o): copy.deepcopy(o) for o in objs}
            changed = set(fn(current))
            if not changed:
                return rev
            rev += 1
            for k in changed:
                if k in current:
                    md = current[k].setdefault("metadata", {})
                    md["resourceVersion"] = str(rev)
                    md.setdefault("uid", str(uuid.uuid4()))
                    md.setdefault("creationTimestamp", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
                    if k[1]:
                        md["namespace"] = k[1]
            self._write(rev, sorted(current.values(), key=key_of))
            return rev

    def apply(self, objs: list[Obj], written: set[Key] | None = None) -> int:
        """Create or replace objects, keeping uid and creation time of existing ones. `written`, if
        given, gets the keys of the objects this call changed: reading them back from a snapshot
        after the call is racy, since another writer (the controller writing a status) may have
        given one a newer resourceVersion meanwhile."""
        def fn(cur: dict[Key, Obj]) -> list[Key]:
            keys = []
            for o in objs:
                k = key_of(o)
                if not k[0] or not k[2]:
                    raise StoreError(f"{ref(o)}: metadata.name and kind are required")
                new = copy.deepcopy(o)
                old = cur.get(k)
                if old is not None:
                    omd, nmd = old.get("metadata", {}), new.setdefault("metadata", {})
                    for f in ("uid", "creationTimestamp"):
                        if f in omd:
                            nmd[f] = omd[f]
                    if "status" not in new and "status" in old:
                        new["status"] = old["status"]
                    if _same(old, new):
                        continue
                cur[k] = new
                keys.append(k)
            if written is not None:
                written.update(keys)
            return keys
        return self.mutate(fn)

    def delete(self, keys: list[Key]) -> int:
        def fn(cur: dict[Key, Obj]) -> list[Key]:
            gone = []
            for k in keys:
                if cur.pop(k, None) is not None:
                    gone.append(k)
            return gone
        return self.mutate(fn)

    def patch_labels(self, kind: str, namespace: str, name: str, set_: dict[str, str],
                     remove: list[str]) -> int:
        key = (kind, "" if kind in CLUSTER_SCOPED else namespace, name)

        def fn(cur: dict[Key, Obj]) -> list[Key]:
            if key not in cur:
                raise StoreError(f"{kind.lower()} {name!r} not found")
            labels = cur[key].setdefault("metadata", {}).setdefault("labels", {})
            before = dict(labels)
            labels.update(set_)
            for r in remove:
                labels.pop(r, None)
            return [key] if labels != before else []
        return self.mutate(fn)

    def watch(self, interval: float = 0.05, stop: Callable[[], bool] = lambda: False) -> Iterator[Snapshot]:
        """Yield a snapshot now and after every change (polling the file's mtime; cheap)."""
        last_rev = -1
        last_mtime = None
        while not stop():
            try:
                mtime = self.path.stat().st_mtime_ns
            except FileNotFoundError:
                mtime = None
            if mtime != last_mtime:
                last_mtime = mtime
                snap = self.snapshot()
                if snap.revision != last_rev:
                    last_rev = snap.revision
                    yield snap
            time.sleep(interval)


def _same(a: Obj, b: Obj) -> bool:
    def strip(o: Obj) -> Obj:
        o = copy.deepcopy(o)
        md = o.get("metadata", {})
        for f in ("resourceVersion", "uid", "creationTimestamp", "generation"):
            md.pop(f, None)
        return o
    return strip(a) == strip(b)
