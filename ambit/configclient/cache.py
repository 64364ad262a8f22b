"""An optional on-disk copy of the last good config, so a restarted component can serve at once.

Without it, an agent or ztunnel that restarts while the controller is down would come up empty and
break traffic that was flowing a moment earlier. The files hold the wire form (name, version,
body) so that on reconnect the client can tell the server exactly which versions it holds.

`path` is a snapshot and `path.journal` the deltas accepted since (the format and its crash
consistency: ambit/configclient/cachelog.py). One process writes them (`CacheWriter`, holding
`path.lock`): a ztunnel's or waypoint's workers share the path, and a journal appended by two
processes in different states would replay as neither. The others only read it when they start.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import secrets
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ambit.configclient import cachelog
from ambit.configclient.cachelog import CachedType, Delta
from ambit.configclient.codec import Encoded

LEGACY_FORMAT = 1       # the whole-file JSON that versions before the journal wrote; still read

log = logging.getLogger("ambit.configclient")


def journal_path(path: Path) -> Path:
    return path.with_name(path.name + ".journal")


def lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


def _replace(path: Path, chunks: Iterable[bytes], *, sync: bool) -> int:
    """Write `chunks` under a temporary name and rename it into place: a reader sees the old file
    or the new one. Per process: the workers share the path. Chunk by chunk, not joined first: a
    join of ~10 MiB would hold the GIL for its copy, a write releases it. Returns the size."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    size = 0
    with open(tmp, "wb") as f:
        for c in chunks:
            f.write(c)
            size += len(c)
        if sync:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)
    return size


def _write_snapshot(path: Path, node_key: str, ident: str, types: Mapping[str, CachedType]) -> tuple[int, int]:
    """Lay out, frame and write a snapshot, then start its journal; (bytes of each)."""
    payloads = cachelog.snapshot_payloads(node_key, ident, types)
    path.parent.mkdir(parents=True, exist_ok=True)
    # fsync before the rename: on a disk, a power cut then leaves the old snapshot or the whole new
    # one (the manifests' paths are tmpfs, where it costs nothing)
    snap = _replace(path, cachelog.frames_of(cachelog.SNAPSHOT_MAGIC, payloads), sync=True)
    head = _replace(journal_path(path), [cachelog.journal_head(ident)], sync=False)
    return snap, head


def save(path: Path, node_key: str, types: Mapping[str, CachedType]) -> None:
    """Write a whole cache (a snapshot and an empty journal) now, in this thread."""
    _write_snapshot(path, node_key, secrets.token_hex(8), types)


def load(path: Path, node_key: str) -> dict[str, CachedType]:
    """Read the cache; raise ValueError naming the file and the reason if it is unusable. A
    journal that cannot be replayed (whole) is logged, naming it, and replayed as far as it can."""
    data = path.read_bytes()
    if data.lstrip()[:1] == b"{":
        return _load_legacy(path, data, node_key)
    try:
        jdata = journal_path(path).read_bytes()
    except FileNotFoundError:
        jdata = None
    try:
        types, notes = cachelog.read(node_key, data, jdata)
    except ValueError as e:
        raise ValueError(f"config cache {path}: {e}") from None
    for n in notes:
        log.warning("config cache %s: %s", path, n)
    return types


class CacheWriter:
    """Keeps the cache at `path` equal to what the client last committed, cheaply.

    `save` appends the response's delta to the journal, or writes a new snapshot when
    `cachelog.Compaction` says so; the event loop only lays out the bytes, a thread of its own
    checksums and writes them (in order: one job at a time). The caller awaits it before it ACKs,
    so what the client tells the server it holds is on disk first, as before.
    """

    def __init__(self, path: Path, node_key: str, compaction: cachelog.Compaction | None = None) -> None:
        self.path = path
        self.node_key = node_key
        self.plan = compaction or cachelog.Compaction()
        self._lock_fd: int | None = None
        self._other_writer = False
        self._pool: ThreadPoolExecutor | None = None

    def _own(self) -> bool:
        """Whether this process writes the cache (it holds the lock; tried again on each save,
        so a worker takes over when the writer exits)."""
        if self._lock_fd is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path(self.path), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            if not self._other_writer:
                log.info("config cache %s: written by another process (%s); this one only reads it",
                         self.path, lock_path(self.path))
                self._other_writer = True
            return False
        self._lock_fd = fd
        self._other_writer = False
        self.plan.lost()        # whatever is on disk, the first write is a snapshot of our own
        return True

    async def save(self, state: Callable[[], Mapping[str, CachedType]], delta: Delta) -> None:
        """Record `delta`, after which the cache holds `state()` (called only for a snapshot)."""
        try:
            if not self._own():
                return
            rec = cachelog.record(delta)
            if self.plan.wants_snapshot(len(rec)):
                # The state as it is now (immutable resources, fresh lists), laid out in the thread.
                # That part holds the GIL (json, joins), so it does not take less of the loop's
                # time, but it comes in slices of the switch interval (5 ms), not one ~12 ms
                # block at 10,000 pods (docs/performance.md); the writes and checksums release it.
                sizes = await self._run(_write_snapshot, self.path, self.node_key, secrets.token_hex(8), state())
                self.plan.wrote_snapshot(*sizes)
            else:
                await self._run(_append, journal_path(self.path), rec)
                self.plan.appended(len(rec))
        except OSError as e:
            # Losing the cache only costs a cold start later; never reject config for it.
            self.plan.lost()
            log.warning("cannot write config cache %s: %s", self.path, e)
        except asyncio.CancelledError:
            self.plan.lost()    # the job finishes unseen: the next write starts over
            raise

    async def _run(self, fn: Callable[..., object], *args: object) -> object:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="config-cache")
        # Shielded: a `stop()` during the write must not cancel a job not started yet (the record
        # of a response the component applied would be lost, and a type missing from the cache
        # makes the whole cache unusable); `close()` waits for it.
        return await asyncio.shield(asyncio.wrap_future(self._pool.submit(fn, *args)))

    async def close(self) -> None:
        """Wait for the write in flight (if any), then let another process write."""
        pool, self._pool = self._pool, None
        if pool is not None:
            await asyncio.get_running_loop().run_in_executor(None, pool.shutdown)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        self.plan.lost()


def _append(path: Path, rec: bytes) -> None:
    with open(path, "ab") as f:
        f.write(rec)


def _load_legacy(path: Path, data: bytes, node_key: str) -> dict[str, CachedType]:
    """A cache the whole-file JSON versions wrote: read after an upgrade, as they did."""
    try:
        doc = json.loads(data)
    except ValueError as e:
        raise ValueError(f"config cache {path}: not JSON: {e}") from None
    if not isinstance(doc, dict) or doc.get("format") != LEGACY_FORMAT:
        raise ValueError(f"config cache {path}: format is {doc.get('format') if isinstance(doc, dict) else doc!r}, "
                         f"expected {LEGACY_FORMAT}")
    if doc.get("node") != node_key:
        # Config is scoped per node: another node's cache would make this one serve wrong state.
        raise ValueError(f"config cache {path}: written for {doc.get('node')!r}, this is {node_key!r}")
    types = doc.get("types") or {}
    if not isinstance(types, dict):
        # Any shape but this version's is refused here, as a ValueError: an AttributeError from a
        # list where a mapping was ("types": [...]) escaped the component's start, on every restart.
        raise ValueError(f"config cache {path}: types: not a mapping")
    out: dict[str, CachedType] = {}
    for t, entry in types.items():
        try:
            res = [Encoded(name, _str(r["version"]), _str(r["body"]).encode())
                   for name, r in entry["resources"].items()]
            out[t] = (_str(entry["system_version"]), res)
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"config cache {path}: type {t}: malformed entry ({e!r})") from None
    return out


def _str(v: object) -> str:
    if not isinstance(v, str):
        raise TypeError(f"{v!r} is not a string")
    return v
