"""The config cache as a snapshot and a journal of deltas (ambit/configclient/cachelog.py, cache.py).

What a user relies on: a proxy restarted at any moment (the controller away) serves the last
state its config client committed, or the one before if the crash fell inside that write, never
a mix; the versions it then tells the controller it holds are those of the content; a damaged or
foreign file is refused naming the file and the reason; and the files do not grow with the number
of updates. Real files throughout; crashes are simulated by cutting or leaving out what a step
had written.
"""

from __future__ import annotations

import asyncio
import logging
import random
import shutil
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from ambit.configclient import Backoff, ConfigClient, Encoded, NodeInfo, cachelog, encode
from ambit.configclient import cache as cfgcache
from ambit.configclient.cachelog import Delta
from ambit.model import Service, Workload
from controller.configserver import ConfigServer

from .helpers import eventually, service, workload

NODE = "ztunnel/n1"
TYPES = (Workload.TYPE, Service.TYPE)

State = dict[str, tuple[str, dict[str, Encoded]]]


def _random_delta(rng: random.Random, state: State, step: int) -> Delta:
    """A random accepted response over `state` (which it updates): puts, removals, or a type's
    first state (replace)."""
    t = rng.choice(TYPES)
    _, held = state.get(t, ("", {}))
    replace = t not in state or rng.random() < 0.1
    base = {} if replace else dict(held)
    removed = sorted(rng.sample(sorted(base), min(len(base), rng.randrange(4)))) if base else []
    for n in removed:
        del base[n]
    put = []
    for _ in range(rng.randrange(6)):
        uid = f"w{rng.randrange(30)}"
        res = workload(uid, "n1", ip=f"10.0.{step % 250}.{rng.randrange(250)}") if t == Workload.TYPE \
            else service(f"s{rng.randrange(20)}", vip=f"10.96.{step % 250}.{rng.randrange(250)}")
        e = encode(res)
        if e.name not in removed:
            put.append(e)
    put = list({e.name: e for e in put}.values())
    base.update({e.name: e for e in put})
    sv = f"v{step}"
    state[t] = (sv, base)
    return Delta(t, sv, list(base.values()) if replace else put, [] if replace else removed, replace=replace)


def _as_cached(state: State) -> dict[str, tuple[str, list[Encoded]]]:
    return {t: (sv, sorted(res.values(), key=lambda e: e.name)) for t, (sv, res) in state.items()}


def _loaded(path: Path) -> dict[str, tuple[str, list[Encoded]]]:
    return {t: (sv, sorted(res, key=lambda e: e.name)) for t, (sv, res) in cfgcache.load(path, NODE).items()}


def _files(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (path, cfgcache.journal_path(path)) if p.exists()}


def _put_back(path: Path, files: dict[str, bytes]) -> None:
    for p in (path, cfgcache.journal_path(path)):
        p.unlink(missing_ok=True)
        if p.name in files:
            p.write_bytes(files[p.name])


async def _save(writer: cfgcache.CacheWriter, state: State, delta: Delta) -> None:
    await writer.save(lambda: _as_cached(state), delta)


@pytest.mark.parametrize("seed", range(6))
def test_a_restart_reads_the_last_committed_state_and_a_crash_inside_a_write_the_one_before(tmp_path, seed):
    """Random responses, a small compaction floor so that the journal is folded into snapshots many
    times. After every save the files read back as the state committed; a crash inside that save
    (the journal's new record cut at any byte; a compaction stopped between its two renames, or
    before the first) reads back as the state before it or the new one, never anything else."""
    rng = random.Random(seed)
    path = tmp_path / "config-cache.json"
    snapshots = appends = 0

    async def main() -> None:
        nonlocal snapshots, appends
        writer = cfgcache.CacheWriter(path, NODE, cachelog.Compaction(floor=8192))
        state: State = {}
        before_files: dict[str, bytes] = {}
        before: dict = {}
        for step in range(60):
            delta = _random_delta(rng, state, step)
            await _save(writer, state, delta)
            after = _as_cached(state)
            assert _loaded(path) == after, f"step {step}"
            files = _files(path)
            if before_files:
                if files[path.name] == before_files[path.name]:      # an append: cut it anywhere
                    appends += 1
                    old_j, new_j = before_files[path.name + ".journal"], files[path.name + ".journal"]
                    assert new_j.startswith(old_j)
                    for cut in range(len(old_j), len(new_j), max(1, (len(new_j) - len(old_j)) // 40)):
                        _put_back(path, {path.name: files[path.name], path.name + ".journal": new_j[:cut]})
                        assert _loaded(path) == before, f"step {step}, journal cut at {cut}"
                else:                                                 # a compaction
                    snapshots += 1
                    # the new snapshot renamed, the journal not yet: the old journal follows the old one
                    _put_back(path, {path.name: files[path.name],
                                     path.name + ".journal": before_files[path.name + ".journal"]})
                    assert _loaded(path) == after, f"step {step}: stale journal replayed over a new snapshot"
                    _put_back(path, before_files)                     # neither renamed (a temp file left)
                    (tmp_path / f"{path.name}.123.tmp").write_bytes(files[path.name][:100])
                    assert _loaded(path) == before
                _put_back(path, files)
            before_files, before = files, after
        await writer.close()
        # no growth without bound: the journal is folded once it would outgrow the snapshot
        sizes = _files(path)
        assert len(sizes[path.name + ".journal"]) <= max(len(sizes[path.name]), 8192)

    asyncio.run(main())
    assert snapshots >= 3 and appends >= 20, (snapshots, appends)


def test_the_journal_is_folded_into_a_snapshot_once_it_outgrows_it():
    plan = cachelog.Compaction(floor=100)
    assert plan.wants_snapshot(10), "nothing of ours on disk yet"
    plan.wrote_snapshot(1000, 30)
    assert not plan.wants_snapshot(900)
    plan.appended(900)
    assert plan.wants_snapshot(100) and not plan.wants_snapshot(70)
    plan.lost()
    assert plan.wants_snapshot(1), "after a failed write, whatever is on disk is replaced whole"


def _written(tmp_path: Path, deltas: int = 4) -> tuple[Path, list[dict]]:
    """A snapshot and a journal of `deltas` records; the state after each save."""
    path = tmp_path / "cache"
    states: list[dict] = []

    async def main() -> None:
        writer = cfgcache.CacheWriter(path, NODE)
        state: State = {}
        rng = random.Random(7)
        for step in range(deltas + 1):
            await _save(writer, state, _random_delta(rng, state, step))
            states.append(_as_cached(state))
        await writer.close()
    asyncio.run(main())
    return path, states


def test_a_damaged_journal_record_replays_the_records_before_it_and_says_so(tmp_path, caplog):
    path, states = _written(tmp_path)
    j = cfgcache.journal_path(path)
    data = bytearray(j.read_bytes())
    starts = [m for m in range(len(data)) if data.startswith(b'{"type"', m)]   # each record's header
    data[starts[2] + 3] ^= 0x20         # the third record: its checksum no longer matches
    j.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, "ambit.configclient"):
        assert _loaded(path) == states[2], "the snapshot and the two whole records before it"
    assert f"config cache {path}: journal: record 3 at byte" in caplog.text
    assert "checksum mismatch" in caplog.text


@pytest.mark.parametrize("damage, reason", [
    ("flip", "damaged: byte .*checksum mismatch"),
    ("truncate", "damaged: byte .*a frame of"),
    ("foreign", "not a config cache of this format"),
    ("other-node", "written for 'ztunnel/n2', this is 'ztunnel/n1'"),
])
def test_a_damaged_or_foreign_snapshot_is_refused_naming_the_file_and_the_reason(tmp_path, damage, reason):
    path, _ = _written(tmp_path)
    data = path.read_bytes()
    if damage == "flip":
        path.write_bytes(data[:-5] + bytes([data[-5] ^ 1]) + data[-4:])
    elif damage == "truncate":
        path.write_bytes(data[:len(data) - 10])
    elif damage == "foreign":
        path.write_bytes(b"\x7fELF\x02\x01\x01" + data)
    else:
        cfgcache.save(path, "ztunnel/n2", cfgcache.load(path, NODE))
    with pytest.raises(ValueError, match=f"config cache {path}: {reason}"):
        cfgcache.load(path, NODE)


def test_one_process_writes_a_shared_path_and_another_takes_over_when_it_stops(tmp_path):
    """A ztunnel's (or waypoint's) workers share the cache path. Two journals appended over one
    another would replay as neither's state: one writer holds the lock; when it stops, the next
    save of another takes over with a snapshot of its own state."""
    path = tmp_path / "cache"

    async def main() -> None:
        a, b = cfgcache.CacheWriter(path, NODE), cfgcache.CacheWriter(path, NODE)
        sa: State = {}
        sb: State = {}
        rng_a, rng_b = random.Random(1), random.Random(2)
        await _save(a, sa, _random_delta(rng_a, sa, 0))
        await _save(b, sb, _random_delta(rng_b, sb, 0))
        await _save(a, sa, _random_delta(rng_a, sa, 1))
        assert _loaded(path) == _as_cached(sa), "b did not write"
        await a.close()
        await _save(b, sb, _random_delta(rng_b, sb, 1))
        assert _loaded(path) == _as_cached(sb)
        await b.close()
    asyncio.run(main())


def test_a_real_client_appends_each_update_and_a_restart_replays_the_last_one(tmp_path):
    """A real config server and client: after the first sync, updates (additions and removals)
    append to the journal and leave the snapshot as it was; a client restarted with the
    controller away replays the state of the last update, and on reconnect names the versions of
    that content (the server then sends only what changed since)."""
    async def main() -> None:
        pods = [workload(f"p{i}", "n1", ip=f"10.0.0.{i}") for i in range(1, 9)]
        srv = ConfigServer(registry=CollectorRegistry(), debounce=0.0)
        srv.update({Workload.TYPE: pods, Service.TYPE: [service("web", endpoints=pods)]}, "v1")
        port = await srv.start()
        path = tmp_path / "config-cache.json"
        node = NodeInfo("ztunnel", "n1")
        seen = []
        c1 = ConfigClient(f"127.0.0.1:{port}", node, list(TYPES), seen.append, cache_path=path,
                          backoff=Backoff(0.05, 0.5))
        try:
            await c1.start()
            await c1.wait_synced(10)
            snapshot = path.read_bytes()
            for v in range(2, 6):
                pods = [*pods[1:], workload(f"q{v}", "n1", ip=f"10.0.1.{v}")]
                srv.update({Workload.TYPE: pods, Service.TYPE: [service("web", endpoints=pods)]}, f"v{v}")
                await eventually(lambda v=v: c1.versions()[Workload.TYPE] == f"v{v}"
                                 and c1.versions()[Service.TYPE] == f"v{v}", what=f"v{v}")
            held = {t: c1.state(t) for t in TYPES}
        finally:
            await c1.stop()
            await srv.stop(0)
        assert path.read_bytes() == snapshot, "updates went to the journal, not a rewrite of the whole file"
        assert cfgcache.journal_path(path).stat().st_size > 0

        seen2 = []
        c2 = ConfigClient("127.0.0.1:1", node, list(TYPES), seen2.append, cache_path=path, backoff=Backoff(5, 5))
        await c2.start()
        await c2.stop()
        assert {t: c2.state(t) for t in TYPES} == held
        assert c2.versions() == {Workload.TYPE: "v5", Service.TYPE: "v5"}
        assert {u.type_url for u in seen2} == set(TYPES) and all(u.from_cache for u in seen2)
        for t in TYPES:     # what it will tell the controller it holds is the content's own version
            assert c2._states[t].versions() == {n: encode(r).version for n, r in held[t].items()}
    asyncio.run(asyncio.wait_for(main(), 60))


def test_a_copy_of_the_snapshot_without_its_journal_is_an_older_whole_state(tmp_path):
    """A backup of the cache file alone (or a journal lost) reads as the state of its snapshot."""
    path, states = _written(tmp_path)
    copy = tmp_path / "copy"
    shutil.copy(path, copy)
    assert {t: (sv, sorted(r, key=lambda e: e.name)) for t, (sv, r) in cfgcache.load(copy, NODE).items()} \
        == states[0]
