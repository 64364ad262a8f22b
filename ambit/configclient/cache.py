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
import glob
import json
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

from ambit.configclient import cachelog
from ambit.configclient.cachelog import CachedType, Delta
from ambit.configclient.codec import Encoded

LEGACY_FORMAT = 1       # the whole-file JSON that versions before the journal wrote; still read

log = logging.getLogger("ambit.configclient")


def journal_path(path: Path) -> Path:
    return path.with_name(path.name + ".journal")


def lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


# How long the writer's thread sleeps at each PAUSE of a layout (cachelog.SLICE): a sleep, not a
# bare yield, so that an event loop waiting for the GIL takes it (a thread that releases the GIL
# and asks for it again at once usually gets it back first, and the loop then waits the switch
# interval, 5 ms). About 30 pauses per snapshot at 10,000 pods: ~3 ms more wall time in the thread.
PAUSE_SECONDS = 0.0001


def yield_gil() -> None:
    time.sleep(PAUSE_SECONDS)


def _write_pieces(f: BinaryIO, pieces: Iterable[cachelog.Piece], pause: Callable[[], None]) -> int:
    """Write a layout's pieces in order, pausing where it says; returns the bytes written."""
    size = 0
    for p in pieces:
        if p is cachelog.PAUSE:
            pause()
        else:
            f.write(p)
            size += len(p)
    return size


def _replace(path: Path, pieces: Iterable[cachelog.Piece], pause: Callable[[], None], *, sync: bool) -> int:
    """Write `pieces` under a temporary name and rename it into place: a reader sees the old file
    or the new one. Per process: the workers share the path. Piece by piece, not joined first: a
    join of ~10 MiB would hold the GIL for its copy, a write releases it. Returns the size."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        size = _write_pieces(f, pieces, pause)
        if sync:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)
    return size


def _write_snapshot(path: Path, node_key: str, ident: str, types: Mapping[str, CachedType],
                    size: int = cachelog.SLICE, pause: Callable[[], None] = yield_gil) -> tuple[int, int]:
    """Lay out, frame and write a snapshot, then start its journal; (bytes of each)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # fsync before the rename: on a disk, a power cut then leaves the old snapshot or the whole new
    # one (the manifests' paths are tmpfs, where it costs nothing)
    snap = _replace(path, cachelog.snapshot_pieces(node_key, ident, types, size), pause, sync=True)
    head = _replace(journal_path(path), [cachelog.journal_head(ident)], pause, sync=False)
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
    """Keeps the cache at `path` equal to what the client last committed, off the event loop.

    `save` appends the response's delta to the journal, or writes a new snapshot when
    `cachelog.Compaction` says so. All of it, the layout of the bytes included, runs in a thread of
    its own (one job at a time, in order), and the layout pauses every `slice` resources
    (`pause`, by default a short sleep) so that the loop, should it want the GIL, gets it within a
    slice's work (~0.2 ms) rather than a whole snapshot's (~10 ms at 10,000 pods). The loop's part
    is the same whatever the state's size: take the state's collections as they are (no copy) and
    hand them over. The caller awaits the job before it ACKs, so what the client tells the server
    it holds is on disk first, as before.
    """

    def __init__(self, path: Path, node_key: str, compaction: cachelog.Compaction | None = None, *,
                 slice: int = cachelog.SLICE, pause: Callable[[], None] = yield_gil) -> None:
        self.path = path
        self.node_key = node_key
        self.plan = compaction or cachelog.Compaction()    # read and updated by the jobs only
        self.slice = slice
        self.pause = pause
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
        self.plan.lost()        # whatever is on disk, the first write is a snapshot of our own (no job runs)
        _remove_stale_temporaries(self.path)
        return True

    async def save(self, state: Callable[[], Mapping[str, CachedType]], delta: Delta) -> None:
        """Record `delta`, after which the cache holds `state()`. `state()` is called here, on the
        loop, and must be cheap and stay as it is: the committed collections themselves, which
        nobody edits (a snapshot is laid out from them later, in the thread)."""
        try:
            if not self._own():
                return
            await self._run(self._job, state(), delta)
        except OSError as e:
            # Losing the cache only costs a cold start later; never reject config for it.
            log.warning("cannot write config cache %s: %s", self.path, e)

    def _job(self, types: Mapping[str, CachedType], delta: Delta) -> None:
        """In the thread: append `delta`'s record, or write a snapshot of `types` instead. The plan
        is updated here, by the job that did the write, so it is right even when the awaiting
        save was cancelled."""
        try:
            if self.plan.snapshot is not None:      # else a snapshot anyway: no record to lay out
                rec = list(cachelog.record_pieces(delta, self.slice))
                size = sum(len(p) for p in rec if p is not cachelog.PAUSE)
                if not self.plan.wants_snapshot(size):
                    with open(journal_path(self.path), "ab") as f:
                        _write_pieces(f, rec, self.pause)
                    self.plan.appended(size)
                    return
            self.plan.wrote_snapshot(*_write_snapshot(self.path, self.node_key, secrets.token_hex(8), types,
                                                      self.slice, self.pause))
        except BaseException:
            self.plan.lost()        # a file half written, or not at all: the next write starts over
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


def _remove_stale_temporaries(path: Path) -> None:
    """Remove the snapshots a writer killed while writing left under temporary names: only the
    lock's holder writes them, so once we hold it they are all dead writers'. They are never read,
    but in the manifests' memory-backed directory each one held up to a snapshot's size for good."""
    for tmp in path.parent.glob(f"{glob.escape(path.name)}.*.tmp"):
        try:
            tmp.unlink()
        except OSError as e:
            log.warning("config cache %s: cannot remove %s left by a writer that stopped: %s", path, tmp, e)


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
