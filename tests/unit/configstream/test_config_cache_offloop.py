"""The config cache written off the event loop (ambit/configclient/cache.py, cachelog.py).

What a user relies on: a proxy's event loop, which also carries its traffic, does no work for the
config cache that grows with the cluster (a new snapshot was 8-14 ms of it at 10,000 pods); the
writer's thread gives the loop the GIL back every few hundred resources; a writer killed in the
middle of a snapshot leaves the last committed state readable, and the next writer removes what
it left; and files written by the previous version are read (the same format, byte for byte).
Work is counted by the resources' attribute reads, per thread: no timing.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

from ambit.configclient import cache as cfgcache
from ambit.configclient import cachelog, encode
from ambit.configclient.cachelog import Delta
from ambit.configclient.codec import Encoded, content_version
from ambit.model import Service, Workload

from .helpers import service, workload

NODE = "ztunnel/n1"
FIXTURES = Path(__file__).parent / "fixtures"
READS: Counter[int] = Counter()        # thread id -> reads of a Watched resource's fields
COUNTING = [True]                      # off while a test builds its own state


class Watched(Encoded):
    """An Encoded that counts, per thread, each read of its name, version or body."""

    def __getattribute__(self, attr: str) -> object:
        if attr in ("name", "version", "body") and COUNTING[0]:
            READS[threading.get_ident()] += 1
        return object.__getattribute__(self, attr)


def _watched(e: Encoded) -> Watched:
    return Watched(e.name, e.version, e.body)


def _workloads(n: int, ip: int = 0) -> list[Encoded]:
    return [encode(workload(f"w{i}", "n1", ip=f"10.{ip}.{i // 250}.{i % 250}")) for i in range(n)]


def _snapshot_id(path: Path) -> str:
    head = path.read_bytes()[len(cachelog.SNAPSHOT_MAGIC):]
    size = int.from_bytes(head[:4], "big")
    return json.loads(head[8:8 + size])["id"]


def _plain(types: dict) -> dict:
    return {t: (sv, sorted((e.name, e.version, e.body) for e in res)) for t, (sv, res) in types.items()}


def test_the_event_loop_reads_no_resource_whatever_the_write(tmp_path):
    """A first snapshot, appends, a type's whole new state, and a compaction: the loop's thread
    reads none of the resources (it neither lays out nor copies the state), the writer's thread
    reads them all, and the files hold the committed state."""
    ws = {e.name: _watched(e) for e in _workloads(600)}
    ss = {e.name: _watched(e) for e in (encode(service(f"s{i}", vip=f"10.96.0.{i}")) for i in range(40))}
    state: dict = {Workload.TYPE: ("v1", ws.values()), Service.TYPE: ("v1", ss.values())}
    loop_thread = threading.get_ident()

    async def main() -> None:
        writer = cfgcache.CacheWriter(tmp_path / "cache", NODE, cachelog.Compaction(floor=1024))

        async def save(delta: Delta) -> None:
            COUNTING[0] = True
            await writer.save(lambda: state, delta)
            COUNTING[0] = False
            snapshots.add(_snapshot_id(tmp_path / "cache"))

        await save(Delta(Workload.TYPE, "v1", ws.values(), replace=True))
        held = ws
        for step in range(2, 8):        # appends, and compactions once the journal outgrows the snapshot
            put = [_watched(e) for e in _workloads(30 * step, ip=step)]
            removed = [f"w{599 - step}"]
            held = {n: e for n, e in held.items() if n not in removed} | {e.name: e for e in put}
            state[Workload.TYPE] = (f"v{step}", held.values())
            await save(Delta(Workload.TYPE, f"v{step}", put, removed))
        state[Service.TYPE] = ("v9", ss.values())
        await save(Delta(Service.TYPE, "v9", ss.values(), replace=True))
        await writer.close()

    READS.clear()
    COUNTING[0] = False
    snapshots: set[str] = set()
    try:
        asyncio.run(main())
    finally:
        COUNTING[0] = True
    assert len(snapshots) >= 2, "no compaction"
    assert READS[loop_thread] == 0, f"the event loop read {READS[loop_thread]} resource fields"
    assert sum(READS.values()) >= 3 * 640, READS
    assert _plain(cfgcache.load(tmp_path / "cache", NODE)) == _plain(state)


def test_a_layout_gives_way_every_slice_of_resources():
    """The snapshot's and a record's layout mark a pause at least every `size` resources (three
    field reads each): the writer's thread never holds the GIL for more than a slice, however
    large the state. Joined, the pieces are the bytes the reader reads."""
    ws = [_watched(e) for e in _workloads(300)]
    ss = [_watched(encode(service(f"s{i}", vip=f"10.96.0.{i}"))) for i in range(50)]
    me = threading.get_ident()
    for pieces in (cachelog.snapshot_pieces(NODE, "id", {Workload.TYPE: ("v1", ws), Service.TYPE: ("v2", ss)}, 16),
                   cachelog.record_pieces(Delta(Workload.TYPE, "v3", ws, ["gone"]), 16)):
        READS.clear()
        between, out, pauses = [], [], 0
        for p in pieces:
            if p is cachelog.PAUSE:
                between.append(READS[me])
                READS.clear()
                pauses += 1
            else:
                out.append(p)
        between.append(READS[me])
        assert max(between) <= 3 * 16, between
        assert pauses >= 300 // 16
        data = b"".join(out)
        if data.startswith(cachelog.SNAPSHOT_MAGIC):
            types, notes = cachelog.read(NODE, data, None)
            assert not notes
            assert _plain(types) == _plain({Workload.TYPE: ("v1", ws), Service.TYPE: ("v2", ss)})
        else:
            assert data == cachelog.record(Delta(Workload.TYPE, "v3", ws, ["gone"]))
            delta = cachelog.parse_type(data[8:])
            assert (delta.type_url, delta.system_version, list(delta.removed)) == (Workload.TYPE, "v3", ["gone"])
            assert [(e.name, e.body) for e in delta.put] == [(e.name, e.body) for e in ws]


def test_a_slice_ends_at_its_bytes_as_well():
    """Resources with large bodies (a policy with many rules) end a slice early: at most
    SLICE_BYTES of bodies, plus the one that crossed it, are joined between two pauses."""
    big = [_watched(Encoded(f"p{i}", f"v{i}", b"x" * 10_000)) for i in range(40)]
    me = threading.get_ident()
    READS.clear()
    between, out = [], []
    for p in cachelog.record_pieces(Delta(Workload.TYPE, "v1", big), 1000):
        if p is cachelog.PAUSE:
            between.append(READS[me])
            READS.clear()
        else:
            out.append(p)
    per_slice = cachelog.SLICE_BYTES // 10_000 + 1
    assert len(between) >= 40 // per_slice
    assert max(between) <= 3 * per_slice, between
    assert b"".join(out) == cachelog.record(Delta(Workload.TYPE, "v1", big))


def test_files_the_previous_version_wrote_are_read_and_written_the_same():
    """A snapshot and journal written by the version before this change (b8f91d2e's own code, kept
    as fixtures) read back as the state it committed; and this version lays out the same state
    under the same id byte for byte, so either version reads the other's files."""
    expected = json.loads((FIXTURES / "cache-v2.expected.json").read_text())
    for name, want in (("cache-v2", expected["types"]), ("cache-v2-snapshot-only", expected["snapshot-only"])):
        got = cfgcache.load(FIXTURES / name, NODE)
        assert {t: {"system_version": sv, "versions": {e.name: e.version for e in res}}
                for t, (sv, res) in got.items()} == want, name
        assert all(content_version(e.body) == e.version for _, res in got.values() for e in res)
    snap = (FIXTURES / "cache-v2-snapshot-only").read_bytes()
    types = cfgcache.load(FIXTURES / "cache-v2-snapshot-only", NODE)
    ours = b"".join(p for p in cachelog.snapshot_pieces(NODE, "0123456789abcdef", types) if p is not cachelog.PAUSE)
    assert ours == snap


_CHILD = r"""
import asyncio, json, sys, time
from pathlib import Path
from ambit.configclient import cache, cachelog, encode
from ambit.configclient.cachelog import Delta
from ambit.model import Workload
from tests.unit.configstream.helpers import workload

path, kill_at = Path(sys.argv[1]), int(sys.argv[2])
pauses = 0
armed = False

def pause():
    global pauses
    if armed:
        pauses += 1
        if pauses == kill_at:
            print("mid", flush=True)
            time.sleep(60)

def ws(n, ip):
    return {e.name: e for e in (encode(workload(f"w{i}", "n1", ip=f"10.{ip}.0.{i}")) for i in range(n))}

async def main():
    global armed
    writer = cache.CacheWriter(path, "ztunnel/n1", slice=4, pause=pause)
    a = ws(40, 1)
    await writer.save(lambda: {Workload.TYPE: ("v1", a.values())}, Delta(Workload.TYPE, "v1", a.values(), replace=True))
    b = dict(a)
    b.update(ws(10, 2))
    await writer.save(lambda: {Workload.TYPE: ("v2", b.values())}, Delta(Workload.TYPE, "v2", list(ws(10, 2).values())))
    print(json.dumps({n: e.version for n, e in b.items()}), flush=True)
    c = ws(60, 3)
    writer.plan.lost()
    armed = True
    await writer.save(lambda: {Workload.TYPE: ("v3", c.values())}, Delta(Workload.TYPE, "v3", c.values(), replace=True))
    print("done", flush=True)

asyncio.run(main())
"""


def test_a_writer_killed_inside_a_snapshot_leaves_the_last_committed_state(tmp_path):
    """A real process writing a new snapshot is killed (SIGKILL) at its first pause, in the middle
    of the layout and at its last: a restart reads the state it had committed before (the first
    snapshot and its journal), never part of the new one; the next writer (this process) removes
    the dead one's temporary file (in a tmpfs, memory) and writes its own state."""
    root = Path(__file__).resolve().parents[3]
    for kill_at in (1, 8, 15):
        path = tmp_path / f"k{kill_at}" / "config-cache"
        child = subprocess.Popen([sys.executable, "-c", _CHILD, str(path), str(kill_at)], stdout=subprocess.PIPE,
                                 text=True, cwd=root, env={**os.environ, "PYTHONPATH": str(root)})
        try:
            assert child.stdout is not None
            committed = json.loads(child.stdout.readline())
            assert child.stdout.readline().strip() == "mid", f"kill_at {kill_at}: the snapshot had fewer pauses"
            left = list(path.parent.glob("*.tmp"))
            child.send_signal(signal.SIGKILL)
            child.wait(10)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        got = cfgcache.load(path, NODE)
        assert {t: sv for t, (sv, _) in got.items()} == {Workload.TYPE: "v2"}
        assert {e.name: e.version for e in got[Workload.TYPE][1]} == committed
        assert left, "the snapshot's temporary file is open while it is laid out"

        async def next_writer(path: Path = path) -> None:
            w = cfgcache.CacheWriter(path, NODE)
            state = {Workload.TYPE: ("v4", _workloads(5))}
            await w.save(lambda: state, Delta(Workload.TYPE, "v4", state[Workload.TYPE][1], replace=True))
            await w.close()
        asyncio.run(next_writer())
        assert not list(path.parent.glob("*.tmp"))
        assert {e.name for e in cfgcache.load(path, NODE)[Workload.TYPE][1]} == {f"w{i}" for i in range(5)}


def test_a_commit_leaves_the_maps_handed_to_the_writer_as_they_were():
    """The writer's thread lays a snapshot out from the client's committed maps, uncopied, after
    the loop has moved on: staging and committing later deltas (a rejected one too) must never
    edit a map once committed."""
    from ambit.configclient.state import TypeState
    state = TypeState(Workload.TYPE)
    state.commit(state.stage("v1", _workloads(20), ()))
    handed = state.encoded
    before = dict(handed)
    state.commit(state.stage("v2", _workloads(5, ip=9), ["w7", "w8"]))
    state.stage("v3", _workloads(3, ip=8), ["w15"])         # staged, never committed (a rejection)
    state.commit(state.stage("v4", [], [f"w{i}" for i in range(20)]))
    assert handed == before and handed is not state.encoded
